"""Single-flight: identical concurrent misses cost one backend call, per item.

In-process, each key being computed has one `asyncio.Future` in a dict; a batch computes only the
keys nobody else is computing and awaits the rest, so overlapping batches share work item by item.
Across replicas, the leader of a key also takes a short Redis lock (``SET NX PX lock_ms``); a
replica that loses the lock polls the cache for the winner's result (every `poll_ms`, at most
`lock_ms`) and computes the key itself when the lock vanishes without a result or the time is up.

The leader's work runs in its own task: a caller that is cancelled (client gone) neither cancels
the computation nor the other requests waiting for it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import redis.asyncio as aioredis

from gateway.cache.control import CacheMode
from gateway.cache.guard import RedisGuard
from gateway.cache.hooks import CacheHooks

T = TypeVar("T")

Compute = Callable[[list[int]], Awaitable[Sequence[T]]]
"""Given indices into the `keys` passed to `SingleFlight.run`, return one value per index, in order."""

LOCK_PREFIX = "tritonstack:lock:"

# Delete each lock only if it still holds our token (a lock that expired and was re-taken by
# another replica is not ours to release).
_RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[1] then n = n + redis.call('del', key) end
end
return n
"""


class ResultStore(Protocol[T]):
    """Where computed values are published and where lock losers look for them (`EmbeddingCache`)."""

    def peek_keys(self, keys: Sequence[str]) -> list[T | None]: ...

    async def get_keys(self, keys: Sequence[str]) -> list[T | None]: ...

    def put_local(self, keys: Sequence[str], items: Sequence[T]) -> None: ...

    async def put_remote(self, keys: Sequence[str], items: Sequence[T]) -> None: ...


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception as retrieved (no "never retrieved" log when nobody waited)."""
    if not fut.cancelled():
        fut.exception()


class SingleFlight(Generic[T]):
    """Coalesce concurrent computations of the same keys (in-process, and across replicas via Redis).

    `store` publishes results (L1 synchronously before waiters wake, then Redis) when the request's
    cache mode allows storing; `redis` (only together with `store`, where lock losers look for the
    winner's result) enables the cross-replica lock, in DEFAULT mode only since REFRESH and BYPASS
    requests must not be answered from the cache. Both are optional. The lock costs one Redis round
    trip per batch of misses: leave `redis` out when only one gateway process runs.
    """

    def __init__(
        self,
        store: ResultStore[T] | None = None,
        *,
        redis: aioredis.Redis | None = None,
        guard: RedisGuard | None = None,
        lock_ms: int = 2000,
        poll_ms: float = 5.0,
        timeout_ms: float = 50.0,
        metrics: CacheHooks | None = None,
    ) -> None:
        self.store = store
        self.redis = redis if store is not None else None
        self.hooks = metrics if metrics is not None else CacheHooks()
        self.guard = guard or RedisGuard(timeout_ms=timeout_ms, on_error=self.hooks.redis_error)
        self.lock_ms = int(lock_ms)
        self.poll_s = poll_ms / 1000.0
        self._release = self.redis.register_script(_RELEASE) if self.redis is not None else None
        self._inflight: dict[str, asyncio.Future[T]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Number of keys currently being computed (or published) by this process."""
        return len(self._inflight)

    async def run(self, keys: Sequence[str], compute: Compute[T], *, mode: CacheMode = CacheMode.DEFAULT
                  ) -> list[T]:
        """One value per key, in order, computing only keys that nobody is computing already.

        `compute` receives indices into `keys` (the first occurrence of each key this call leads)
        and may be called more than once per run, with disjoint non-empty index lists. If a
        computation raises, every caller waiting for one of its keys gets that exception, and the
        keys are released so the next request retries.
        """
        waits: dict[str, asyncio.Future[T]] = {}
        ready: dict[str, T] = {}
        led_keys: list[str] = []
        led_idx: list[int] = []
        joined = 0
        for i, key in enumerate(keys):
            if key in waits or key in ready:
                continue
            fut = self._inflight.get(key)
            if fut is not None:
                waits[key] = fut
                joined += 1
            elif (value := self._peek(key, mode)) is not None:
                ready[key] = value
            else:
                waits[key] = self._register(key)
                led_keys.append(key)
                led_idx.append(i)
        if joined:
            self.hooks.coalesced(joined)
        if led_keys:
            self._spawn(_Leader(self, led_keys, led_idx, compute, mode).run())
        pending = [fut for fut in waits.values() if not fut.done()]
        if pending:
            await asyncio.wait(pending)  # never cancels the shared futures, even if we are cancelled
        return [ready[key] if key in ready else waits[key].result() for key in keys]

    async def wait_idle(self) -> None:
        """Wait until every leader task (including background publishing) has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _peek(self, key: str, mode: CacheMode) -> T | None:
        if self.store is None or not mode.lookup:
            return None
        return self.store.peek_keys([key])[0]

    def _register(self, key: str) -> asyncio.Future[T]:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        self._inflight[key] = fut
        return fut

    def _forget(self, key: str, fut: asyncio.Future[T]) -> None:
        if self._inflight.get(key) is fut:
            del self._inflight[key]

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def distributed(self, mode: CacheMode) -> bool:
        """Whether runs in `mode` take the cross-replica lock."""
        return self.redis is not None and mode is CacheMode.DEFAULT


class _Leader(Generic[T]):
    """Computes the keys one `run` call leads; resolves and finally releases their futures."""

    def __init__(self, flight: SingleFlight[T], keys: list[str], indices: list[int],
                 compute: Compute[T], mode: CacheMode) -> None:
        self.flight = flight
        self.keys = keys
        self.indices = indices
        self.futures = [flight._inflight[key] for key in keys]
        self.compute_fn = compute
        self.mode = mode
        self.token = uuid.uuid4().hex

    async def run(self) -> None:
        everything = range(len(self.keys))
        try:
            won, lost = await self._lock(list(everything))
            await asyncio.gather(self._compute(won, locked=True), self._follow(lost))
        except asyncio.CancelledError as exc:
            self._fail(everything, exc)
            raise
        except Exception as exc:  # a bug here must still wake the waiters, with the error
            self._fail(everything, exc)
        finally:
            self._forget(everything)

    # --- computing ---------------------------------------------------------------------

    async def _compute(self, positions: list[int], *, locked: bool) -> None:
        if not positions:
            return
        try:
            values = list(await self.compute_fn([self.indices[p] for p in positions]))
            if len(values) != len(positions):
                raise RuntimeError(f"compute returned {len(values)} values for {len(positions)} items")
        except Exception as exc:
            self._fail(positions, exc)
            self._forget(positions)
            if locked:
                await self._unlock(positions)
            return
        await self._publish(positions, values, locked=locked)

    async def _publish(self, positions: list[int], values: list[T], *, locked: bool) -> None:
        store, keys = self.flight.store, [self.keys[p] for p in positions]
        if store is not None and self.mode.store:
            store.put_local(keys, values)
        for p, value in zip(positions, values, strict=True):
            if not self.futures[p].done():
                self.futures[p].set_result(value)
        if store is not None and self.mode.store:
            await store.put_remote(keys, values)  # before unlocking: lock losers poll for it
        if locked:
            await self._unlock(positions)
        self._forget(positions)

    # --- cross-replica lock ----------------------------------------------------------------

    async def _lock(self, positions: list[int]) -> tuple[list[int], list[int]]:
        """Split into (won, lost) lock positions; all won when not distributed or Redis fails."""
        redis = self.flight.redis
        if redis is None or not positions or not self.flight.distributed(self.mode):
            return positions, []
        pipe = redis.pipeline(transaction=False)
        for p in positions:
            pipe.set(LOCK_PREFIX + self.keys[p], self.token, nx=True, px=self.flight.lock_ms)
        acquired = await self.flight.guard.call("lock", pipe.execute, None)
        if acquired is None:
            return positions, []
        won = [p for p, ok in zip(positions, acquired, strict=True) if ok]
        lost = [p for p, ok in zip(positions, acquired, strict=True) if not ok]
        return won, lost

    async def _unlock(self, positions: list[int]) -> None:
        script = self.flight._release
        if script is None or not self.flight.distributed(self.mode):
            return
        lock_keys = [LOCK_PREFIX + self.keys[p] for p in positions]
        await self.flight.guard.call("unlock", lambda: script(keys=lock_keys, args=[self.token]), None)

    async def _locks_held(self, positions: list[int]) -> list[bool]:
        redis = self.flight.redis
        assert redis is not None
        pipe = redis.pipeline(transaction=False)
        for p in positions:
            pipe.exists(LOCK_PREFIX + self.keys[p])
        held = await self.flight.guard.call("poll", pipe.execute, None)
        return [bool(h) for h in held] if held is not None else [False] * len(positions)

    async def _follow(self, positions: list[int]) -> None:
        """Wait for another replica's result for `positions`; compute what never shows up."""
        store = self.flight.store
        if not positions or store is None:
            await self._compute(positions, locked=False)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.flight.lock_ms / 1000.0
        pending, orphaned = positions, []
        while pending and loop.time() < deadline:
            await asyncio.sleep(self.flight.poll_s)
            held = await self._locks_held(pending)  # before reading: a gone lock means published
            found = await store.get_keys([self.keys[p] for p in pending])
            hits = [(p, v) for p, v in zip(pending, found, strict=True) if v is not None]
            self._resolve(hits)
            orphaned += [p for p, v, h in zip(pending, found, held, strict=True) if v is None and not h]
            pending = [p for p, v, h in zip(pending, found, held, strict=True) if v is None and h]
        await self._compute(orphaned + pending, locked=False)

    # --- futures -------------------------------------------------------------------------

    def _resolve(self, hits: list[tuple[int, T]]) -> None:
        for p, value in hits:
            if not self.futures[p].done():
                self.futures[p].set_result(value)
        if hits:
            self.flight.hooks.remote_wait(len(hits))
            self._forget([p for p, _ in hits])

    def _fail(self, positions: Iterable[int], exc: BaseException) -> None:
        for p in positions:
            fut = self.futures[p]
            if fut.done():
                continue
            if isinstance(exc, asyncio.CancelledError):
                fut.cancel()
            else:
                fut.set_exception(exc)

    def _forget(self, positions: Iterable[int]) -> None:
        for p in positions:
            self.flight._forget(self.keys[p], self.futures[p])
