"""The naive baseline: FastAPI + sentence-transformers `encode` per request, OpenAI-shaped `/v1/embeddings`.

This is the service a user would otherwise write in ten minutes: one uvicorn process, a sync endpoint (run in
FastAPI's thread pool), no batching across requests, no cache. Run it with
`python -m loadtest.baselines.naive_st --model DIR --port 8090` (DIR: a sentence-transformers model directory;
the default is the packaged all-MiniLM-L6-v2).
"""

from __future__ import annotations

import argparse
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from pydantic import BaseModel


class EmbeddingsRequest(BaseModel):
    """The subset of OpenAI's request the baseline understands."""

    input: str | list[str]
    model: str = "minilm"
    encoding_format: Literal["float", "base64"] = "float"


def _item(i: int, vector: np.ndarray, encoding: str) -> dict[str, Any]:
    value: Any = (
        base64.b64encode(vector.astype("<f4").tobytes()).decode() if encoding == "base64" else vector.tolist()
    )
    return {"object": "embedding", "index": i, "embedding": value}


def create_app(model_dir: Path) -> FastAPI:
    """The app; the model is loaded at startup (lifespan), not at import."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from sentence_transformers import SentenceTransformer

        app.state.model = SentenceTransformer(str(model_dir), device="cpu")
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/embeddings")
    def embeddings(body: EmbeddingsRequest, request: Request) -> dict[str, Any]:
        model = request.app.state.model
        texts = [body.input] if isinstance(body.input, str) else body.input
        vectors = model.encode(texts, normalize_embeddings=True)
        tokens = sum(len(ids) for ids in model.tokenizer(texts)["input_ids"])
        return {
            "object": "list",
            "data": [_item(i, v, body.encoding_format) for i, v in enumerate(vectors)],
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return app


def main(argv: list[str] | None = None) -> None:
    """Serve the baseline with uvicorn until interrupted."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="sentence-transformers model directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    if args.model is None:
        from export.encoder.minilm import model_dir

        args.model = model_dir()
    uvicorn.run(create_app(args.model), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
