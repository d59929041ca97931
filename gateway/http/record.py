"""What one request learned on its way that the request context reports: one typed record per request.

`RequestContextMiddleware` creates the record and puts it in the ASGI scope under `RECORD_KEY` (the only place
that does); the dependencies and routes fill it in through `record_of(request)`, and the middleware reads it when
the response starts (the rate-limit headers) and when the request ends (the metrics labels).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from gateway.ratelimit.policy import spend_tokens

RECORD_KEY = "tritonstack.request"


@dataclass(slots=True)
class RequestRecord:
    """Per-request facts: the request id, the model label, backend time and an admitted request's limit headers."""

    request_id: str
    model: str = ""  # metrics label: set only once the model is known to exist (bounded cardinality)
    backend_s: float | None = None  # seconds spent waiting on the backend (the overhead histogram subtracts it)
    limit_headers: dict[str, str] | None = None  # `x-ratelimit-*`, added to whatever response leaves, errors too

    def served(self, model: str | None, backend_s: float | None, tokens: int = 0) -> None:
        """Record what the backend did for this request; `tokens` lowers the remaining-tokens header."""
        if model is not None:
            self.model = model
        self.backend_s = backend_s
        if tokens and self.limit_headers is not None:
            spend_tokens(self.limit_headers, tokens)


def record_of(connection: HTTPConnection) -> RequestRecord:
    """The record `RequestContextMiddleware` created for this request."""
    return connection.scope[RECORD_KEY]
