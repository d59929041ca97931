"""Chat accounting around each request: budget reservation before, and after it — settle, usage totals,
rate-limit token debit, cache store and the audit line. Post-request Redis work runs off the request path
(background tasks, or batched over a short interval for usage totals and token debits) so it neither delays the response
nor dies with a client that hung up (`drain()` finishes it at shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Coroutine
from typing import Any

from gateway.backends.chat import TokenUsage
from gateway.chat.audit import AuditLog
from gateway.chat.cache import CachedAnswer, ChatCache
from gateway.chat.context import ChatContext
from gateway.chat.metrics import ChatMetrics
from gateway.errors import RateLimitedError
from gateway.ratelimit.policy import TokenLedger
from gateway.routing.table import Deployment
from gateway.usage.budget import BudgetLedger, micro_usd
from gateway.usage.totals import UsageRecord, UsageTotals

log = logging.getLogger("gateway.chat")


class Accounting:
    """Budgets, usage, limiter debits, cache writes and audit for chat requests."""

    def __init__(self, *, metrics: ChatMetrics, budgets: BudgetLedger, usage: UsageTotals, audit: AuditLog,
                 cache: ChatCache | None = None, ledger: TokenLedger | None = None) -> None:
        self.metrics = metrics
        self.budgets = budgets
        self.usage = usage
        self.audit_log = audit
        self.cache = cache
        self.ledger = ledger
        self._background: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` in the background (kept referenced until done; failures logged)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("chat accounting task failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for background work, then flush the usage totals (call at shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        await self.usage.close()
        if self.ledger is not None:
            await self.ledger.close()

    # --- before ----------------------------------------------------------------------------

    def needs_budget(self, ctx: ChatContext) -> bool:
        """Whether the caller's key has a budget (then max tokens must be bounded)."""
        return self.budgets.budget_for(ctx.principal) is not None

    async def reserve(self, ctx: ChatContext) -> None:
        """Reserve the request's worst case against the key's budget (429 when it cannot)."""
        if not self.needs_budget(ctx):
            return
        max_tokens = ctx.max_tokens or 0
        usd = micro_usd(ctx.route.max_price(), ctx.prompt_estimate, max_tokens)
        try:
            ctx.reservation = await self.budgets.reserve(ctx.principal, usd, ctx.prompt_estimate + max_tokens)
        except RateLimitedError:
            self.metrics.budget_refusals.labels(ctx.key_name).inc()
            raise

    # --- after -----------------------------------------------------------------------------

    def served(self, ctx: ChatContext, deployment: Deployment, usage: TokenUsage, status: int | str = 200,
               error: str | None = None) -> int:
        """Account a call the upstream served (fully or, for a broken stream, partly); returns its micro-USD."""
        cost = micro_usd(deployment.price, usage.prompt_tokens, usage.completion_tokens)
        record = UsageRecord(ctx.key_name, ctx.request.model, usage.prompt_tokens, usage.completion_tokens, cost)
        self.usage.count(record)
        self.usage.add(record)
        if self.ledger is not None:
            self.ledger.add(ctx.principal, usage.total_tokens)
        if ctx.reservation is not None:
            self.spawn(self.budgets.settle(ctx.reservation, cost, usage.total_tokens))
        if self.audit_log.enabled:
            self.audit_log.write(ctx.audit(deployment.name, usage, cost, status, error))
        return cost

    def cached(self, ctx: ChatContext, answer: CachedAnswer) -> None:
        """Account a cache hit: no upstream call, nothing spent."""
        self.usage.add(UsageRecord(ctx.key_name, ctx.request.model, 0, 0, 0, cached=True))
        if self.audit_log.enabled:
            self.audit_log.write(ctx.audit(answer.deployment, TokenUsage(), 0, 200))

    def failed(self, ctx: ChatContext, status: int | str, error: str | None) -> None:
        """Account a request no upstream served: release its reservation, write the audit line."""
        if ctx.reservation is not None:
            self.spawn(self.budgets.settle(ctx.reservation, 0, 0))
        if self.audit_log.enabled:
            self.audit_log.write(ctx.audit(None, TokenUsage(), 0, status, error))

    def store(self, ctx: ChatContext, deployment: Deployment, answer: CachedAnswer) -> None:
        """Cache a complete answer of a deterministic request (unless `no-store`)."""
        key = ctx.cache_keys.get(deployment.name)
        if self.cache is None or key is None or not ctx.mode.store:
            return
        self.spawn(self.cache.put(key, answer, ctx.route.policy.cache_ttl_s))


def estimate_completion(text: str, bytes_per_token: float) -> int:
    """Completion tokens estimated from streamed text (when the upstream never reported usage)."""
    return math.ceil(len(text.encode("utf-8")) / bytes_per_token)
