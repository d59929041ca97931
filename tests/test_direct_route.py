"""`DirectRoute` (gateway/http/direct.py) and the per-request record (gateway/http/record.py), in process."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from starlette.responses import PlainTextResponse, Response

from gateway.http.direct import DirectRoute
from gateway.http.record import RequestRecord


@dataclass(frozen=True)
class Call:
    who: str


async def provide(request: Request) -> Call:
    return Call(request.headers.get("x-who", "nobody"))


async def override(request: Request) -> Call:
    return Call("override")


async def endpoint(call: Call = Depends(provide)) -> Response:
    """Echo who called."""
    return PlainTextResponse(call.who)


def _app() -> FastAPI:
    app = FastAPI()
    app.router.routes.append(DirectRoute("/echo", endpoint, methods=["POST"], openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}}))
    return app


async def test_serves_the_endpoint_with_its_one_dependency() -> None:
    app = _app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.post("/echo", headers={"x-who": "ann"})).text == "ann"
        assert (await client.get("/echo")).status_code == 405
        app.dependency_overrides[provide] = override
        assert (await client.post("/echo")).text == "override"


def test_is_documented_like_any_route() -> None:
    operation = _app().openapi()["paths"]["/echo"]["post"]
    assert operation["description"] == "Echo who called."
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {"type": "object"}
    assert "parameters" not in operation


async def _two(a: Call = Depends(provide), b: Call = Depends(provide)) -> Response:
    return Response()


async def _with_query(q: str, a: Call = Depends(provide)) -> Response:
    return Response()


async def _nested(call: Call = Depends(provide)) -> Call:
    return call


async def _deep(a: Call = Depends(_nested)) -> Response:
    return Response()


def _sync_provider(request: Request) -> Call:
    return Call("sync")


async def _sync(a: Call = Depends(_sync_provider)) -> Response:
    return Response()


@pytest.mark.parametrize("bad", [_two, _with_query, _deep, _sync])
def test_refuses_any_other_shape(bad) -> None:
    with pytest.raises(ValueError, match="DirectRoute"):
        DirectRoute("/bad", bad, methods=["POST"])


def test_record_lowers_the_remaining_tokens_header() -> None:
    record = RequestRecord("rid", limit_headers={"x-ratelimit-remaining-tokens": "100"})
    record.served("minilm", 0.01, tokens=30)
    assert (record.model, record.backend_s) == ("minilm", 0.01)
    assert record.limit_headers == {"x-ratelimit-remaining-tokens": "70"}
    unlimited = RequestRecord("rid")
    unlimited.served(None, None, tokens=5)
    assert unlimited.model == "" and unlimited.limit_headers is None
