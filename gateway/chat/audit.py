"""Audit log: one structured JSON line per chat request on the dedicated `gateway.chat.audit` logger.

Fields: `ts` (epoch seconds), `request_id`, `trace_id` (the W3C trace id when tracing is on, else null), `key` (API
key *name*, never the key), `model` (public name), `deployment` (who served; null when none did), `attempts` (every
deployment tried or passed over, with its outcome), `cache` (hit | miss | bypass | uncacheable), `stream`,
`prompt_tokens`, `completion_tokens`, `cost_usd`, `status` (HTTP status, or the stream's end state), `error` (error
code), `latency_ms`, `redactions` (PII values replaced, by kind). Prompt text appears only when the routes file sets
`audit.include_prompts: true`, and then as sent upstream (after redaction).

Route the logger wherever audit records belong (a file handler, a log shipper); it propagates to the root
logger unless configured otherwise.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

LOGGER_NAME = "gateway.chat.audit"


@dataclass(slots=True)
class AuditRecord:
    """Everything one audit line holds (see module docstring)."""

    request_id: str
    key: str
    model: str
    stream: bool
    deployment: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    cache: str = "uncacheable"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    status: int | str = 200
    error: str | None = None
    latency_ms: float = 0.0
    redactions: dict[str, int] = field(default_factory=dict)
    prompt: list[dict[str, Any]] | None = None
    trace_id: str | None = None


class AuditLog:
    """Writes `AuditRecord`s as JSON lines."""

    def __init__(self, include_prompts: bool = False, logger: logging.Logger | None = None) -> None:
        self.include_prompts = include_prompts
        self.logger = logger or logging.getLogger(LOGGER_NAME)

    @property
    def enabled(self) -> bool:
        """Whether audit lines are emitted (the logger is enabled for INFO); build records only then."""
        return self.logger.isEnabledFor(logging.INFO)

    def write(self, record: AuditRecord) -> None:
        """Log one line (INFO); prompts are dropped unless enabled."""
        data = asdict(record)
        data["ts"] = round(time.time(), 3)
        if not self.include_prompts or data["prompt"] is None:
            data.pop("prompt")
        self.logger.info(orjson.dumps(data).decode())
