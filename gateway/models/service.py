"""Models: Triton's READY models, in the OpenAI shape."""

from __future__ import annotations

from gateway.backends.base import Backend, valid_model_name
from gateway.backends.triton import model_not_found
from gateway.models.protocol import Model, ModelList

OWNER = "tritonstack"


class ModelService:
    """Lists and describes the models the backend is serving."""

    def __init__(self, backend: Backend, started_at: int) -> None:
        self.backend = backend
        self.created = started_at  # Triton reports no creation time; the gateway's start is stable and honest

    async def list(self) -> ModelList:
        """Every READY model."""
        entries = await self.backend.list_ready_models()
        return ModelList(data=[Model(id=e.name, created=self.created, owned_by=OWNER) for e in entries])

    async def get(self, model_id: str) -> Model:
        """One READY model; NotFoundError (code model_not_found) otherwise."""
        if not valid_model_name(model_id):
            raise model_not_found(model_id)
        info = await self.backend.model_info(model_id)
        return Model(id=info.name, created=self.created, owned_by=OWNER)
