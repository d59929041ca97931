"""Per-request state of a chat completion and the bodies built from it (upstream requests, client responses)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gateway.auth import Principal
from gateway.backends.chat import TokenUsage
from gateway.cache.control import CacheMode
from gateway.chat.audit import AuditRecord
from gateway.chat.pii import Redactor
from gateway.chat.protocol import ChatCompletionRequest
from gateway.chat.streaming import usage_dict
from gateway.routing.dispatch import Attempt
from gateway.routing.table import ChatRoute, Deployment
from gateway.tracing import current_trace_id
from gateway.usage.budget import Reservation

_PASSTHROUGH = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "logprobs",
                "top_logprobs")


@dataclass
class ChatContext:
    """Everything one request carries from validation to its audit line."""

    request: ChatCompletionRequest
    route: ChatRoute
    principal: Principal
    request_id: str
    mode: CacheMode
    max_tokens: int | None
    prompt_estimate: int
    started: float = field(default_factory=time.perf_counter)
    created: int = field(default_factory=lambda: int(time.time()))
    trace_id: str | None = field(default_factory=current_trace_id)  # the request's, for the audit line
    cache: str = "uncacheable"
    cache_keys: dict[str, str] = field(default_factory=dict)  # deployment name -> key
    reservation: Reservation | None = None
    trace: list[Attempt] = field(default_factory=list)
    redactor: Redactor | None = None
    _plain: list[dict[str, Any]] | None = None
    _redacted: list[dict[str, Any]] | None = None

    @property
    def completion_id(self) -> str:
        """The response's id."""
        return f"chatcmpl-{self.request_id}"

    @property
    def key_name(self) -> str:
        """The caller's key name (metrics, usage, audit)."""
        return self.principal.name

    def latency_ms(self) -> float:
        """Milliseconds since the request started."""
        return round((time.perf_counter() - self.started) * 1000, 3)

    # --- upstream bodies -----------------------------------------------------------------

    def _messages(self, redact: bool) -> list[dict[str, Any]]:
        if not redact:
            if self._plain is None:
                self._plain = [_message(m.role, m.text, m.name) for m in self.request.messages]
            return self._plain
        if self._redacted is None:
            self.redactor = Redactor()
            r = self.redactor
            self._redacted = [_message(m.role, r.redact(m.text), r.redact(m.name) if m.name else None)
                              for m in self.request.messages]
        return self._redacted

    def upstream_body(self, deployment: Deployment) -> dict[str, Any]:
        """The request as `deployment` receives it: its model name, PII redacted when the route says so."""
        redact = self.route.redacts(deployment)
        req = self.request
        body: dict[str, Any] = {"model": deployment.upstream_model, "messages": self._messages(redact)}
        for name in _PASSTHROUGH:
            value = getattr(req, name)
            if value is not None:
                body[name] = value
        if req.max_completion_tokens is not None:
            body["max_completion_tokens"] = req.max_completion_tokens
        elif self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if req.user is not None:
            body["user"] = self.redactor.redact(req.user) if redact and self.redactor else req.user
        if req.min_tokens and deployment.local:  # vLLM's extension: cloud APIs refuse fields they do not know
            body["min_tokens"] = req.min_tokens
        return body

    def sent_prompt(self) -> list[dict[str, Any]]:
        """The messages as sent upstream (redacted when any deployment needed it), for the audit log."""
        return self._redacted if self._redacted is not None else self._messages(False)

    # --- client bodies -------------------------------------------------------------------

    def completion(self, content: str, finish_reason: str | None, usage: TokenUsage,
                   logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        """The chat.completion response object (`logprobs`: the upstream's, when the request asked for them)."""
        return {
            "id": self.completion_id, "object": "chat.completion", "created": self.created,
            "model": self.request.model, "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                         "finish_reason": finish_reason,
                         "logprobs": logprobs if self.request.logprobs else None}],
            "usage": usage_dict(usage),
        }

    def audit(self, deployment: str | None, usage: TokenUsage, cost_micro: int, status: int | str,
              error: str | None = None) -> AuditRecord:
        """The audit record of this request's outcome."""
        return AuditRecord(
            request_id=self.request_id, trace_id=self.trace_id, key=self.key_name, model=self.request.model,
            stream=self.request.stream,
            deployment=deployment, cache=self.cache,
            attempts=[{"deployment": a.deployment, "outcome": a.outcome, "status": a.status} for a in self.trace],
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            cost_usd=cost_micro / 1_000_000, status=status, error=error, latency_ms=self.latency_ms(),
            redactions=dict(self.redactor.found) if self.redactor else {}, prompt=self.sent_prompt(),
        )


def _message(role: str, text: str, name: str | None) -> dict[str, Any]:
    return {"role": role, "content": text, "name": name} if name else {"role": role, "content": text}


def answer_of(payload: dict[str, Any]) -> tuple[str, str | None, dict[str, Any] | None]:
    """(text, finish reason, log-probabilities) of an upstream chat.completion."""
    choice = payload["choices"][0] if isinstance(payload["choices"][0], dict) else {}
    message = choice.get("message") or {}
    content, logprobs = message.get("content"), choice.get("logprobs")
    return ((content if isinstance(content, str) else ""), choice.get("finish_reason"),
            logprobs if isinstance(logprobs, dict) else None)
