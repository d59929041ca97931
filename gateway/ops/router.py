"""`/healthz`, `/readyz`, `/metrics` (no key: probes and Prometheus) and `/admin/*` (admin scope)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response

from gateway.auth import Principal
from gateway.deps import GatewayState, get_state, require_admin
from gateway.errors import NotFoundError
from gateway.metrics import CONTENT_TYPE
from gateway.ops.service import clear_cache, readiness, require_ready

router = APIRouter(tags=["operations"])
admin = APIRouter(tags=["admin"])  # full paths: the route template is the metrics label

PROBE_PATHS = ("/healthz", "/readyz", "/metrics")


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (no dependency checks)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: GatewayState = Depends(get_state)) -> dict[str, Any]:
    """Triton and Redis are reachable (503 envelope otherwise)."""
    result = await readiness(state.backend, state.redis, timeout_s=1.0)
    require_ready(result)
    return {"status": "ready", "triton": result.triton, "redis": result.redis}


@router.get("/metrics")
async def metrics(state: GatewayState = Depends(get_state)) -> Response:
    """Prometheus text exposition of this app's registry (404 when `expose_metrics` is off)."""
    if not state.settings.expose_metrics:
        raise NotFoundError("no such route")
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


@admin.delete("/admin/cache")
async def delete_cache(
    model: str = Query(min_length=1, max_length=128),
    _: Principal = Depends(require_admin),
    state: GatewayState = Depends(get_state),
) -> dict[str, Any]:
    """Drop every cached embedding of `model` (all versions) from Redis and this process's L1."""
    return {"model": model, "deleted": await clear_cache(state.cache, model)}


@admin.get("/admin/keys")
async def list_keys(
    _: Principal = Depends(require_admin), state: GatewayState = Depends(get_state)
) -> dict[str, Any]:
    """Configured API keys: names, scopes and limits (never hashes)."""
    keys = [
        {"name": k.name, "scopes": sorted(k.scopes), "requests_per_minute": k.requests_per_minute,
         "tokens_per_minute": k.tokens_per_minute}
        for k in state.settings.api_keys
    ]
    return {"object": "list", "data": keys, "auth_disabled": state.settings.auth_disabled}
