"""The SLO gate: parse `p95_ms=…,p99_ms=…,fail_ratio=…,min_rps=…` and judge a run's summary against it.

Pure functions, no Locust import: `parse_slo` for the CLI string, `with_defaults` for the terms every gate has
(`fail_ratio=0` unless given), `evaluate` for a `RunSummary` (built from the summary JSON that the scenarios
write at exit), `Verdict.passed` for the exit code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# name -> (summary attribute, True when the observed value must stay at or below the limit)
KEYS: dict[str, tuple[str, bool]] = {
    "p50_ms": ("p50_ms", True),
    "p95_ms": ("p95_ms", True),
    "p99_ms": ("p99_ms", True),
    "fail_ratio": ("fail_ratio", True),
    "min_rps": ("rps", False),
    "min_requests": ("requests", False),
}


# terms every gate has unless the SLO string sets them: a failed request fails the run, as Locust's own exit code
DEFAULT_GATE: dict[str, float] = {"fail_ratio": 0.0}


class SloError(ValueError):
    """An SLO string that cannot be parsed."""


@dataclass(frozen=True)
class RunSummary:
    """What the gate judges: aggregate over real requests (custom TTFT/JOB metrics excluded)."""

    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    aborted: bool = False

    @property
    def fail_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSummary:
        """From the `summary.json` written by loadtest.common."""
        agg = data["aggregate"]
        return cls(
            requests=int(agg["requests"]),
            failures=int(agg["failures"]),
            rps=float(agg["rps"]),
            p50_ms=float(agg["p50_ms"]),
            p95_ms=float(agg["p95_ms"]),
            p99_ms=float(agg["p99_ms"]),
            aborted=bool(data.get("aborted", False)),
        )


def parse_slo(text: str) -> dict[str, float]:
    """`"p95_ms=200,fail_ratio=0.01"` → `{"p95_ms": 200.0, "fail_ratio": 0.01}`; empty text → no SLOs."""
    slo: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in KEYS:
            raise SloError(f"bad SLO term {part!r}; expected KEY=NUMBER with KEY one of {', '.join(KEYS)}")
        try:
            number = float(value)
        except ValueError as exc:
            raise SloError(f"bad number in SLO term {part!r}") from exc
        if number < 0 or (key == "fail_ratio" and number > 1):
            raise SloError(f"out-of-range SLO term {part!r}")
        slo[key] = number
    return slo


def with_defaults(slo: dict[str, float]) -> dict[str, float]:
    """`slo` plus each `DEFAULT_GATE` term it does not set (`fail_ratio=0`: no failed request allowed)."""
    return {**DEFAULT_GATE, **slo}


@dataclass(frozen=True)
class Check:
    """One SLO term against the observed value."""

    key: str
    limit: float
    observed: float
    passed: bool


@dataclass(frozen=True)
class Verdict:
    """All checks; the run passes when every check does and the run was not aborted."""

    checks: list[Check]
    aborted: bool = False
    reasons: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.aborted and all(c.passed for c in self.checks) and not self.reasons


def evaluate(summary: RunSummary, slo: dict[str, float]) -> Verdict:
    """Judge `summary` against `slo`; a run with no requests fails whatever the SLO."""
    checks = []
    for key, limit in slo.items():
        attr, upper = KEYS[key]
        observed = float(getattr(summary, attr))
        checks.append(Check(key, limit, observed, observed <= limit if upper else observed >= limit))
    reasons = [] if summary.requests else ["no requests completed"]
    if summary.aborted:
        reasons.append("aborted by the fail-ratio watchdog")
    return Verdict(checks, summary.aborted, reasons)
