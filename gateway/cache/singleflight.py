"""Single-flight: identical concurrent misses cost one backend call, per item.

In-process, each key being computed has one `asyncio.Future` in a dict; a batch computes only the
keys nobody else is computing and awaits the rest, so overlapping batches share work item by item.
Across replicas, the leader of a key also takes a short Redis lock (``SET NX PX lock_ms``); a
replica that loses the lock polls the cache for the winner's result (every `poll_ms`, at most
`lock_ms`) and computes the key itself when the lock vanishes without a result or the time is up.

Round trips per batch of misses: one to look the keys up in Redis and lock the ones that are not
there, and one after the backend answered, off the callers' path, that stores the results and
releases the locks (`gateway.cache.locks`; concurrent batches share these calls).

The leader's work runs in its own task: a caller that is cancelled (client gone) neither cancels
the computation nor the other requests waiting for it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from gateway.cache.control import CacheMode
from gateway.cache.guard import RedisGuard
from gateway.cache.hooks import CacheHooks
from gateway.cache.locks import RedisLocks
from gateway.tracing import span

T = TypeVar("T")

Compute = Callable[[list[int]], Awaitable[Sequence[T]]]
"""Given indices into the `keys` passed to `SingleFlight.run`, return one value per index, in order."""


class ResultStore(Protocol[T]):
    """Where computed values are published and where lock losers look for them (`EmbeddingCache`)."""

    def peek_keys(self, keys: Sequence[str]) -> list[T | None]: ...

    async def get_keys(self, keys: Sequence[str]) -> list[T | None]: ...

    def put_local(self, keys: Sequence[str], items: Sequence[T]) -> None: ...

    async def put_remote(self, keys: Sequence[str], items: Sequence[T]) -> None: ...

    def load_remote(self, keys: Sequence[str], raw: Sequence[bytes | None]) -> list[T | None]: ...

    def queue_remote(self, pipe: Pipeline, keys: Sequence[str], items: Sequence[T]) -> None: ...


@dataclass(frozen=True, slots=True)
class Fetched(Generic[T]):
    """What `SingleFlight.get` found: one value per key, and how many keys the cache answered."""

    values: list[T]
    cached: int


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception as retrieved (no "never retrieved" log when nobody waited)."""
    if not fut.cancelled():
        fut.exception()


