"""Fast response encoding for embeddings: orjson for floats, one base64 pass for the whole matrix."""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np

EncodingFormat = Literal["float", "base64"]


def base64_rows(vectors: np.ndarray) -> list[str]:
    """Base64 of each row's little-endian float32 bytes.

    When a row is a multiple of 3 bytes long (dimension divisible by 3, e.g. 384), the base64 of the whole
    matrix splits exactly at row boundaries, so one encode call serves every row.
    """
    matrix = np.ascontiguousarray(vectors, dtype="<f4")
    n = matrix.shape[0]
    row_bytes = matrix.shape[1] * 4 if matrix.ndim == 2 else 0
    if n == 0:
        return []
    if row_bytes % 3 == 0:
        text = base64.b64encode(matrix.tobytes()).decode("ascii")
        width = row_bytes // 3 * 4
        return [text[i * width : (i + 1) * width] for i in range(n)]
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in matrix]


def embedding_payload(
    model: str, vectors: np.ndarray, encoding_format: EncodingFormat, prompt_tokens: int
) -> dict[str, Any]:
    """The OpenAI response object; float rows stay numpy arrays (orjson serializes them natively)."""
    if encoding_format == "base64":
        rows: list[Any] = base64_rows(vectors)
    else:
        rows = list(np.ascontiguousarray(vectors, dtype=np.float32))
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
