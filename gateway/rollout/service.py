"""Version choice per request: weighted canary, sticky per caller, pinnable by header; no FastAPI here.

For a model listed in the rollouts file, the caller's identity (API key name; anonymous callers: client IP)
is hashed with the model name into a bucket in [0, 10000); the versions' weights, laid out in ascending
version order, cut that range into consecutive slices, and the bucket's slice is the version. So a caller
keeps its version while the weights hold, and as a canary (the newest version, at the top of the range) grows
from 5% to 50% to 100%, callers only ever move onto it, never back and forth.

A routed version that Triton does not serve (yet, or any more) falls back to the configured version with the
largest weight that it does serve, then to the default below: requests never go to a version that is known
to be down. `x-tritonstack-model-version: N` pins version N (400 unless Triton serves it).

Safe canaries by default: loading a version never moves traffic by itself. A model that no rollout routes goes
to its oldest ready version, named to Triton (never Triton's own choice, which is the newest): a new export gets
the next version number, so the oldest ready version is the one that was serving before the new one was loaded
next to it. The rule needs no state, so every replica and every gateway restart agrees. Traffic moves only when
a rollout says so (`tritonstack model promote` writes the rollouts file; `tritonstack model load` records the
serving version there as `stable` first, which also covers loading an *older* version next to a newer one).

The file is re-read when it changes: on the request path at most once per `check_interval_s` (a monotonic
clock comparison per request, a `stat` at most once a second), and on demand (`reload`, the admin route).
A file that fails to validate is logged and counted; the previous table stays in force.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from gateway.backends.base import Backend, ModelInfo
from gateway.errors import InvalidRequestError
from gateway.rollout.config import ModelRollout, RolloutConfigError, RolloutsConfig, load_rollouts, version_key

log = logging.getLogger("gateway.rollout")

VERSION_HEADER = "x-tritonstack-model-version"
BUCKETS = 10_000


def bucket(model: str, identity: str) -> int:
    """The caller's stable bucket in [0, BUCKETS) for `model` (same on every replica and restart)."""
    digest = hashlib.blake2b(f"{model}\x00{identity}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True, slots=True)
class Choice:
    """The version serving one request: `version` goes into the cache key and the response header,
    `backend_version` to Triton ("" = Triton's choice); `selection` is pinned, routed, fallback or default."""

    version: str
    backend_version: str
    selection: str

    @property
    def routed(self) -> bool:
        """Chosen by the rollout table (a retry may choose again when the version disappears)."""
        return self.selection in ("routed", "fallback")


class _Slices:
    """A rollout compiled for the request path: bucket upper bounds and their versions."""

    __slots__ = ("bounds", "by_weight", "rollout")

    def __init__(self, rollout: ModelRollout) -> None:
        self.rollout = rollout
        total = sum(rollout.versions.values())
        bounds, acc = [], 0.0
        for version in rollout.ordered:
            acc += rollout.versions[version]
            bounds.append((round(BUCKETS * acc / total), version))
        self.bounds = tuple(bounds)
        positive = [v for v in rollout.ordered if rollout.versions[v] > 0]
        # fallback order: largest weight first, newer first among equals
        self.by_weight = tuple(sorted(positive, key=lambda v: (rollout.versions[v], version_key(v)), reverse=True))

    def pick(self, point: int) -> str:
        for bound, version in self.bounds:
            if point < bound:
                return version
        return self.by_weight[0]


def parse_pin(value: str | None) -> str | None:
    """The version named by the pin header, or None without one; InvalidRequestError for a non-number."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not value.isdigit() or value.startswith("0") or len(value) > 19:
        raise InvalidRequestError(f"'{VERSION_HEADER}' must be a model version number (got {value[:32]!r})",
                                  param=VERSION_HEADER, code="invalid_model_version")
    return value


def pinned(model: str, pin: str, ready: Sequence[str]) -> Choice:
    """The choice for a pinned version; InvalidRequestError (400) unless Triton serves it."""
    if pin not in ready:
        raise InvalidRequestError(
            f"Version {pin} of model '{model}' is not served (served: {', '.join(ready) or 'none'})",
            param=VERSION_HEADER, code="model_version_not_available")
    return Choice(pin, pin, "pinned")


def default_choice(ready: Sequence[str], newest: str) -> Choice:
    """The version of a model that no rollout routes: the oldest ready version (the one that was serving before
    newer ones were loaded: loading never moves traffic), named to Triton even when it is the only one, so that a
    version loaded since the metadata was cached cannot take the request either. Triton's choice only without
    metadata versions."""
    if not ready:
        return Choice(newest, "", "default")
    oldest = min(ready, key=version_key)
    return Choice(oldest, oldest, "default")


def choose_version(rollouts: RolloutService | None, model: str, identity: str, ready: Sequence[str], newest: str,
                   pin: str | None) -> Choice:
    """The version for one request: the rollout table's when there is one (`RolloutService.choose`), else the pinned
    version, else the default (`default_choice`)."""
    if rollouts is not None:
        return rollouts.choose(model, identity, ready, newest, pin)
    return pinned(model, pin, ready) if pin is not None else default_choice(ready, newest)


async def with_pinned(backend: Backend, info: ModelInfo, pin: str | None) -> ModelInfo:
    """`info`, fetched again when `pin` names a version it lacks (loaded since the metadata was cached)."""
    if pin is None or pin in info.versions:
        return info
    backend.invalidate(info.name)
    return await backend.model_info(info.name)


class RolloutMetrics:
    """Requests by model, served version and how the version was selected; file reloads by result."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "gateway_model_version_requests", "Requests by public model, served version and selection "
            "(routed by the rollout, pinned by header, fallback, or default = Triton's version policy).",
            ["model", "version", "selection"], registry=registry,
        )
        self.reloads = Counter("gateway_rollout_reloads", "Rollouts file (re)loads by result.", ["result"],
                               registry=registry)
        self._children: dict[tuple[str, str, str], Any] = {}

    def served(self, model: str, choice: Choice) -> None:
        """Count one request served by `choice`."""
        key = (model, choice.version, choice.selection)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(*key)
        child.inc()


