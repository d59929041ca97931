"""Shared checks for hostile-input, fuzzing and security tests: the OpenAI error envelope, a full-stack gateway.

`envelope_problem` says what is wrong with an error response (None when it is a proper envelope);
`assert_envelope` asserts status and envelope; `assert_kserve_error` asserts status and the KServe v2 error shape
that every error under `/v2` has; `full_gateway` starts a gateway on the session's real Triton and
Redis with a chat route on a private fake LLM upstream (the only fake: the cloud provider).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from stack.redis import RedisServer
from stack.triton import TritonServer
from tests.fake_llm import FakeLLMServer
from tests.fixtures.gateway import GatewayKeys, RunningGateway, settings_for

ENVELOPE_KEYS = frozenset({"message", "type", "param", "code"})
UPSTREAM_KEY_ENV = "TRITONSTACK_TEST_HOSTILE_UPSTREAM_KEY"


def envelope_problem(status: int, content_type: str, body: bytes, *, kserve: bool = False) -> str | None:
    """What is wrong with an error response's body, or None when it has the expected shape.

    The expected shape is the OpenAI envelope, or with `kserve` (a response under `/v2`) KServe v2's
    `{"error": "<message>"}`, which `tritonclient` reads: one readable message, never a JSON document inside.
    """
    if not content_type.startswith("application/json"):
        return f"{status}: content-type {content_type!r} is not JSON"
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"{status}: body is not JSON: {body[:200]!r}"
    error = document.get("error") if isinstance(document, dict) else None
    if kserve:
        if not isinstance(error, str) or set(document) != {"error"} or not error or error.lstrip().startswith("{"):
            return f"{status}: not the KServe v2 error shape: {body[:300]!r}"
        return f"{status}: body carries a traceback" if b"Traceback" in body else None
    if not isinstance(error, dict) or set(document) != {"error"} or set(error) != ENVELOPE_KEYS:
        return f"{status}: not the OpenAI envelope: {body[:300]!r}"
    if not isinstance(error["message"], str) or not error["message"] or not isinstance(error["type"], str):
        return f"{status}: envelope without message/type: {body[:300]!r}"
    if b"Traceback" in body:
        return f"{status}: body carries a traceback"
    return None


def assert_envelope(resp: httpx.Response, status: int | tuple[int, ...], *, param: str | None = None,
                    code: str | None = None) -> dict[str, Any]:
    """Assert the status (one or any of several) and the envelope; returns the `error` object."""
    allowed = (status,) if isinstance(status, int) else status
    assert resp.status_code in allowed, f"{resp.status_code} not in {allowed}: {resp.text[:500]}"
    problem = envelope_problem(resp.status_code, resp.headers.get("content-type", ""), resp.content)
    assert problem is None, problem
    error = resp.json()["error"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def assert_kserve_error(resp: httpx.Response, status: int | tuple[int, ...]) -> str:
    """Assert the status (one or any of several) and KServe v2's `{"error": "<message>"}`; returns the message."""
    allowed = (status,) if isinstance(status, int) else status
    assert resp.status_code in allowed, f"{resp.status_code} not in {allowed}: {resp.text[:500]}"
    problem = envelope_problem(resp.status_code, resp.headers.get("content-type", ""), resp.content, kserve=True)
    assert problem is None, problem
    return resp.json()["error"]


def auth(key: str) -> dict[str, str]:
    """The Authorization header for `key`."""
    return {"Authorization": f"Bearer {key}"}


def full_gateway(
    start: Callable[[Any], RunningGateway], triton: TritonServer, redis: RedisServer, keys: GatewayKeys,
    upstream: FakeLLMServer, routes_dir: Path, **overrides: Any,
) -> RunningGateway:
    """A gateway on real Triton and Redis, chat model `chat` routed to `upstream`, jobs on a private queue.

    The upstream key is put in the environment (as a deployment's would be) under `UPSTREAM_KEY_ENV`;
    the private jobs queue keeps other tests' workers from picking up jobs created here.
    """
    key = os.environ.setdefault(UPSTREAM_KEY_ENV, f"sk-upstream-{secrets.token_hex(8)}")
    upstream.state.reset(api_key=key)
    routes = {
        "deployments": {"primary": {"kind": "openai", "base_url": upstream.url, "api_key_env": UPSTREAM_KEY_ENV,
                                    "model": "up-primary", "timeout_s": 5.0}},
        "routes": {"chat": {"deployments": ["primary"]}},
    }
    path = routes_dir / f"routes-{secrets.token_hex(4)}.yaml"
    path.write_text(yaml.safe_dump(routes), encoding="utf-8")
    values: dict[str, Any] = {
        "requests_per_minute": 1_000_000, "tokens_per_minute": 1_000_000_000, "routes_file": path,
        "jobs_queue_name": f"tritonstack:test-hostile:{secrets.token_hex(4)}", **overrides,
    }
    return start(settings_for(triton, redis, keys, **values))
