"""Embeddings: validation, per-item cache, single-flight, backend call, token accounting, encoding.

Per request: the texts are checked against the length policy; the model's metadata (cached) gives its
dimension and served versions; the version is chosen (`gateway.rollout`: a pin header, the model's rollout
weights sticky per caller, or the oldest ready version: loading one never moves traffic); each item is
looked up in the cache under (model, chosen version, params, text); the
misses go through single-flight (identical in-flight items are shared, in this process and across replicas)
to the backend in one batch; hits and fresh results are stitched back in input order. `usage` counts the
tokens the model really embedded (stored alongside cached vectors). No FastAPI here: errors are typed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.auth import Principal
from gateway.backends.base import Backend, EmbedResult, ModelInfo, valid_model_name
from gateway.backends.triton import model_not_found
from gateway.cache.control import CacheMode, cache_status
from gateway.cache.keys import CachedItem
from gateway.cache.singleflight import SingleFlight
from gateway.cache.store import EmbeddingCache
from gateway.embeddings.drift import DriftMonitor
from gateway.embeddings.encoding import embedding_payload
from gateway.embeddings.protocol import EmbeddingRequest
from gateway.errors import BackendUnavailableError, InvalidRequestError, NotFoundError
from gateway.metrics import GatewayMetrics
from gateway.models.tasks import EMBED, require_task
from gateway.ratelimit.policy import TokenLedger
from gateway.rollout.service import VERSION_HEADER, Choice, RolloutService, choose_version, with_pinned
from gateway.tracing import annotate

# the cached vector depends on nothing but model, version and text (dimensions must equal the model's)
CACHE_PARAMS = "embed:v1"


@dataclass(frozen=True, slots=True)
class EmbeddingPolicy:
    """Request limits that come from settings."""

    max_items: int = 2048
    max_chars: int = 32_768


@dataclass(slots=True)
class EmbeddingOutcome:
    """What the router needs: the response object, `x-cache`, backend time and total tokens."""

    payload: dict[str, Any]
    cache: str
    backend_s: float | None
    prompt_tokens: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Vectors:
    matrix: np.ndarray
    tokens: int
    hits: int
    backend_s: float | None


SPECULATE_MAX_ITEMS = 8  # requests with more misses than this never start before the Redis lookup


def request_texts(request: EmbeddingRequest, policy: EmbeddingPolicy) -> list[str]:
    """The request's texts; InvalidRequestError (param "input") beyond the item or length limits."""
    texts = [request.input] if isinstance(request.input, str) else request.input
    if len(texts) > policy.max_items:
        raise InvalidRequestError(
            f"'input' holds {len(texts)} items; at most {policy.max_items} are allowed per request",
            param="input", code="too_many_inputs")
    for i, text in enumerate(texts):
        if len(text) > policy.max_chars:
            raise InvalidRequestError(
                f"'input[{i}]' has {len(text)} characters; at most {policy.max_chars} are allowed per item "
                "(text beyond the model's window is truncated by the model)",
                param="input", code="input_too_long")
    return texts


def check_dimensions(request: EmbeddingRequest, info: ModelInfo) -> None:
    """`dimensions` is accepted only when it equals the model's embedding size."""
    if request.dimensions is None:
        return
    if info.embedding_dim is None or request.dimensions != info.embedding_dim:
        raise InvalidRequestError(
            f"The model '{info.name}' produces {info.embedding_dim} dimensions; 'dimensions' must be omitted "
            f"or equal to {info.embedding_dim} (got {request.dimensions})",
            param="dimensions", code="unsupported_dimensions")


