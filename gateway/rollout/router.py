"""`GET /admin/rollouts` and `POST /admin/rollouts/reload` (admin scope) — thin."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from gateway.auth import Principal
from gateway.deps import require_admin, state_of
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.rollout.config import RolloutConfigError
from gateway.rollout.service import RolloutService

admin = APIRouter(tags=["admin"])  # full paths: the route template is the metrics label


def _service(request: Request) -> RolloutService:
    service = state_of(request).rollouts
    if service is None:
        raise NotFoundError("model version rollouts are not enabled on this gateway", code="rollouts_not_configured")
    return service


@admin.get("/admin/rollouts")
async def show_rollouts(request: Request, _: Principal = Depends(require_admin)) -> dict[str, Any]:
    """The active rollout table: per model its stable version, weights and traffic shares."""
    return _service(request).snapshot()


@admin.post("/admin/rollouts/reload")
async def reload_rollouts(request: Request, _: Principal = Depends(require_admin)) -> dict[str, Any]:
    """Re-read the rollouts file now (400 envelope with the reason when it is invalid; the old table stays)."""
    service = _service(request)
    try:
        service.reload()
    except RolloutConfigError as exc:
        raise InvalidRequestError(str(exc), code="invalid_rollouts") from None
    return service.snapshot()
