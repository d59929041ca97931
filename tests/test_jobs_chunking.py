"""Chunking policy of embeddings jobs (pure functions; the packaged MiniLM tokenizer)."""

from __future__ import annotations

import itertools
from pathlib import Path

from jobs.chunking import CharChunker, ChunkerCache, TokenChunker, windows


def test_windows_overlap_and_reach_the_end() -> None:
    assert windows(5, 8, 2) == [(0, 5)]
    assert windows(20, 8, 2) == [(0, 8), (6, 14), (12, 20)]
    assert windows(14, 8, 2) == [(0, 8), (6, 14)]
    for n, size, overlap in itertools.product((1, 7, 8, 9, 100), (8, 16), (0, 3, 7)):
        spans = windows(n, size, overlap)
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(last - first <= size for first, last in spans)
        assert all(b[0] == a[1] - overlap for a, b in itertools.pairwise(spans))


def test_token_chunks_span_the_text_with_overlapping_windows(minilm_source: Path) -> None:
    chunker = TokenChunker(minilm_source / "tokenizer.json")
    long_text = " ".join(f"word{i} and more" for i in range(200))
    chunks = chunker.chunks(["fits in one window", long_text], max_tokens=64, overlap=8)
    assert chunks[0].document == 0 and (chunks[0].start, chunks[0].end) == (0, len("fits in one window"))
    parts = [c for c in chunks if c.document == 1]
    assert [c.index for c in parts] == list(range(len(parts))) and len(parts) > 3
    assert parts[0].start == 0 and parts[-1].end == len(long_text)
    assert all(a.start < b.start < a.end for a, b in itertools.pairwise(parts))
    assert chunker.chunks(["fits in one window", long_text], 64, 8) == chunks  # deterministic


def test_without_a_tokenizer_file_chunks_are_character_windows(tmp_path: Path) -> None:
    chunker = ChunkerCache(tmp_path).get("minilm", "1")
    assert isinstance(chunker, CharChunker)
    chunks = chunker.chunks(["x" * 100], max_tokens=10, overlap=2)  # 40 characters, 8 overlapping
    assert [(c.start, c.end) for c in chunks] == [(0, 40), (32, 72), (64, 100)]
