"""One error → status table for the whole gateway, and the two shapes its refusals take.

Every refusal, whatever raised it, leaves with its status from `ERROR_TABLE` and its own headers (`retry-after`,
a rate-limit refusal's `x-ratelimit-*`, `x-should-retry`, `www-authenticate`; the request context adds
`x-request-id` and an admitted request's `x-ratelimit-*`). Its body is chosen by the request path in one place,
`error_response`: under `/v2` (the KServe v2 passthrough) it is KServe v2's `{"error": "<message>"}`, the shape
`tritonclient` parses; everywhere else it is the OpenAI envelope `{"error": {"message", "type", "param", "code"}}`.
Services raise the typed errors below; FastAPI's validation errors become 400 with `param` set to the field path
(never 422); unknown routes and methods become 404/405; anything unexpected becomes a 500 without a stack trace (see
`gateway.middleware`). The exception handlers and the middleware that refuse requests themselves
(`gateway.admission`, `gateway.middleware`) all answer through `error_response`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger("gateway.errors")

M = TypeVar("M", bound=BaseModel)


class GatewayError(Exception):
    """Base of every error the gateway answers with; status and type come from `ERROR_TABLE`."""

    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = dict(headers or {})


class InvalidRequestError(GatewayError):
    """The request is malformed or asks for something unsupported (400)."""


class AuthenticationError(GatewayError):
    """Missing or unknown API key (401)."""

    default_code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    """The key is valid but lacks the scope for this route (403)."""

    default_code = "insufficient_scope"


class NotFoundError(GatewayError):
    """Unknown route, model or resource (404)."""


class MethodNotAllowedError(GatewayError):
    """The route exists, not with this method (405)."""


class ConflictError(GatewayError):
    """The request conflicts with the resource's state (409), e.g. an Idempotency-Key reused for another body."""

    default_code = "conflict"


class PayloadTooLargeError(GatewayError):
    """The request body exceeds the configured limit (413)."""

    default_code = "payload_too_large"


class UnsupportedMediaTypeError(GatewayError):
    """The request body's declared media type is not one the route reads (415), e.g. text/plain or a form."""

    default_code = "unsupported_media_type"


class RateLimitedError(GatewayError):
    """A rate limit or quota refused the request (429); `quota=True` tells SDKs not to retry."""

    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, quota: bool = False, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        if quota:
            self.headers["x-should-retry"] = "false"


class OverloadedError(GatewayError):
    """This gateway process is at its in-flight bound (503, retry-after)."""

    default_code = "overloaded"


class BackendUnavailableError(GatewayError):
    """Triton is unreachable or its queue is full (503, retry-after)."""

    default_code = "backend_unavailable"


class BackendTimeoutError(GatewayError):
    """Triton did not answer within the deadline (504)."""

    default_code = "backend_timeout"


class InternalError(GatewayError):
    """Anything unexpected (500); the message never carries internals."""

    default_code = "internal_error"


@dataclass(frozen=True)
class ErrorKind:
    """Status, OpenAI-style error type and default `retry-after` (seconds) of one error class."""

    status: int
    type: str
    retry_after_s: int | None = None


ERROR_TABLE: dict[type[GatewayError], ErrorKind] = {
    InvalidRequestError: ErrorKind(400, "invalid_request_error"),
    AuthenticationError: ErrorKind(401, "authentication_error"),
    PermissionDeniedError: ErrorKind(403, "permission_error"),
    NotFoundError: ErrorKind(404, "not_found_error"),
    MethodNotAllowedError: ErrorKind(405, "invalid_request_error"),
    ConflictError: ErrorKind(409, "conflict_error"),
    PayloadTooLargeError: ErrorKind(413, "invalid_request_error"),
    UnsupportedMediaTypeError: ErrorKind(415, "invalid_request_error"),
    RateLimitedError: ErrorKind(429, "rate_limit_error"),
    InternalError: ErrorKind(500, "server_error"),
    OverloadedError: ErrorKind(503, "overloaded_error", retry_after_s=1),
    BackendUnavailableError: ErrorKind(503, "service_unavailable_error", retry_after_s=1),
    BackendTimeoutError: ErrorKind(504, "timeout_error"),
}

# status codes that Starlette/FastAPI raise as HTTPException, mapped onto our classes
_BY_STATUS: dict[int, type[GatewayError]] = {kind.status: cls for cls, kind in reversed(ERROR_TABLE.items())}


def error_kind(error: GatewayError) -> ErrorKind:
    """The table entry for `error`'s class (the nearest listed base class)."""
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]  # type: ignore[index]
    return ERROR_TABLE[InternalError]


KSERVE_PREFIX = "/v2"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    """The serialized OpenAI envelope."""
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def kserve_error_body(message: str) -> bytes:
    """The serialized KServe v2 error, `{"error": "<message>"}`."""
    return orjson.dumps({"error": message})


def is_kserve_path(path: str) -> bool:
    """True for `/v2` and paths below it, whose errors take the KServe v2 shape."""
    return path == KSERVE_PREFIX or path.startswith(KSERVE_PREFIX + "/")


def error_response(error: GatewayError, *, path: str) -> Response:
    """The HTTP response for `error` on a request to `path` (the ASGI scope's `path`): table status, the error's
    headers plus a default retry-after, and the body shape of that path (`is_kserve_path`)."""
    kind = error_kind(error)
    headers = dict(error.headers)
    if kind.retry_after_s is not None:
        headers.setdefault("retry-after", str(kind.retry_after_s))
    if is_kserve_path(path):
        body = kserve_error_body(error.message)
    else:
        body = error_body(error.message, kind.type, error.param, error.code)
    return Response(body, status_code=kind.status, headers=headers, media_type="application/json")


def _param_from_loc(loc: Sequence[int | str]) -> str | None:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:]
    return ".".join(parts) or None


def validation_error(errors: Sequence[Mapping[str, Any]]) -> InvalidRequestError:
    """A pydantic/FastAPI error list → one InvalidRequestError naming the first bad field."""
    if not errors:
        return InvalidRequestError("invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return InvalidRequestError("request body is not valid JSON", code="invalid_json")
    loc = tuple(first.get("loc", ()))
    param = _param_from_loc(loc)
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        message = f"missing required parameter: {param}" if param else "missing request body"
    elif param:
        message = f"{message} (param: {param})"
    return InvalidRequestError(message, param=param, code=str(first.get("type", "invalid_value")))


def parse_body(model: type[M], raw: bytes) -> M:
    """Validate a JSON body straight from bytes (pydantic-core's parser); InvalidRequestError on failure."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        # located in the body, as FastAPI's errors are: a field called `query` or `path` keeps its name in `param`
        errors = [{**error, "loc": ("body", *error.get("loc", ()))} for error in exc.errors(include_url=False)]
        raise validation_error(errors) from None


def from_http_exception(exc: StarletteHTTPException) -> GatewayError:
    """Starlette's HTTPException (unknown route, wrong method, body limit) → our typed error."""
    cls = _BY_STATUS.get(exc.status_code, InternalError if exc.status_code >= 500 else InvalidRequestError)
    detail = exc.detail if isinstance(exc.detail, str) else "request refused"
    if exc.status_code == 404 and detail == "Not Found":
        detail = "no such route"
    error = cls(detail)
    error.headers.update(exc.headers or {})
    return error


async def _gateway_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc, path=request.scope["path"])


async def _validation_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(validation_error(exc.errors()), path=request.scope["path"])


async def _http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(from_http_exception(exc), path=request.scope["path"])


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every raised error into its path's error shape (`error_response`)."""
    app.add_exception_handler(GatewayError, _gateway_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