class EmbeddingService:
    """Creates embeddings through the backend, the cache and single-flight."""

    def __init__(
        self,
        backend: Backend,
        *,
        metrics: GatewayMetrics,
        policy: EmbeddingPolicy,
        cache: EmbeddingCache | None = None,
        flights: SingleFlight[CachedItem] | None = None,
        ledger: TokenLedger | None = None,
        rollouts: RolloutService | None = None,
    ) -> None:
        self.backend = backend
        self.rollouts = rollouts
        self.metrics = metrics
        self.policy = policy
        self.cache = cache
        self.flights = flights if flights is not None else SingleFlight(cache)
        self.ledger = ledger
        self._computing = 0  # backend calls in flight (early computation only starts when there are none)
        self.drift = DriftMonitor(metrics.registry)  # gateway/embeddings/drift.py: the drift gauges

    async def drain(self) -> None:
        """Finish background work (cache publishing, pending token debits); call at shutdown."""
        await self.flights.wait_idle()
        if self.ledger is not None:
            await self.ledger.close()

    async def model(self, name: str) -> ModelInfo:
        """Metadata of a servable model; NotFoundError (code model_not_found) otherwise."""
        if not valid_model_name(name):
            raise model_not_found(name)
        return await self.backend.model_info(name)

    async def create(
        self, request: EmbeddingRequest, mode: CacheMode = CacheMode.DEFAULT, principal: Principal | None = None,
        pin: str | None = None,
    ) -> EmbeddingOutcome:
        """Embed the request's texts with the version chosen for `principal` (or `pin`, a version number);
        the returned payload is the OpenAI response object, `headers` name the served version."""
        texts = request_texts(request, self.policy)
        info = await self.model(request.model)
        require_task(info, EMBED)
        check_dimensions(request, info)
        if self.cache is None:
            mode = CacheMode.BYPASS
        identity = principal.identity if principal is not None else ""
        info, choice = await self._choose(info, identity, pin)
        try:
            result = await self._vectors(info, choice, texts, mode)
        except (NotFoundError, BackendUnavailableError) as exc:
            info, choice = await self._rechoose(info, identity, choice, exc)
            result = await self._vectors(info, choice, texts, mode)
        if self.rollouts is not None:
            self.rollouts.metrics.served(info.name, choice)
        status = "bypass" if mode is CacheMode.BYPASS else cache_status(result.hits, len(texts))
        annotate({"tritonstack.model": info.name, "tritonstack.model_version": choice.version,
                  "tritonstack.cache": status, "tritonstack.items": len(texts)})
        self._count(info.name, status, result, len(texts))
        if self.ledger is not None and principal is not None:
            self.ledger.add(principal, result.tokens)  # debited off the request path
        payload = embedding_payload(request.model, result.matrix, request.encoding_format, result.tokens)
        return EmbeddingOutcome(payload, status, result.backend_s, result.tokens, {VERSION_HEADER: choice.version})

    async def job_version(self, name: str, principal: Principal) -> str | None:
        """The version the gateway gives `principal` for a background job of `name` (computed by the worker later,
        all of it by that version): the rollout table's, else the oldest ready version (`default_choice`)."""
        info = await self.model(name)
        choice = self._route(info, principal.identity, None)
        return choice.backend_version or None

    def _route(self, info: ModelInfo, identity: str, pin: str | None) -> Choice:
        return choose_version(self.rollouts, info.name, identity, info.versions, info.version, pin)

    async def _choose(self, info: ModelInfo, identity: str, pin: str | None) -> tuple[ModelInfo, Choice]:
        """The version for this request; a pin of a version missing from cached metadata refreshes it first."""
        info = await with_pinned(self.backend, info, pin)
        return info, self._route(info, identity, pin)

    async def _rechoose(self, info: ModelInfo, identity: str, failed: Choice, error: Exception
                        ) -> tuple[ModelInfo, Choice]:
        """After a routed version failed as missing or unavailable (unloaded by a rollback), or the default version
        as missing: fresh metadata and rollout table, and another version if they now choose one; otherwise the
        original error. A pinned version that turns out missing is checked again on fresh metadata: gone, it is
        the pin's 400, as when the metadata already knew."""
        overloaded = isinstance(error, BackendUnavailableError) and error.code == "backend_overloaded"
        pin_gone = failed.selection == "pinned" and isinstance(error, NotFoundError)
        default_gone = failed.selection == "default" and isinstance(error, NotFoundError)
        if overloaded or not (pin_gone or default_gone or (failed.routed and self.rollouts is not None)):
            raise error
        self.backend.invalidate(info.name)
        if self.rollouts is not None:
            self.rollouts.refresh(force=True)
        fresh = await self.model(info.name)
        choice = self._route(fresh, identity, failed.version if pin_gone else None)
        if choice.version == failed.version:
            raise error
        return fresh, choice

    def _count(self, model: str, status: str, result: _Vectors, n: int) -> None:
        m = self.metrics
        m.child(m.cache, status).inc()
        if status != "bypass":
            if result.hits:
                m.child(m.cache_items, "hit").inc(result.hits)
            if n > result.hits:
                m.child(m.cache_items, "miss").inc(n - result.hits)
        m.child(m.tokens, model).inc(result.tokens)
        if result.backend_s is not None:
            m.child(m.backend_latency, model).observe(result.backend_s)

    async def _vectors(self, info: ModelInfo, choice: Choice, texts: Sequence[str], mode: CacheMode) -> _Vectors:
        """L1 hits at once; the rest through single-flight, which looks them up in Redis (taking the
        cross-replica lock in the same round trip) and computes only what is cached nowhere."""
        keys = EmbeddingCache.keys(info.name, choice.version, CACHE_PARAMS, texts)
        found: list[CachedItem | None] = (
            self.cache.peek_keys(keys) if self.cache is not None and mode.lookup else [None] * len(texts)
        )
        missing = [i for i, item in enumerate(found) if item is None]
        hits, backend_s = len(texts) - len(missing), None
        if missing:
            started = time.perf_counter()
            todo, todo_keys = [texts[i] for i in missing], [keys[i] for i in missing]
            early = self._speculate(info, choice, todo, todo_keys, mode)
            fetched = await self.flights.get(todo_keys, self._computer(info, choice, todo, early), mode=mode)
            if fetched.cached < len(missing):
                backend_s = time.perf_counter() - started
            hits += fetched.cached
            for i, item in zip(missing, fetched.values, strict=True):
                found[i] = item
        items: list[CachedItem] = found  # type: ignore[assignment]
        matrix = np.frombuffer(b"".join(item.vector for item in items), dtype="<f4").reshape(len(items), -1)
        self.drift.observe(info.name, info.extra, matrix, items)  # cache hits too: drift is about what is served
        tokens = sum(item.tokens for item in items)
        return _Vectors(matrix, tokens, hits, backend_s)

    def _speculate(self, info: ModelInfo, choice: Choice, texts: Sequence[str], keys: Sequence[str],
                   mode: CacheMode) -> asyncio.Future[EmbedResult] | None:
        """When this process has nothing in flight to the model server, start computing a few misses at once,
        racing the Redis lookup: at low load that takes the round trip off the latency and costs only idle
        capacity (what Redis had is computed for nothing); under load nothing is started early. A text this
        process is computing already is joined, not started again (keys still being published do not count as
        load: in a closed loop the next request arrives while the previous one's results are being stored)."""
        busy = self._computing or self.flights.any_in_flight(keys)
        if busy or mode is not CacheMode.DEFAULT or len(texts) > SPECULATE_MAX_ITEMS:
            return None
        self._computing += 1  # counted now: a request arriving before the task starts must see it
        task = asyncio.ensure_future(self._embed(info, choice, list(dict.fromkeys(texts))))  # each text once
        task.add_done_callback(self._early_done)
        return task

    def _early_done(self, task: asyncio.Future[EmbedResult]) -> None:
        self._computing -= 1
        if not task.cancelled():
            task.exception()  # seen: nobody may have needed the result

    async def _embed(self, info: ModelInfo, choice: Choice, texts: Sequence[str]) -> EmbedResult:
        result = await self.backend.embed(info.name, texts, version=choice.backend_version)
        if not choice.backend_version and result.model_version != info.version:
            self.backend.invalidate(info.name)  # a new version is being served: refresh metadata
        self.metrics.embedded_items.labels(info.name).inc(len(texts))
        return result

    def _computer(
        self, info: ModelInfo, choice: Choice, texts: Sequence[str],
        early: asyncio.Future[EmbedResult] | None = None,
    ) -> Callable[[list[int]], Awaitable[list[CachedItem]]]:
        async def compute(indices: list[int]) -> list[CachedItem]:
            if early is not None:  # every distinct text was started early: take the rows asked for
                full = await early  # awaited by the leader's task only (cancelled with it, at shutdown)
                rows = {text: row for row, text in enumerate(dict.fromkeys(texts))}
                picked = [rows[texts[i]] for i in indices]
                vectors, counts = full.vectors[picked], full.token_counts[picked]
            else:
                self._computing += 1
                try:
                    result = await self._embed(info, choice, [texts[i] for i in indices])
                finally:
                    self._computing -= 1
                vectors, counts = result.vectors, result.token_counts
            return [CachedItem.from_array(vector, tokens)
                    for vector, tokens in zip(vectors, counts.tolist(), strict=True)]

        return compute