class RolloutService:
    """The live rollout table: chooses versions per request and reloads the file when it changes."""

    def __init__(self, path: Path | None, *, metrics: RolloutMetrics, check_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.metrics = metrics
        self._interval = check_interval_s
        self._clock = clock
        self._table: dict[str, _Slices] = {}
        self._signature: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self.loaded_at: float | None = None
        self.last_error: str | None = None
        if path is not None:
            self.reload()  # an invalid file at start is a start-up error

    # --- loading -------------------------------------------------------------------------------------------

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self) -> RolloutsConfig:
        """Read the file now and swap the table in (RolloutConfigError leaves the current table in force)."""
        if self.path is None:
            raise RolloutConfigError("no rollouts file is configured (set TRITONSTACK_GATEWAY_ROLLOUTS_FILE)")
        self._signature = self._stat()
        self._next_check = self._clock() + self._interval
        try:
            config = load_rollouts(self.path)
        except RolloutConfigError as exc:
            self.last_error = str(exc)
            self.metrics.reloads.labels("error").inc()
            raise
        self._table = {name: _Slices(rollout) for name, rollout in config.models.items()}
        self.loaded_at, self.last_error = time.time(), None
        self.metrics.reloads.labels("ok").inc()
        log.info("rollouts loaded from %s: %s", self.path,
                 {name: s.rollout.versions for name, s in self._table.items()} or "no models")
        return config

    def refresh(self, *, force: bool = False) -> None:
        """Reload when the file changed; checks at most once per interval unless `force`."""
        if self.path is None:
            return
        now = self._clock()
        if not force and now < self._next_check:
            return
        self._next_check = now + self._interval
        if self._stat() == self._signature:
            return
        try:
            self.reload()
        except RolloutConfigError as exc:
            log.error("rollouts file change ignored, the previous table stays in force: %s", exc)

    # --- choosing ------------------------------------------------------------------------------------------

    def rollout(self, model: str) -> ModelRollout | None:
        """The configured rollout of `model`, if any."""
        slices = self._table.get(model)
        return slices.rollout if slices is not None else None

    def choose(self, model: str, identity: str, ready: Sequence[str], newest: str, pin: str | None = None
               ) -> Choice:
        """The version for one request of `model` by `identity`, given the versions Triton serves (`ready`)
        and its newest one; InvalidRequestError when `pin` names a version that is not served."""
        if pin is not None:
            return pinned(model, pin, ready)
        self.refresh()
        slices = self._table.get(model)
        if slices is None:
            return default_choice(ready, newest)
        version = slices.pick(bucket(model, identity))
        if version in ready:
            return Choice(version, version, "routed")
        for candidate in slices.by_weight:
            if candidate in ready:
                return Choice(candidate, candidate, "fallback")
        return default_choice(ready, newest)

    # --- reporting -----------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The active table for `GET /admin/rollouts`; `file` is the absolute path read (`tritonstack model promote`
        checks that it is the file it writes)."""
        models = {
            name: {"stable": s.rollout.stable_version,
                   "versions": {v: s.rollout.versions[v] for v in s.rollout.ordered},
                   "percent": s.rollout.shares()}
            for name, s in sorted(self._table.items())
        }
        return {"file": str(self.path.resolve()) if self.path else None, "loaded_at": self.loaded_at,
                "last_error": self.last_error, "check_interval_s": self._interval, "models": models}
