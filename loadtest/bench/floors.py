"""Floors of the gateway's added latency at c=1: what a bare Python hop in front of Triton costs where it runs.

Two bare apps embed one text per request with the gateway's own Triton client (`gateway.backends.triton_http`:
KServe v2 HTTP, binary tensors, pooled keep-alive connections) and answer the OpenAI body (base64), with nothing
else — no validation, cache, auth, limits, metrics or coalescing:
- `fastapi`: one FastAPI route on uvicorn (uvloop, httptools), the stack the gateway is built on;
- `asgi`: the same on a bare ASGI callable, no framework; it also relays `/v2/...` to Triton as they come
  (body, content type and `Inference-Header-Content-Length` in, Triton's status, headers and body out): the floor
  of the gateway's `/v2` passthrough, which perf_analyzer measures.
`bench gateway` runs them (`python -m loadtest.bench.floors KIND TRITON_HTTP PORT`) in the same rounds as direct
Triton and the gateway, so the gateway's added latency reads against what its framework and Triton client cost by
themselves here.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response  # module level: FastAPI resolves the route's annotations here

LABELS = {"fastapi": "floor: bare FastAPI route + the gateway's Triton client",
          "asgi": "floor: bare ASGI app + the gateway's Triton client"}
MODEL = "minilm"

Asgi = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class Embedder:
    """One text → the OpenAI embeddings body, through Triton's HTTP port (client made on first use, in the loop)."""

    def __init__(self, http_url: str) -> None:
        self.http_url = http_url
        self.client: Any = None

    async def __call__(self, body: bytes) -> bytes:
        client = self._client()
        text = orjson.loads(body)["input"]
        outputs, _ = await client.infer(MODEL, "", {"text": np.array([[text.encode()]], dtype=np.object_)}, None)
        vector = base64.b64encode(outputs["embedding"].astype("<f4").tobytes()).decode()
        return orjson.dumps({"object": "list", "model": MODEL,
                             "data": [{"object": "embedding", "index": 0, "embedding": vector}]})


    def _client(self) -> Any:
        from gateway.backends.triton_http import TritonHttp, triton_http_session

        if self.client is None:
            self.client = TritonHttp(self.http_url, triton_http_session(256, 30.0), 30.0)
        return self.client

    async def relay(self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
                    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """`method path` to Triton with the body and its framing headers; (status, headers, body) of the answer."""
        client = self._client()
        sent = {k.decode(): v.decode() for k, v in headers if k in _RELAYED}
        async with client.session.request(method, client.base_url + path, data=body or None,
                                          headers=sent) as response:
            content = await response.read()
            kept = [(k.encode(), v.encode()) for k, v in response.headers.items()
                    if k.lower().encode() in _RELAYED_BACK]
            return response.status, kept, content


_RELAYED = (b"content-type", b"inference-header-content-length")
_RELAYED_BACK = (*_RELAYED, b"content-length")  # a length, not chunks, as Triton sends it


def fastapi_app(embed: Embedder) -> Asgi:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        return Response(await embed(await request.body()), media_type="application/json")

    return app


def asgi_app(embed: Embedder) -> Asgi:
    async def app(scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]
                  ) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"].startswith("/v2"):
            status, headers, out = await embed.relay(scope["method"], scope["path"], scope["headers"], body)
        else:
            status, headers = 200, [(b"content-type", b"application/json")]
            out = await embed(body) if scope["method"] == "POST" else b'{"status":"ok"}'
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    return app


def argv(kind: str, http_url: str, port: int) -> list[str]:
    """The command that serves floor `kind` on `port`, calling Triton at `http_url` (`host:port`)."""
    return [sys.executable, "-m", "loadtest.bench.floors", kind, http_url, str(port)]


def main() -> None:
    import uvicorn

    kind, http_url, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    app = {"fastapi": fastapi_app, "asgi": asgi_app}[kind](Embedder(http_url))
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning")


if __name__ == "__main__":
    main()
