"""The decoder with a KV cache on ONNX Runtime, and the left-padded KV cache of a running batch.

Shared by the export's parity check (`export.generation_parity`) and the served generation model
(`generation.py`, copied next to this file into the version directory), so parity covers the serving code.

A running batch keeps every row right-aligned: row r's tokens occupy the last columns of the cache and the columns
before are padding (mask 0). Rows prefilled together may also hold masked padding between a reused prefix and the
rest of the prompt (`Decoder.prefill_many`); a masked column is ignored wherever it is. A decode step appends one
column for all rows; a new row joins by padding either side on the left to the wider width; rows that leave are
dropped and the columns that became padding for every remaining row are trimmed. Position ids come from the mask
inside the graph, so padding never shifts a row's positions.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort


@dataclass(frozen=True)
class ModelInfo:
    """Geometry and token facts from `generation.json` (written by the export)."""

    layers: int
    kv_heads: int
    head_dim: int
    vocab: int
    eos_token_ids: tuple[int, ...]
    defaults: dict

    @classmethod
    def load(cls, path: Path) -> ModelInfo:
        data = json.loads(path.read_text(encoding="utf-8"))
        keys = ("temperature", "top_p", "max_tokens", "max_context")
        return cls(
            layers=int(data["layers"]),
            kv_heads=int(data["kv_heads"]),
            head_dim=int(data["head_dim"]),
            vocab=int(data["vocab"]),
            eos_token_ids=tuple(int(i) for i in data["eos_token_ids"]),
            defaults={k: data[k] for k in keys if k in data},
        )

    @property
    def bytes_per_token(self) -> int:
        """fp32 keys + values of one token over all layers."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 4


