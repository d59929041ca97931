"""Models: Triton's READY models, in the OpenAI shape, each with its task (`gateway.models.tasks`)."""

from __future__ import annotations

import asyncio

from gateway.backends.base import Backend, ModelEntry, valid_model_name
from gateway.backends.triton import model_not_found
from gateway.errors import NotFoundError
from gateway.models.protocol import Model, ModelList
from gateway.models.tasks import task_of

OWNER = "tritonstack"


class ModelService:
    """Lists and describes the models the backend is serving."""

    def __init__(self, backend: Backend, started_at: int) -> None:
        self.backend = backend
        self.created = started_at  # Triton reports no creation time; the gateway's start is stable and honest

    async def list(self) -> ModelList:
        """Every READY model (one unloaded since the index was read is left out)."""
        entries = await self.backend.list_ready_models()
        models = await asyncio.gather(*(self._described(e) for e in entries))
        return ModelList(data=[m for m in models if m is not None])

    async def _described(self, entry: ModelEntry) -> Model | None:
        try:
            return await self.get(entry.name)
        except NotFoundError:
            return None

    async def get(self, model_id: str) -> Model:
        """One READY model; NotFoundError (code model_not_found) otherwise."""
        if not valid_model_name(model_id):
            raise model_not_found(model_id)
        info = await self.backend.model_info(model_id)
        return Model(id=info.name, created=self.created, owned_by=OWNER, task=task_of(info))
