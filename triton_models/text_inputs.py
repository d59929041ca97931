"""Texts and (query, document) pairs in, token ids out: shared by `sequence_classification.py` and
`tokenizer.py`; the export copies this file next to their `model.py`.

A request carries either `text` (TYPE_STRING [1] per batch item) or `query` and `document` (TYPE_STRING [1] each,
the same number of items). A request that cannot be read (a missing input, bytes that are not UTF-8, unequal item
counts) gets its own error response; its batch-mates are answered normally.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from model_support import gather, request_texts
from tokenizers import Encoding, Tokenizer

Item = str | tuple[str, str]


def load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    """`tokenizer.json` truncating at `max_length` (pairs: the longer side first), no padding (batches are padded to
    their longest item)."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
    tokenizer.no_padding()
    return tokenizer


def _items(request, pairs: bool, prefix: str) -> list[Item]:
    if not pairs:
        return [prefix + text for text in request_texts(request, "text")]
    queries = request_texts(request, "query")
    documents = request_texts(request, "document")
    if len(queries) != len(documents):
        raise ValueError(f"inputs 'query' and 'document' must hold as many items ({len(queries)} vs {len(documents)})")
    return list(zip(queries, documents, strict=True))


def gather_items(requests: list, responses: list, *, pairs: bool,
                 prefix: str = "") -> tuple[list[Item], list[tuple[int, int, int]]]:
    """Every request's texts (or pairs) in one list, and (request index, start, end) spans into it; a request that
    cannot be read gets its error response in `responses` and no span. `prefix` is prepended to every text."""
    return gather(requests, responses, lambda request: _items(request, pairs, prefix))


def pad(encodings: Sequence[Encoding], width: int, dtype: np.dtype) -> dict[str, np.ndarray]:
    """Right-padded `input_ids`, `attention_mask` and `token_type_ids` (padding 0: the exported graphs replace padded
    ids by the model's own pad id)."""
    ids = np.zeros((len(encodings), width), dtype=dtype)
    mask = np.zeros((len(encodings), width), dtype=dtype)
    types = np.zeros((len(encodings), width), dtype=dtype)
    for row, encoding in enumerate(encodings):
        n = len(encoding.ids)
        ids[row, :n] = encoding.ids
        mask[row, :n] = 1
        types[row, :n] = encoding.type_ids
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
