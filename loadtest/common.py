"""Shared Locust plumbing for the scenarios: options, auth headers, texts, the watchdog and the run summary.

Importing this module registers Locust event listeners (command-line options, the fail-ratio watchdog, the
summary writer); it does no I/O. Every option can also be set through its `LOCUST_*` environment variable.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import uuid
from pathlib import Path
from typing import Any

import gevent
from locust import events
from locust.env import Environment
from locust.stats import StatsEntry

log = logging.getLogger("loadtest")

# request types fired as custom metrics; kept out of the aggregate that the SLO gate judges
CUSTOM_TYPES = frozenset({"TTFT", "JOB"})
WATCHDOG_EXIT_CODE = 3
# how tasks report a refusal by the gateway's per-key (or, without auth, per-IP) rate limit
KEY_RATE_LIMITED = "HTTP 429 rate_limit_exceeded"
WORDS = ("model", "serving", "batch", "latency", "vector", "token", "gateway", "queue", "cache", "triton")


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    group = parser.add_argument_group("tritonstack")
    group.add_argument("--api-key", env_var="LOCUST_API_KEY", default="", help="Bearer token for the gateway")
    group.add_argument("--embedding-model", env_var="LOCUST_EMBEDDING_MODEL", default="minilm")
    group.add_argument("--embedding-dim", env_var="LOCUST_EMBEDDING_DIM", type=int, default=384)
    group.add_argument("--chat-model", env_var="LOCUST_CHAT_MODEL", default="smollm2")
    group.add_argument("--max-tokens", env_var="LOCUST_MAX_TOKENS", type=int, default=16)
    group.add_argument("--hot-set", env_var="LOCUST_HOT_SET", type=int, default=200, help="hot-set size")
    group.add_argument("--zipf-s", env_var="LOCUST_ZIPF_S", type=float, default=1.1, help="Zipf exponent")
    group.add_argument("--mix-chat", env_var="LOCUST_MIX_CHAT", type=int, default=1,
                       help="mix scenario: 0 replaces chat by embeddings")
    group.add_argument("--job-timeout", env_var="LOCUST_JOB_TIMEOUT", type=float, default=60.0)
    group.add_argument("--abort-fail-ratio", env_var="LOCUST_ABORT_FAIL_RATIO", type=float, default=0.5,
                       help="watchdog: stop the run when the failure ratio exceeds this (0 disables)")
    group.add_argument("--abort-min-requests", env_var="LOCUST_ABORT_MIN_REQUESTS", type=int, default=50)
    group.add_argument("--summary-json", env_var="LOCUST_SUMMARY_JSON", default="",
                       help="write the run summary (SLO inputs) to this JSON file at exit")
    group.add_argument("--shape", env_var="LOCUST_SHAPE", default="soak", choices=["step", "spike", "soak"],
                       help="used when loadtest/shapes.py is among the locustfiles")
    group.add_argument("--shape-steps", env_var="LOCUST_SHAPE_STEPS", type=int, default=4)
    group.add_argument("--shape-base", env_var="LOCUST_SHAPE_BASE", type=float, default=0.2,
                       help="spike: base load as a fraction of --users")


def option(env: Environment, name: str) -> Any:
    """A parsed option, or its default when Locust runs as a library without our parser."""
    return getattr(env.parsed_options, name, None) if env.parsed_options else None


def headers(env: Environment) -> dict[str, str]:
    """JSON content type and the bearer token."""
    key = option(env, "api_key") or ""
    base = {"Content-Type": "application/json"}
    return {**base, "Authorization": f"Bearer {key}"} if key else base


_counter = itertools.count()
_run_tag = uuid.uuid4().hex[:8]


def unique_sentence() -> str:
    """A sentence no other request of any run sent (cache-cold)."""
    i = next(_counter)
    return f"request {i} of run {_run_tag} asks about {WORDS[i % 10]} and {WORDS[(i * 7) % 10]} in a short sentence"


def hot_sentence(rank: int) -> str:
    """The sentence of popularity rank `rank` (stable across runs, so the cache stays warm)."""
    return f"popular question number {rank} about {WORDS[rank % 10]} and {WORDS[(rank * 3) % 10]}"


def zipf_rank(size: int, s: float, rng: random.Random = random.Random()) -> int:
    """A rank in [0, size) with Zipf-like popularity P(k) ∝ 1 / (k+1)^s."""
    weights = _zipf_weights(size, s)
    return rng.choices(range(size), cum_weights=weights)[0]


_weights_cache: dict[tuple[int, float], list[float]] = {}


def _zipf_weights(size: int, s: float) -> list[float]:
    key = (size, s)
    if key not in _weights_cache:
        _weights_cache[key] = list(itertools.accumulate(1.0 / (k + 1) ** s for k in range(size)))
    return _weights_cache[key]


def _watch(env: Environment, limit: float, min_requests: int) -> None:
    """Stop the runner when the failure ratio is clearly broken (checked every second)."""
    while True:
        gevent.sleep(1.0)
        total = env.stats.total
        if total.num_requests >= min_requests and total.fail_ratio > limit:
            log.error("watchdog: failure ratio %.0f%% > %.0f%% after %d requests; aborting the run",
                      100 * total.fail_ratio, 100 * limit, total.num_requests)
            env.process_exit_code = WATCHDOG_EXIT_CODE
            env.stats.aborted = True  # type: ignore[attr-defined]
            if env.runner is not None:
                env.runner.quit()
            return


@events.test_start.add_listener
def _start_watchdog(environment: Environment, **_: Any) -> None:
    limit = option(environment, "abort_fail_ratio") or 0.0
    if limit > 0:
        gevent.spawn(_watch, environment, limit, option(environment, "abort_min_requests") or 50)


def _entry_summary(entry: StatsEntry) -> dict[str, Any]:
    return {
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "rps": entry.total_rps,
        "p50_ms": entry.get_response_time_percentile(0.50) if entry.num_requests else 0.0,
        "p95_ms": entry.get_response_time_percentile(0.95) if entry.num_requests else 0.0,
        "p99_ms": entry.get_response_time_percentile(0.99) if entry.num_requests else 0.0,
    }


def summarize(env: Environment) -> dict[str, Any]:
    """Aggregate of real requests (custom metrics excluded), each custom metric apart, the top errors and how
    many real requests the gateway's rate limit refused."""
    stats = env.stats
    real = StatsEntry(stats, "Aggregated", "", use_response_times_cache=False)
    custom: dict[str, StatsEntry] = {}
    for entry in stats.entries.values():
        if entry.method in CUSTOM_TYPES:
            custom.setdefault(entry.method, StatsEntry(stats, entry.method, "", use_response_times_cache=False))
            custom[entry.method].extend(entry)
        else:
            real.extend(entry)
    return {
        "aggregate": _entry_summary(real),
        "custom": {name: _entry_summary(e) for name, e in custom.items()},
        "aborted": bool(getattr(stats, "aborted", False)),
        "rate_limited": sum(e.occurrences for e in stats.errors.values()
                            if e.method not in CUSTOM_TYPES and str(e.error) == KEY_RATE_LIMITED),
        "errors": [{"name": e.name, "error": str(e.error), "count": e.occurrences} for e in stats.errors.values()][:20],
    }


@events.quitting.add_listener
def _write_summary(environment: Environment, **_: Any) -> None:
    path = option(environment, "summary_json")
    if path:
        Path(path).write_text(json.dumps(summarize(environment), indent=2))