def _session(onnx_path: Path, intra_op_threads: int, inter_op_threads: int,
             allow_spinning: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


class Decoder:
    """ONNX Runtime sessions of the exported decoder step.

    With `single_row_path`, a second graph of the same decoder (the GGUF's 4-bit blocks, `export.repack`) runs the
    steps that compute one token of one row: there the step is bound by reading the weights, which the 4-bit
    blocks make 5× smaller; every wider step (prefill, batched decode) runs the fp32 graph, whose GEMMs are faster
    once there are several rows. Both graphs take and return the same cache, so a batch moves between them freely.
    """

    def __init__(self, onnx_path: Path, info: ModelInfo, *, intra_op_threads: int = 0, inter_op_threads: int = 1,
                 single_row_path: Path | None = None, allow_spinning: bool = False):
        self.session = _session(onnx_path, intra_op_threads, inter_op_threads, allow_spinning)
        self.single_row = (_session(single_row_path, intra_op_threads, inter_op_threads, allow_spinning)
                           if single_row_path is not None else None)
        self.info = info
        self.past_names = [f"past.{i}.{k}" for i in range(info.layers) for k in ("key", "value")]
        self.output_names = ["logits"] + [f"present.{i}.{k}" for i in range(info.layers) for k in ("key", "value")]

    def empty_cache(self, batch: int) -> list[np.ndarray]:
        """A zero-length cache for `batch` rows."""
        shape = (batch, self.info.kv_heads, 0, self.info.head_dim)
        return [np.zeros(shape, dtype=np.float32) for _ in self.past_names]

    def run(
        self, input_ids: np.ndarray, mask: np.ndarray, cache: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One step: ids [B, S], mask [B, past + S], cache → (last-position logits [B, V], present cache)."""
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        feeds.update(zip(self.past_names, cache, strict=True))
        session = self.single_row if self.single_row is not None and input_ids.size == 1 else self.session
        outputs = session.run(self.output_names, feeds)
        return outputs[0], outputs[1:]

    def prefill(self, token_ids: Sequence[int], prefixes: PrefixCache | None = None) -> tuple[np.ndarray, KVBatch]:
        """Run a prompt as one row: (logits [V], the row's cache).

        With `prefixes`, the longest cached prefix of the prompt is reused and only the rest is computed; the
        prompt's cache is then stored for later prompts that start the same way (system prompt, earlier turns).
        """
        ids = np.asarray(token_ids, dtype=np.int64).reshape(1, -1)
        mask = np.ones_like(ids)
        reused, past = prefixes.lookup(token_ids) if prefixes is not None else (0, None)
        if past is None:
            logits, cache = self.run(ids, mask, self.empty_cache(1))
        else:
            logits, cache = self.run(ids[:, reused:], mask, past)
        row = KVBatch(mask, cache)
        if prefixes is not None:
            prefixes.store(token_ids, row)
        return logits[0], row

    def prefill_many(self, prompts: Sequence[Sequence[int]], prefixes: PrefixCache | None = None
                     ) -> tuple[np.ndarray, KVBatch]:
        """Prompts that arrive together, in one forward pass: (logits [k, V], their rows as one batch).

        Each row reuses its own longest cached prefix (`prefill`); rows are aligned so that every reused prefix ends
        at the same column and every prompt at the last one, with masked padding before each part (positions come
        from the mask, so a row's tokens keep theirs). One prompt is exactly `prefill`. Every prompt's cache is then
        stored for later prompts."""
        if len(prompts) == 1:
            logits, row = self.prefill(prompts[0], prefixes)
            return logits[None, :], row
        found = [prefixes.lookup(p) if prefixes is not None else (0, None) for p in prompts]
        reused = max(n for n, _ in found)
        width = max(len(p) - n for p, (n, _) in zip(prompts, found, strict=True))
        ids = np.zeros((len(prompts), width), dtype=np.int64)
        mask = np.zeros((len(prompts), reused + width), dtype=np.int64)
        shape = (len(prompts), self.info.kv_heads, reused, self.info.head_dim)
        cache = [np.zeros(shape, dtype=np.float32) for _ in self.past_names]
        for i, (prompt, (n, past)) in enumerate(zip(prompts, found, strict=True)):
            rest = len(prompt) - n
            ids[i, width - rest :] = prompt[n:]
            mask[i, reused - n : reused] = 1
            mask[i, reused + width - rest :] = 1
            for tensor, part in zip(cache, past or (), strict=False):
                tensor[i, :, reused - n :] = part[0]
        logits, present = self.run(ids, mask, cache)
        batch = KVBatch(mask, present)
        if prefixes is not None:
            for i, prompt in enumerate(prompts):
                prefixes.store(prompt, batch.row(i))
        return logits, batch

    def decode(self, last_tokens: Sequence[int], batch: KVBatch) -> tuple[np.ndarray, KVBatch]:
        """One token per row of `batch`: (logits [B, V], the batch's cache one column wider)."""
        ids = np.asarray(last_tokens, dtype=np.int64).reshape(-1, 1)
        mask = np.concatenate([batch.mask, np.ones((batch.rows, 1), dtype=np.int64)], axis=1)
        logits, cache = self.run(ids, mask, batch.cache)
        return logits, KVBatch(mask, cache)


@dataclass
class KVBatch:
    """The cache of a running batch: mask [B, P] and 2 × layers tensors [B, heads, P, head_dim]."""

    mask: np.ndarray
    cache: list[np.ndarray]

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def padded(self, width: int) -> KVBatch:
        """Left-pad to `width` columns (no copy when already that wide)."""
        extra = width - self.width
        if extra <= 0:
            return self
        mask = np.pad(self.mask, ((0, 0), (extra, 0)))
        cache = [np.pad(t, ((0, 0), (0, 0), (extra, 0), (0, 0))) for t in self.cache]
        return KVBatch(mask, cache)

    def merged(self, other: KVBatch) -> KVBatch:
        """This batch's rows followed by `other`'s, both left-padded to the wider width."""
        width = max(self.width, other.width)
        a, b = self.padded(width), other.padded(width)
        mask = np.concatenate([a.mask, b.mask], axis=0)
        cache = [np.concatenate([x, y], axis=0) for x, y in zip(a.cache, b.cache, strict=True)]
        return KVBatch(mask, cache)

    def selected(self, keep: Sequence[int]) -> KVBatch:
        """Only the rows `keep`, with columns that are padding in every kept row trimmed off the left.

        When every row stays and no column can be trimmed (every decode step where no row finished) the batch is
        returned as is: copying the cache there cost a full read and write of it (into fresh pages) per step; skipping
        it raised 8-stream throughput by ~15% on this machine (Triton, same run)."""
        index = np.asarray(keep, dtype=np.int64)
        mask = self.mask[index]
        used = np.flatnonzero(mask.any(axis=0))
        start = int(used[0]) if used.size else mask.shape[1]
        if start == 0 and index.size == self.rows and np.array_equal(index, np.arange(self.rows)):
            return self
        return KVBatch(mask[:, start:], [np.ascontiguousarray(t[index, :, start:]) for t in self.cache])

    def row(self, index: int) -> KVBatch:
        """Row `index` alone, without its padding columns (a contiguous copy)."""
        columns = np.flatnonzero(self.mask[index])
        return KVBatch(self.mask[index : index + 1, columns],
                       [np.ascontiguousarray(t[index : index + 1, :, columns]) for t in self.cache])

    def nbytes(self) -> int:
        """Bytes held by the cache tensors."""
        return sum(t.nbytes for t in self.cache)


class PrefixCache:
    """Caches of recent prompts (one unpadded row each), reused by prompts that share a prefix with them.

    Bounded by `max_tokens` cached token slots (least recently used entries go first); a prefix is reused from
    `min_tokens` tokens on, and never the prompt's last token (its logits are needed).
    """

    def __init__(self, max_tokens: int, min_tokens: int = 8) -> None:
        self.max_tokens, self.min_tokens = max_tokens, min_tokens
        self.entries: OrderedDict[tuple[int, ...], KVBatch] = OrderedDict()
        self.tokens = 0
        self.hits = 0
        self.reused_tokens = 0

    def lookup(self, token_ids: Sequence[int]) -> tuple[int, list[np.ndarray] | None]:
        """(tokens reused, their cache as contiguous [1, heads, n, dim] tensors) or (0, None)."""
        ids = tuple(token_ids)
        best, best_key = 0, None
        for key in self.entries:
            n = _common_prefix(key, ids)
            if n > best:
                best, best_key = n, key
        best = min(best, len(ids) - 1)
        if best_key is None or best < self.min_tokens:
            return 0, None
        self.entries.move_to_end(best_key)
        self.hits += 1
        self.reused_tokens += best
        return best, [np.ascontiguousarray(t[:, :, :best]) for t in self.entries[best_key].cache]

    def store(self, token_ids: Sequence[int], row: KVBatch) -> None:
        """Keep `row` (the cache of exactly `token_ids`), evicting the oldest entries beyond the budget."""
        key = tuple(token_ids)
        if len(key) > self.max_tokens or key in self.entries:
            return
        self.entries[key] = row
        self.tokens += len(key)
        while self.tokens > self.max_tokens:
            old, _ = self.entries.popitem(last=False)
            self.tokens -= len(old)


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def greedy_generate(decoder: Decoder, prompt: Sequence[int], max_new_tokens: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy decoding of one prompt (no stop but the eos ids): (new token ids, logits of every step)."""
    logits, batch = decoder.prefill(prompt)
    tokens: list[int] = []
    history = [logits]
    eos = set(decoder.info.eos_token_ids)
    while True:
        token = int(np.argmax(logits))
        tokens.append(token)
        if token in eos or len(tokens) >= max_new_tokens:
            return tokens, history
        step_logits, batch = decoder.decode([token], batch)
        logits = step_logits[0]
        history.append(logits)
