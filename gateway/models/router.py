"""`GET /v1/models`, `GET /v1/models/{model}`."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from gateway.auth import Principal
from gateway.deps import get_model_service, rate_limited_principal
from gateway.models.protocol import Model, ModelList
from gateway.models.service import ModelService

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList)
async def list_models(
    _: Principal = Depends(rate_limited_principal), service: ModelService = Depends(get_model_service)
) -> ModelList:
    """Models Triton reports READY."""
    return await service.list()


@router.get("/v1/models/{model}", response_model=Model)
async def retrieve_model(
    model: str, _: Principal = Depends(rate_limited_principal), service: ModelService = Depends(get_model_service)
) -> Model:
    """One READY model (404 model_not_found otherwise)."""
    return await service.get(model)
