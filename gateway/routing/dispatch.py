"""Fallback, retries, overflow and the time budget: run one request against a route's deployments.

Per request: deployments are tried in route order (tiers of equals shuffled by weight). A deployment is passed
over at once when it is saturated (in-flight bound: **overflow**), its breaker is open, or an earlier
`retry-after` from it has not elapsed. An attempt that fails with a retryable reason (connection, timeout, 429,
5xx, broken stream, unavailable) or a local queue-full (`overloaded`) moves on to the next deployment at once;
after a full pass, up to `retry_rounds` more passes follow after a jittered exponential backoff (never before a
deployment's own `retry-after`, and only within `max_retry_after_s` and the budget). At most `max_attempts`
upstream calls per request, all inside `total_timeout_s` (each attempt also within its deployment's
`timeout_s`). A 400 from upstream is the caller's own fault: it is returned, never retried.

The call itself is the caller's (`call(deployment, timeout_s)`): a non-stream completion, or for streams the
opening of the stream up to its first token — so a stream that breaks before the first token falls back too.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.backends.chat import UpstreamError
from gateway.chat.metrics import ChatMetrics
from gateway.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    GatewayError,
    InvalidRequestError,
    RateLimitedError,
)
from gateway.ratelimit import retry_after
from gateway.routing.breaker import Permit
from gateway.routing.config import Policy
from gateway.routing.table import ChatRoute, Deployment
from gateway.tracing import failed, span

T = TypeVar("T")
Call = Callable[[Deployment, float], Awaitable[T]]

_NEVER_AGAIN = frozenset({"not_found", "client_error"})
_TIMER_SLACK_S = 0.005  # the event loop may wake a sleeper up to its clock resolution early


@dataclass(frozen=True, slots=True)
class Attempt:
    """One deployment tried or passed over: its outcome ("ok" or a reason)."""

    deployment: str
    outcome: str
    status: int | None = None
    retry_after_s: float | None = None

    def describe(self) -> str:
        """Client-safe text for error messages."""
        what = self.outcome.replace("_", " ")
        return f"{self.deployment}: {what} ({self.status})" if self.status else f"{self.deployment}: {what}"


@dataclass(slots=True)
class Dispatched(Generic[T]):
    """The deployment that served, what its call returned, and the upstream time of that call."""

    deployment: Deployment
    value: T
    upstream_s: float


class Dispatcher:
    """Runs calls against a route's deployments (see module docstring)."""

    def __init__(self, metrics: ChatMetrics, *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self._rng = rng or random.Random()
        self._clock = clock

    async def run(self, route: ChatRoute, call: Call[T], trace: list[Attempt]) -> Dispatched[T]:
        """Serve with the first deployment that succeeds; the typed error that describes every failure else.

        `trace` receives one `Attempt` per deployment tried or passed over (for the audit log).
        """
        policy = route.policy
        deadline = self._clock() + policy.total_timeout_s
        not_before: dict[str, float] = {}
        calls = 0
        for round_no in range(policy.retry_rounds + 1):
            if round_no and not await self._pause(round_no, policy, deadline, not_before, route):
                break
            for dep in route.order(self._rng):
                if calls >= policy.max_attempts or self._clock() >= deadline:
                    break
                permit = await self._gate(route, dep, not_before, trace)
                if permit is None:
                    continue
                calls += 1
                served = await self._attempt(route, dep, permit, call, deadline, not_before, trace)
                if served is not None:
                    return served
        raise final_error(route, trace)

    async def _gate(self, route: ChatRoute, dep: Deployment, not_before: dict[str, float],
                    trace: list[Attempt]) -> Permit | None:
        """The breaker's permit, or None (recorded as a skip) when the deployment must be passed over."""
        reason = None
        permit = Permit.ALLOW
        if dep.saturated:
            reason = "overflow"
        elif not_before.get(dep.name, 0.0) > self._clock() + _TIMER_SLACK_S:
            reason = "retry_after"
        elif not route.single:
            permit = await dep.breaker.allow()
            if permit is Permit.DENY:
                reason = "breaker_open"
        if reason is None:
            return permit
        self._failed(route, dep, Attempt(dep.name, reason), trace, counted=False)
        return None

    async def _attempt(self, route: ChatRoute, dep: Deployment, permit: Permit, call: Call[T], deadline: float,
                       not_before: dict[str, float], trace: list[Attempt]) -> Dispatched[T] | None:
        started = self._clock()
        limit = max(0.001, min(dep.config.timeout_s, deadline - started))
        value, error = await self._call(route, dep, call, limit, len(trace) + 1)
        if error is None:
            elapsed = self._clock() - started
            await dep.breaker.record(permit, True)
            m = self.metrics
            m.child(m.upstream_calls, dep.name, "ok").inc()
            m.child(m.upstream_latency, dep.name).observe(elapsed)
            return Dispatched(dep, value, elapsed)  # type: ignore[arg-type]
        await dep.breaker.record(permit, False if error.counts_as_failure else None)
        self._failed(route, dep, Attempt(dep.name, error.reason, error.status, error.retry_after_s), trace)
        if error.reason == "bad_request":
            raise InvalidRequestError(error.message, code="upstream_rejected_request")
        if error.reason in _NEVER_AGAIN:
            not_before[dep.name] = math.inf
        elif error.retry_after_s:
            not_before[dep.name] = self._clock() + error.retry_after_s
        return None

    @staticmethod
    async def _call(route: ChatRoute, dep: Deployment, call: Call[T], limit: float, number: int
                    ) -> tuple[T | None, UpstreamError | None]:
        """One upstream call within `limit` seconds, in a span of its own: its value, or why it failed."""
        with span("chat.attempt", {"tritonstack.deployment": dep.name, "tritonstack.attempt": number,
                                   "tritonstack.route": route.name}) as current:
            try:
                async with asyncio.timeout(limit):
                    return await call(dep, limit), None
            except UpstreamError as exc:
                error = exc
            except TimeoutError:
                error = UpstreamError("timeout", "upstream timed out")
            failed(current, error)
            if current is not None:
                current.set_attributes({"tritonstack.outcome": error.reason,
                                        "http.response.status_code": error.status or 0})
            return None, error

    def _failed(self, route: ChatRoute, dep: Deployment, attempt: Attempt, trace: list[Attempt],
                counted: bool = True) -> None:
        trace.append(attempt)
        self.metrics.fallbacks.labels(route.name, dep.name, attempt.outcome).inc()
        if counted:
            self.metrics.upstream_calls.labels(dep.name, attempt.outcome).inc()

    async def _pause(self, round_no: int, policy: Policy, deadline: float, not_before: dict[str, float],
                     route: ChatRoute) -> bool:
        """Sleep before another pass; False when no deployment can be retried within the budget."""
        now = self._clock()
        waits = [max(0.0, not_before.get(d.name, 0.0) - now) for d in route.deployments]
        usable = [w for w in waits if w <= policy.max_retry_after_s]
        if not usable:
            return False
        backoff = min(policy.backoff_max_s, policy.backoff_base_s * 2 ** (round_no - 1))
        delay = max(backoff * self._rng.uniform(0.5, 1.0), min(usable))
        if now + delay >= deadline:
            return False
        await asyncio.sleep(delay)
        return True


def final_error(route: ChatRoute, trace: list[Attempt]) -> GatewayError:
    """The honest error once every deployment failed or was passed over."""
    outcomes = {a.outcome for a in trace}
    detail = "; ".join(a.describe() for a in trace) or "no deployment was tried"
    message = f"No deployment of model '{route.name}' could serve the request ({detail})"
    if outcomes and outcomes <= {"timeout"}:
        return BackendTimeoutError(f"No deployment of model '{route.name}' answered within the time budget "
                                   f"({route.policy.total_timeout_s:g}s): {detail}", code="upstream_timeout")
    waits = [a.retry_after_s for a in trace if a.retry_after_s]
    if outcomes and outcomes <= {"rate_limited", "retry_after"}:
        wait = retry_after(min(waits) if waits else 1.0)
        return RateLimitedError(message, code="upstream_rate_limited", headers={"retry-after": str(wait)})
    if outcomes and outcomes <= {"breaker_open"}:
        wait = retry_after(min(d.breaker.retry_in_s() for d in route.deployments))
        return BackendUnavailableError(message, code="circuit_open", headers={"retry-after": str(wait)})
    if outcomes and outcomes <= {"not_found"}:
        return BackendUnavailableError(message, code="deployment_model_not_found")
    wait = retry_after(min(waits) if waits else 1.0)
    return BackendUnavailableError(message, code="upstream_unavailable", headers={"retry-after": str(wait)})
