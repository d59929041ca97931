"""Split documents into overlapping chunks that fit the embedding model's window.

Policy: with the model's tokenizer (`<repository>/<model>/<version>/tokenizer.json`, written by the export),
a document is tokenized without special tokens; windows of `max_tokens` tokens advance by
`max_tokens - overlap`; a chunk's span is the character range from its first token's start to its last
token's end. A document that fits one window is one chunk spanning the whole text (byte-for-byte what the
synchronous endpoint would embed). Without a reachable tokenizer file the same windows are taken over
characters, at 4 characters per token (`max_tokens * 4` characters, `overlap * 4` overlap).
Chunking is deterministic, so a retried job plans the same chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger("jobs.chunking")

CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk: which document (index into the input), its index there, and its character span."""

    document: int
    index: int
    start: int
    end: int


class Chunker(Protocol):
    """Maps texts to chunk spans."""

    name: str

    def chunks(self, texts: Sequence[str], max_tokens: int, overlap: int) -> list[Chunk]:
        """Every chunk of every text, in document order."""
        ...


def windows(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """[first, last) unit ranges of `size` advancing by `size - overlap`, the last one reaching `n`."""
    if n <= size:
        return [(0, n)]
    stride = max(size - overlap, 1)
    out, first = [], 0
    while True:
        last = min(first + size, n)
        out.append((first, last))
        if last >= n:
            return out
        first += stride


class CharChunker:
    """Character windows (no tokenizer reachable)."""

    name = "chars"

    def chunks(self, texts: Sequence[str], max_tokens: int, overlap: int) -> list[Chunk]:
        """Windows of `max_tokens * 4` characters."""
        size, over = max_tokens * CHARS_PER_TOKEN, overlap * CHARS_PER_TOKEN
        return [Chunk(d, i, first, last)
                for d, text in enumerate(texts)
                for i, (first, last) in enumerate(windows(len(text), size, over))]


class TokenChunker:
    """Token windows with the model's own tokenizer (`tokenizers`, fast and thread-parallel)."""

    name = "tokens"

    def __init__(self, tokenizer_file: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    def chunks(self, texts: Sequence[str], max_tokens: int, overlap: int) -> list[Chunk]:
        """Windows of `max_tokens` tokens (special tokens excluded)."""
        out: list[Chunk] = []
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        for d, (text, encoding) in enumerate(zip(texts, encodings, strict=True)):
            offsets = encoding.offsets
            if len(offsets) <= max_tokens:
                out.append(Chunk(d, 0, 0, len(text)))
                continue
            for i, (first, last) in enumerate(windows(len(offsets), max_tokens, overlap)):
                out.append(Chunk(d, i, offsets[first][0], offsets[last - 1][1]))
        return out


class ChunkerCache:
    """One chunker per (model, version): the tokenizer from the repository, else character windows."""

    def __init__(self, repository: Path | None) -> None:
        self._repository = repository
        self._chunkers: dict[tuple[str, str], Chunker] = {}

    def get(self, model: str, version: str) -> Chunker:
        """The chunker for a served model version."""
        key = (model, version)
        if key not in self._chunkers:
            self._chunkers[key] = self._load(model, version)
        return self._chunkers[key]

    def _load(self, model: str, version: str) -> Chunker:
        path = self._repository / model / version / "tokenizer.json" if self._repository else None
        if path is not None and path.is_file():
            return TokenChunker(path)
        log.warning("no tokenizer at %s: chunking %s by character windows (%d chars per token)",
                    path, model, CHARS_PER_TOKEN)
        return CharChunker()
