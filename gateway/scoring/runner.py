"""`ScoringRunner`: the per-item machinery of `/v1/embeddings`, for models that score items (rerank, classify).

Per request: the model must exist and serve the route's task (400 `model_task_mismatch` otherwise); its version
is chosen as for embeddings (`x-tritonstack-model-version` pin, the rollout table sticky per caller, else the
oldest ready version); each item (a (query, document) pair, a text) is looked up in the same cache as embeddings
under (model, chosen version, params, text) — `params` carries what else changes the output, e.g. the query; the
misses go through the same single-flight to the backend in one call (split by the model's `max_batch_size`);
hits and fresh results come back in input order. A cached value is a `CachedItem`: the model's float outputs for
the item and its real token count, which `usage`, the token limits and the metrics count (cache hits included, as
for embeddings). No FastAPI here: errors are typed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.auth import Principal
from gateway.backends.base import Backend, ModelInfo, valid_model_name
from gateway.backends.triton import model_not_found
from gateway.cache.control import CacheMode, cache_status
from gateway.cache.keys import CachedItem
from gateway.cache.singleflight import SingleFlight
from gateway.cache.store import EmbeddingCache
from gateway.errors import BackendUnavailableError, InvalidRequestError, NotFoundError
from gateway.metrics import GatewayMetrics
from gateway.models.tasks import require_task, task_of
from gateway.ratelimit.policy import TokenLedger
from gateway.rollout.service import VERSION_HEADER, Choice, RolloutService, choose_version, with_pinned
from gateway.tracing import annotate

Compute = Callable[[ModelInfo, Choice, list[int]], Awaitable[list[CachedItem]]]
"""Compute the items at these indices (into the request's texts) with this model version, in order."""


@dataclass(slots=True)
class Scored:
    """One request's items in input order, and what the response headers, usage and metrics need."""

    info: ModelInfo
    items: list[CachedItem]
    cache: str  # the `x-cache` value
    backend_s: float | None
    tokens: int
    headers: dict[str, str]  # the served version


def check_text(text: str, param: str, max_chars: int, name: str | None = None) -> None:
    """400 naming `param` for text longer than `max_chars` or not encodable as UTF-8 (`name`: how the message
    names it, e.g. `documents[3]`)."""
    name = name or param
    if len(text) > max_chars:
        raise InvalidRequestError(
            f"'{name}' has {len(text)} characters; at most {max_chars} are allowed per item "
            "(text beyond the model's window is truncated by the model)", param=param, code="input_too_long")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(f"'{name}' contains invalid Unicode (an unpaired surrogate)", param=param,
                                  code="invalid_input") from None


def check_texts(texts: Sequence[str], param: str, max_chars: int) -> None:
    """`check_text` for each item of an array (`param.i`)."""
    for i, text in enumerate(texts):
        check_text(text, f"{param}.{i}", max_chars, f"{param}[{i}]")


class ScoringRunner:
    """Model resolution, version choice and the cached, single-flight computation of one request's items."""

    def __init__(
        self,
        backend: Backend,
        *,
        metrics: GatewayMetrics,
        cache: EmbeddingCache | None = None,
        flights: SingleFlight[CachedItem] | None = None,
        ledger: TokenLedger | None = None,
        rollouts: RolloutService | None = None,
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.cache = cache
        self.flights = flights if flights is not None else SingleFlight(cache)
        self.ledger = ledger
        self.rollouts = rollouts

    async def model(self, name: str, task: str, route: str | None = None) -> ModelInfo:
        """Metadata of a servable model of `task` (404 `model_not_found`, 400 `model_task_mismatch`)."""
        if not valid_model_name(name):
            raise model_not_found(name)
        info = await self.backend.model_info(name)
        require_task(info, task, route)
        return info

    async def default_model(self, task: str) -> str:
        """The one ready model of `task`, for clients that name none (TEI's); 400 when there are none or several."""
        names = []
        for entry in await self.backend.list_ready_models():
            try:
                info = await self.backend.model_info(entry.name)
            except NotFoundError:  # unloaded since the listing
                continue
            if task_of(info) == task:
                names.append(entry.name)
        if len(names) != 1:
            found = f"{len(names)} are served ({', '.join(names)})" if names else "none is served"
            raise InvalidRequestError(f"'model' is required unless exactly one {task} model is served; {found}",
                                      param="model", code="model_required")
        return names[0]

    async def run(self, info: ModelInfo, task: str, params: str, texts: Sequence[str], compute: Compute, *,
                  mode: CacheMode = CacheMode.DEFAULT, principal: Principal | None = None,
                  pin: str | None = None) -> Scored:
        """Every item of `texts`, cached under `params`; `compute` runs for what no cache holds. A version that
        disappears under a request (unloaded by a rollback) is chosen again once, from fresh metadata."""
        if self.cache is None:
            mode = CacheMode.BYPASS
        identity = principal.identity if principal is not None else ""
        info = await with_pinned(self.backend, info, pin)
        choice = self._route(info, identity, pin)
        try:
            items, hits, backend_s = await self._items(info, choice, task, params, texts, compute, mode)
        except (NotFoundError, BackendUnavailableError) as exc:
            info, choice = await self._rechoose(info, identity, choice, exc)
            items, hits, backend_s = await self._items(info, choice, task, params, texts, compute, mode)
        if self.rollouts is not None:
            self.rollouts.metrics.served(info.name, choice)
        status = "bypass" if mode is CacheMode.BYPASS else cache_status(hits, len(texts))
        annotate({"tritonstack.model": info.name, "tritonstack.model_version": choice.version,
                  "tritonstack.cache": status, "tritonstack.items": len(texts)})
        tokens = sum(item.tokens for item in items)
        self._count(info.name, task, status, hits, len(texts), tokens, backend_s)
        if self.ledger is not None and principal is not None:
            self.ledger.add(principal, tokens)  # debited off the request path
        return Scored(info, items, status, backend_s, tokens, {VERSION_HEADER: choice.version})

    def _route(self, info: ModelInfo, identity: str, pin: str | None) -> Choice:
        return choose_version(self.rollouts, info.name, identity, info.versions, info.version, pin)

    async def _rechoose(self, info: ModelInfo, identity: str, failed: Choice, error: Exception
                        ) -> tuple[ModelInfo, Choice]:
        """Another version after the chosen one went missing or unreachable; otherwise the original error."""
        overloaded = isinstance(error, BackendUnavailableError) and error.code == "backend_overloaded"
        if overloaded or failed.selection == "pinned" or not (isinstance(error, NotFoundError) or failed.routed):
            raise error
        self.backend.invalidate(info.name)
        if self.rollouts is not None:
            self.rollouts.refresh(force=True)
        fresh = await self.backend.model_info(info.name)
        choice = self._route(fresh, identity, None)
        if choice.version == failed.version:
            raise error
        return fresh, choice

    async def _items(self, info: ModelInfo, choice: Choice, task: str, params: str, texts: Sequence[str],
                     compute: Compute, mode: CacheMode) -> tuple[list[CachedItem], int, float | None]:
        """L1 hits at once; the rest through single-flight (Redis lookup and cross-replica lock in one round
        trip), computing only what is cached nowhere."""
        keys = EmbeddingCache.keys(info.name, choice.version, params, texts)
        found: list[CachedItem | None] = (
            self.cache.peek_keys(keys) if self.cache is not None and mode.lookup else [None] * len(texts))
        missing = [i for i, item in enumerate(found) if item is None]
        hits, backend_s = len(texts) - len(missing), None
        if missing:
            started = time.perf_counter()

            async def compute_missing(indices: list[int]) -> list[CachedItem]:
                computed = await compute(info, choice, [missing[i] for i in indices])
                self.metrics.child(self.metrics.task_items, task, info.name).inc(len(computed))
                return computed

            fetched = await self.flights.get([keys[i] for i in missing], compute_missing, mode=mode)
            if fetched.cached < len(missing):
                backend_s = time.perf_counter() - started
            hits += fetched.cached
            for i, item in zip(missing, fetched.values, strict=True):
                found[i] = item
        return found, hits, backend_s  # type: ignore[return-value]

    def _count(self, model: str, task: str, status: str, hits: int, n: int, tokens: int,
               backend_s: float | None) -> None:
        m = self.metrics
        m.child(m.cache, status).inc()
        if status != "bypass":
            if hits:
                m.child(m.cache_items, "hit").inc(hits)
            if n > hits:
                m.child(m.cache_items, "miss").inc(n - hits)
        m.child(m.tokens, model).inc(tokens)
        if backend_s is not None:
            m.child(m.backend_latency, model).observe(backend_s)