class SingleFlight(Generic[T]):
    """Coalesce concurrent computations of the same keys (in-process, and across replicas via Redis).

    `store` publishes results (L1 synchronously before waiters wake, then Redis) when the request's
    cache mode allows storing; `redis` (only together with `store`, where lock losers look for the
    winner's result) enables the cross-replica lock, in DEFAULT mode only since REFRESH and BYPASS
    requests must not be answered from the cache. Both are optional. With `redis`, the Redis lookup and
    the lock share one round trip per batch of misses, and storing shares one with the unlock.
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
        self.locks: RedisLocks[T] | None = (
            RedisLocks(self.redis, self.guard, lock_ms, store) if self.redis is not None and store is not None
            else None
        )
        self._inflight: dict[str, asyncio.Future[T]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Number of keys currently being computed (or published) by this process."""
        return len(self._inflight)

    def any_in_flight(self, keys: Iterable[str]) -> bool:
        """True when this process is computing (or publishing) one of `keys`."""
        inflight = self._inflight
        return any(key in inflight for key in keys)

    async def run(self, keys: Sequence[str], compute: Compute[T], *, mode: CacheMode = CacheMode.DEFAULT
                  ) -> list[T]:
        """One value per key, in order, computing only keys that nobody is computing already.

        `compute` receives indices into `keys` (the first occurrence of each key this call leads)
        and may be called more than once per run, with disjoint non-empty index lists. If a
        computation raises, every caller waiting for one of its keys gets that exception, and the
        keys are released so the next request retries. In DEFAULT mode the keys this call leads are
        first looked up in the store (L1, then Redis), so only what is cached nowhere is computed.
        """
        return (await self.get(keys, compute, mode=mode)).values

    async def get(self, keys: Sequence[str], compute: Compute[T], *, mode: CacheMode = CacheMode.DEFAULT
                  ) -> Fetched[T]:
        """`run`, also counting the keys (positions in `keys`) that the cache answered."""
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
        with span("single_flight", {"tritonstack.items": len(keys), "tritonstack.single_flight.joined": joined,
                                    "tritonstack.single_flight.led": len(led_keys)}) as current:
            leader = _Leader(self, led_keys, led_idx, compute, mode) if led_keys else None
            waiter = None
            if leader is not None:
                if not joined:  # every key still to come is this call's own: its leader wakes it directly
                    waiter = leader.waiter = asyncio.get_running_loop().create_future()
                self._spawn(leader.run())  # its task inherits this span: Redis and Triton spans nest under it
            pending = [fut for fut in waits.values() if not fut.done()]
            if waiter is not None:
                await waiter  # our own future: cancelling us cancels no shared one
            elif pending:
                await asyncio.wait(pending)  # never cancels the shared futures, even if we are cancelled
            cached = ready.keys() | (leader.cached if leader is not None else set())
            values = [ready[key] if key in ready else waits[key].result() for key in keys]
            hits = sum(1 for key in keys if key in cached)
            if current is not None:
                current.set_attribute("tritonstack.cache.hits", hits)
        return Fetched(values, hits)

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
        return self.locks is not None and mode is CacheMode.DEFAULT


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
        self.cached: set[str] = set()  # keys answered by the cache lookup (not computed, not waited for)
        # the leading call's own future, set once every key is resolved (when that call waits for nothing else):
        # one wake-up for the caller, where waiting on the keys' futures costs a callback round first
        self.waiter: asyncio.Future[None] | None = None

    async def run(self) -> None:
        everything = range(len(self.keys))
        try:
            won, lost = await self._claim(list(everything))
            await asyncio.gather(self._compute(won, locked=True), self._follow(lost))
        except asyncio.CancelledError as exc:
            self._fail(everything, exc)
            raise
        except Exception as exc:  # a bug here must still wake the waiters, with the error
            self._fail(everything, exc)
        finally:
            self._forget(everything)
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)

    def _wake(self) -> None:
        """Set the leading call's waiter once every key it waits for is resolved."""
        waiter = self.waiter
        if waiter is not None and not waiter.done() and all(f.done() for f in self.futures):
            waiter.set_result(None)

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
            self._wake()
            self._forget(positions)
            if locked:
                await self._publish_remote(positions, [], locked=True)
            return
        await self._publish(positions, values, locked=locked)

    async def _publish(self, positions: list[int], values: list[T], *, locked: bool) -> None:
        store = self.flight.store
        if store is not None and self.mode.store:
            store.put_local([self.keys[p] for p in positions], values)
        for p, value in zip(positions, values, strict=True):
            if not self.futures[p].done():
                self.futures[p].set_result(value)
        self._wake()
        await self._publish_remote(positions, values, locked=locked)
        self._forget(positions)

    async def _publish_remote(self, positions: list[int], values: list[T], *, locked: bool) -> None:
        """Store `values` in Redis (when the mode stores) and release our locks, in one round trip."""
        flight, keys = self.flight, [self.keys[p] for p in positions]
        stored = values if flight.store is not None and self.mode.store else []
        if locked and flight.locks is not None and flight.distributed(self.mode):
            await flight.locks.publish(keys, stored, self.token)
        elif stored and flight.store is not None:
            await flight.store.put_remote(keys, stored)

    # --- cross-replica lock ----------------------------------------------------------------

    async def _claim(self, positions: list[int]) -> tuple[list[int], list[int]]:
        """Resolve what the store already holds; split the rest into (won, lost) lock positions.

        Without the cross-replica lock (or when Redis fails) every uncached position is "won".
        """
        store = self.flight.store
        if store is None or not self.mode.lookup:
            return positions, []
        keys = [self.keys[p] for p in positions]
        if self.flight.distributed(self.mode):
            found, won = await self._lookup_or_lock(store, keys)
        else:
            found, won = await store.get_keys(keys), [True] * len(keys)
        self._resolve([(p, v) for p, v in zip(positions, found, strict=True) if v is not None], remote=False)
        misses = [(p, w) for p, v, w in zip(positions, found, won, strict=True) if v is None]
        return [p for p, w in misses if w], [p for p, w in misses if not w]

    async def _lookup_or_lock(self, store: ResultStore[T], keys: list[str]) -> tuple[list[T | None], list[bool]]:
        """One round trip: each key's cached value, else whether we took its lock."""
        assert self.flight.locks is not None
        raw = await self.flight.locks.claim(keys, self.token)
        if raw is None:
            return [None] * len(keys), [True] * len(keys)
        found = store.load_remote(keys, [value if isinstance(value, bytes) else None for value in raw])
        return found, [value != 0 for value in raw]  # a malformed cached value: recompute it ourselves

    async def _follow(self, positions: list[int]) -> None:
        """Wait for another replica's result for `positions`; compute what never shows up."""
        store, locks = self.flight.store, self.flight.locks
        if not positions or store is None or locks is None:
            await self._compute(positions, locked=False)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.flight.lock_ms / 1000.0
        pending, orphaned = positions, []
        while pending and loop.time() < deadline:
            await asyncio.sleep(self.flight.poll_s)
            held = await locks.held([self.keys[p] for p in pending])  # before reading: gone means published
            found = await store.get_keys([self.keys[p] for p in pending])
            hits = [(p, v) for p, v in zip(pending, found, strict=True) if v is not None]
            self._resolve(hits, remote=True)
            orphaned += [p for p, v, h in zip(pending, found, held, strict=True) if v is None and not h]
            pending = [p for p, v, h in zip(pending, found, held, strict=True) if v is None and h]
        await self._compute(orphaned + pending, locked=False)

    # --- futures -------------------------------------------------------------------------

    def _resolve(self, hits: list[tuple[int, T]], *, remote: bool) -> None:
        """Wake the waiters of values found in the cache (`remote`: published by another replica's run)."""
        if not hits:
            return
        if remote:
            self.flight.hooks.remote_wait(len(hits))
        else:
            self.cached.update(self.keys[p] for p, _ in hits)
        for p, value in hits:
            if not self.futures[p].done():
                self.futures[p].set_result(value)
        self._wake()
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
