"""The decoder with a KV cache on ONNX Runtime, and the in-place KV cache of a running batch.

Shared by the export's parity check (`export.llm.parity`) and the served generation model
(`generation.py`, copied next to this file into the version directory), so parity covers the serving code.

The graph (`export.llm.graph`) attends with ONNX Runtime's GroupQueryAttention, which reads and writes the cache in
place. A running batch (`KVSlots`) holds one buffer per layer and kind, [rows, kv_heads, capacity, head_dim], and
each row's length: row r's tokens occupy columns [0, length_r) of its slot. A step writes each row's new keys and
values at its own length and attends to its own columns only, so rows of different lengths share a step with no
padding and no mask, and a decode step copies nothing. The buffers are copied only when the batch changes: a new
row joins (`merged`), rows leave (`selected`), or the longest row outgrows the capacity (`reserve`, in chunks of
`CHUNK` columns; the scheduler sizes a batch for its rows' longest possible length, so a generation never waits
for that copy).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

try:  # served: the helper modules sit next to model.py, on the python backend's sys.path
    from llm_runtime import MIN_ORT as MIN_ORT
    from llm_runtime import MIN_ORT_GPU as MIN_ORT_GPU
    from llm_runtime import check_provider, check_runtime, session
except ImportError:  # imported as triton_models.llm_engine: the export, the benchmarks, the tests
    from .llm_runtime import MIN_ORT as MIN_ORT
    from .llm_runtime import MIN_ORT_GPU as MIN_ORT_GPU
    from .llm_runtime import check_provider, check_runtime, session

if TYPE_CHECKING:  # at runtime the caller's cache is used as given (llm_prefix is a sibling module)
    from llm_prefix import PrefixCache

CHUNK = 64  # cache capacity grows in steps of this many columns
def unpadded_passes(cached: Sequence[int], new: Sequence[int]) -> list[list[int]]:
    """The passes that prefill rows on a graph without `query_seqlens` (the GPU's): row indices, each pass in order.

    Without padding every row of a pass has the same number of new tokens. And ONNX Runtime's GroupQueryAttention
    (its input check, shared by the CPU and CUDA kernels) refuses a pass of more than one row with more than one new
    token per row when any row has cached tokens ("batch_size must be 1 when sequence_length > 1 and past context is
    given"). So rows without a cached prefix share a pass with the rows that have as many new tokens, rows with one
    new token share one pass (shaped like a decode step), and every other row (a cached prefix and more than one new
    token) has a pass of its own."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i, (n, k) in enumerate(zip(cached, new, strict=True)):
        key = ("one", 1) if k == 1 else ("fresh", k) if n == 0 else ("alone", i)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


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


def _capacity(columns: int) -> int:
    return max(CHUNK, -(-columns // CHUNK) * CHUNK)


def _cupy() -> Any:
    import cupy  # present wherever a GPU place is used: `Place.missing` is checked first

    return cupy


@dataclass(frozen=True)
class Place:
    """Where cache buffers live: host memory (numpy arrays) or a GPU (CuPy arrays); ONNX Runtime reads and writes
    them in place either way, bound by pointer."""

    device: str = "cpu"  # "cpu" or "cuda"
    device_id: int = 0

    def missing(self) -> str | None:
        """What this machine lacks to run the decoder here, with what to install; None when nothing is missing."""
        if self.device == "cpu":
            return None
        if importlib.util.find_spec("cupy") is None:
            return ("the GPU generation model keeps its KV cache on the GPU with CuPy: pip install cupy-cuda12x "
                    "(deploy/docker/triton-gpu.Dockerfile installs it)")
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return (f"execution_provider cuda: this onnxruntime ({ort.__version__}) has no CUDAExecutionProvider: "
                    "install onnxruntime-gpu (deploy/docker/triton-gpu.Dockerfile does)")
        return None

    def active(self) -> contextlib.AbstractContextManager:
        """The context array operations on this place run in (the GPU's, for CuPy)."""
        return contextlib.nullcontext() if self.device == "cpu" else _cupy().cuda.Device(self.device_id)

    def zeros(self, shape: tuple[int, ...], dtype: type) -> Any:
        if self.device == "cpu":
            return np.zeros(shape, dtype=dtype)
        with self.active():
            return _cupy().zeros(shape, dtype=dtype)

    def contiguous(self, array: Any) -> Any:
        return np.ascontiguousarray(array) if self.device == "cpu" else _cupy().ascontiguousarray(array)

    def pointer(self, array: Any) -> int:
        return int(array.ctypes.data) if self.device == "cpu" else int(array.data.ptr)

    def synchronize(self) -> None:
        """Wait until the array operations queued here are done. CuPy queues its copies into the cache buffers on its
        current stream, and ONNX Runtime's CUDA provider computes on a stream of its own that does not wait for it:
        without this, a pass could read a row's slot before the copy of its cached prefix (or of a merged batch)
        has landed."""
        if self.device != "cpu":
            with self.active():
                _cupy().cuda.get_current_stream().synchronize()


HOST = Place()


@dataclass
class KVSlots:
    """The cache of a running batch: each row's length and 2 × layers buffers [rows, heads, capacity, head_dim]."""

    lengths: np.ndarray  # int64 [rows], always on the host
    cache: list[Any]  # numpy or CuPy arrays (`place`)
    bindings: dict = field(default_factory=dict, repr=False)  # session id → its IOBinding with these buffers bound
    place: Place = HOST

    @classmethod
    def allocate(cls, rows: int, capacity: int, heads: int, head_dim: int, count: int,
                 dtype: type = np.float32, place: Place = HOST) -> KVSlots:
        """`rows` empty slots of `capacity` columns in `count` buffers [rows, heads, capacity, head_dim]."""
        shape = (rows, heads, capacity, head_dim)
        return cls(np.zeros(rows, dtype=np.int64), [place.zeros(shape, dtype) for _ in range(count)], place=place)

    def _empty(self, rows: int, capacity: int) -> KVSlots:
        """Empty slots with this batch's geometry, precision and place."""
        _, heads, _, head_dim = self.cache[0].shape
        return KVSlots.allocate(rows, capacity, heads, head_dim, len(self.cache), self.cache[0].dtype.type,
                                self.place)

    @property
    def rows(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def capacity(self) -> int:
        return int(self.cache[0].shape[2])

    @property
    def width(self) -> int:
        """The longest row's length."""
        return int(self.lengths.max()) if self.rows else 0

    def _copied(self, rows: Sequence[int], capacity: int) -> KVSlots:
        width = int(self.lengths[list(rows)].max()) if len(rows) else 0
        out = self._empty(len(rows), capacity)
        index = np.asarray(rows, dtype=np.int64)
        out.lengths[:] = self.lengths[index]
        with self.place.active():
            for dst, src in zip(out.cache, self.cache, strict=True):
                dst[:, :, :width] = src[list(rows), :, :width]
        return out

    def reserve(self, columns: int) -> KVSlots:
        """Room for `columns` columns per row: this batch, or a copy with more capacity."""
        if columns <= self.capacity:
            return self
        return self._copied(range(self.rows), _capacity(columns))

    @staticmethod
    def stacked(parts: Sequence[KVSlots], capacity: int = 0) -> KVSlots:
        """The rows of every part, in order, in one batch (one copy of each), with at least `capacity` columns."""
        capacity = max(_capacity(capacity) if capacity else 0, *(p.capacity for p in parts))
        out = parts[0]._empty(sum(p.rows for p in parts), capacity)
        start = 0
        with out.place.active():
            for part in parts:
                end, width = start + part.rows, part.width
                out.lengths[start:end] = part.lengths
                for dst, src in zip(out.cache, part.cache, strict=True):
                    dst[start:end, :, :width] = src[:, :, :width]
                start = end
        return out

    def merged(self, other: KVSlots, capacity: int = 0) -> KVSlots:
        """This batch's rows followed by `other`'s, with at least `capacity` columns."""
        return KVSlots.stacked([self, other], capacity)

    def selected(self, keep: Sequence[int], capacity: int = 0) -> KVSlots:
        """Only the rows `keep`, in that order, with at least `capacity` columns. When every row stays in place
        (every decode step where no row finished) the batch is returned as is: no copy."""
        index = np.asarray(keep, dtype=np.int64)
        if index.size == self.rows and np.array_equal(index, np.arange(self.rows)):
            return self
        width = int(self.lengths[index].max()) + 1 if index.size else 1
        return self._copied(list(index), _capacity(max(width, capacity)))

    def row(self, index: int) -> KVSlots:
        """Row `index` alone, with exactly its length as capacity (contiguous copies)."""
        n = int(self.lengths[index])
        with self.place.active():
            cache = [self.place.contiguous(t[index : index + 1, :, :n]) for t in self.cache]
        return KVSlots(self.lengths[index : index + 1].copy(), cache, place=self.place)

    def prefix(self, columns: int) -> list[np.ndarray]:
        """Row 0's first `columns` columns, as [1, heads, columns, head_dim] views (no copy: a prompt that reuses
        them copies them once, into its own slot)."""
        return [t[:1, :, :columns] for t in self.cache]


class Decoder:
    """ONNX Runtime sessions of the exported decoder (`export.llm.graph`).

    With `single_row_path`, a second graph of the same decoder (the GGUF's 4-bit blocks, `export.llm.repack`) runs the
    steps that compute one token of one row: there the step is bound by reading the weights, which the 4-bit
    blocks make several times smaller; every wider step (prefill, batched decode) runs the fp32 graph, whose GEMMs
    are faster once there are several rows. With `decode_path` instead, every decode step (`decode`, one row or
    many) runs that graph (`--decode int8`'s, `export.llm.int8`) and prefill the main one. The graphs read and write
    the same cache buffers.

    With `place` on a GPU (the fp16 graph of `--target gpu`), ONNX Runtime runs on CUDA and the cache buffers are
    CuPy arrays on that GPU; only token ids, lengths and the logits cross to the host.
    """

    def __init__(self, onnx_path: Path, info: ModelInfo, *, intra_op_threads: int = 0, inter_op_threads: int = 1,
                 single_row_path: Path | None = None, decode_path: Path | None = None, allow_spinning: bool = False,
                 place: Place = HOST):
        self.place = place
        if (missing := place.missing()) is not None:  # a clear error before the sessions load
            raise RuntimeError(missing)
        if place.device != "cpu":
            check_runtime(gpu_graph=True)
        try:
            self.session = session(onnx_path, intra_op_threads, inter_op_threads, allow_spinning, place)
        except Exception:
            check_runtime()  # the CPU graph on an onnxruntime too old for it: say what to install
            raise
        check_provider(self.session, place)
        self.single_row, self.decoding = (
            session(path, intra_op_threads, inter_op_threads, allow_spinning, place) if path is not None else None
            for path in (single_row_path, decode_path))
        self.info = info
        self.past_names = [f"past.{i}.{k}" for i in range(info.layers) for k in ("key", "value")]
        self.present_names = [f"present.{i}.{k}" for i in range(info.layers) for k in ("key", "value")]
        inputs = {i.name: i.type for i in self.session.get_inputs()}
        self.kv_dtype = np.float16 if inputs[self.past_names[0]] == "tensor(float16)" else np.float32
        # without `query_seqlens` (CUDA's GroupQueryAttention has no such input) a pass must not pad
        self.takes_query_seqlens = "query_seqlens" in inputs
        self.padded = self.takes_query_seqlens  # whether prefill_many pads rows of different lengths into one pass

    def empty(self, rows: int, capacity: int = CHUNK) -> KVSlots:
        """`rows` empty slots."""
        return KVSlots.allocate(rows, _capacity(capacity), self.info.kv_heads, self.info.head_dim,
                                len(self.past_names), self.kv_dtype, self.place)

    def _binding(self, session: ort.InferenceSession, slots: KVSlots) -> ort.IOBinding:
        """The session's binding with `slots`' buffers as both past and present (made once per batch)."""
        binding = slots.bindings.get(id(session))
        if binding is None:
            binding = session.io_binding()
            for past, present, buffer in zip(self.past_names, self.present_names, slots.cache, strict=True):
                shape, pointer, dtype = list(buffer.shape), slots.place.pointer(buffer), buffer.dtype.type
                device, device_id = slots.place.device, slots.place.device_id
                binding.bind_input(past, device, device_id, dtype, shape, pointer)
                binding.bind_output(present, device, device_id, dtype, shape, pointer)
            slots.bindings[id(session)] = binding
        return binding

    def step(self, input_ids: np.ndarray, new: np.ndarray, slots: KVSlots,
             graph: ort.InferenceSession | None = None) -> tuple[np.ndarray, KVSlots]:
        """One forward pass: `input_ids` [B, S] right-padded, `new` [B] real tokens per row (≥ 1) → (logits of each
        row's last real token [B, V], the batch with each row `new` tokens longer; a copy when it had to grow).
        `graph`: the session to run (default: the single-row one for one token, else the main one)."""
        rows, columns = input_ids.shape
        slots = slots.reserve(slots.width + columns)
        if graph is None:
            graph = self.single_row if self.single_row is not None and input_ids.size == 1 else self.session
        binding = self._binding(graph, slots)
        after = slots.lengths + new
        feeds = {  # kept referenced until the run is over
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "seqlens_k": (after - 1).astype(np.int32),
            "query_seqlens": new.astype(np.int32),  # the rest of a row's chunk is padding: never cached
            "total_sequence_length": np.array(max(int(after.max()), columns), dtype=np.int32),
            "logits_index": np.arange(rows, dtype=np.int64) * columns + new - 1,
        }
        if not self.takes_query_seqlens:
            _check_unpadded(slots.lengths, new, columns)
            del feeds["query_seqlens"]
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        logits = np.empty((rows, self.info.vocab), dtype=np.float32)  # ours: no output wrappers, no copy
        binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        slots.place.synchronize()  # the cache copies CuPy queued are in place before ONNX Runtime's stream reads
        graph.run_with_iobinding(binding)
        if slots.place.device != "cpu":
            binding.synchronize_outputs()  # and the keys and values it wrote are, before CuPy copies rows again
        slots.lengths[:] = after
        return logits, slots

    def prefill(self, token_ids: Sequence[int], prefixes: PrefixCache | None = None) -> tuple[np.ndarray, KVSlots]:
        """Run a prompt as one row: (logits [V], the row's cache).

        With `prefixes`, the longest cached prefix of the prompt is reused and only the rest is computed; the
        prompt's cache is then stored for later prompts that start the same way (system prompt, earlier turns).
        """
        logits, slots = self.prefill_many([token_ids], prefixes)
        return logits[0], slots

    def prefill_many(self, prompts: Sequence[Sequence[int]], prefixes: PrefixCache | None = None
                     ) -> tuple[np.ndarray, KVSlots]:
        """Prompts that arrive together, in one forward pass: (logits [k, V], their rows as one batch).

        Each row starts from its own longest cached prefix, copied into its slot; the rest of each prompt is
        right-padded to the longest rest (`query_seqlens`: the padding never enters the cache). A graph that cannot
        pad (`padded` False) runs the passes `unpadded_passes` allows, and the rows come back in the prompts' order.
        Every prompt's cache is then stored for later prompts."""
        found = [prefixes.lookup(p) if prefixes is not None else (0, None) for p in prompts]
        rests = [list(p[n:]) for p, (n, _) in zip(prompts, found, strict=True)]
        passes = [list(range(len(rests)))] if self.padded else unpadded_passes([n for n, _ in found],
                                                                               [len(r) for r in rests])
        if len(passes) == 1:
            logits, slots = self._prefill_pass(found, rests)
        else:
            logits, slots = self._prefill_in_passes(found, rests, passes)
        if prefixes is not None:
            for i, prompt in enumerate(prompts):
                prefixes.store(prompt, slots.row(i))
        return logits, slots

    def _prefill_pass(self, found: Sequence[tuple[int, list[np.ndarray] | None]], rests: list[list[int]]
                      ) -> tuple[np.ndarray, KVSlots]:
        """One pass: each row's rest over its cached prefix, right-padded to the longest rest."""
        columns = max(len(r) for r in rests)
        slots = self._seeded(found, max(n for n, _ in found) + columns)
        ids = np.zeros((len(rests), columns), dtype=np.int64)
        for i, rest in enumerate(rests):
            ids[i, : len(rest)] = rest
        return self.step(ids, np.array([len(r) for r in rests], dtype=np.int64), slots)

    def _prefill_in_passes(self, found: Sequence[tuple[int, list[np.ndarray] | None]], rests: list[list[int]],
                           passes: list[list[int]]) -> tuple[np.ndarray, KVSlots]:
        """One pass per group of rows (`unpadded_passes`); rows and logits in the prompts' order."""
        done = [self._prefill_pass([found[i] for i in rows], [rests[i] for i in rows]) for rows in passes]
        back = np.argsort([i for rows in passes for i in rows])  # prompt i's row in the stacked passes
        stacked = KVSlots.stacked([slots for _, slots in done])
        return np.concatenate([logits for logits, _ in done])[back], stacked.selected(back.tolist())

    def prefill_start(self, token_ids: Sequence[int], prefixes: PrefixCache | None = None) -> PromptPrefill:
        """A prompt to prefill in chunks (`PromptPrefill.advance`), from its longest cached prefix."""
        found = prefixes.lookup(token_ids) if prefixes is not None else (0, None)
        return PromptPrefill(self, list(token_ids), self._seeded([found], len(token_ids)), prefixes)

    def _seeded(self, found: Sequence[tuple[int, list[np.ndarray] | None]], capacity: int) -> KVSlots:
        """Empty rows, each holding its cached prefix (`PrefixCache.lookup`) at the start of its slot."""
        slots = self.empty(len(found), capacity)
        with self.place.active():
            for i, (n, past) in enumerate(found):
                slots.lengths[i] = n
                for buffer, part in zip(slots.cache, past or (), strict=False):
                    buffer[i, :, :n] = part[0]
        return slots

    def decode(self, last_tokens: Sequence[int], slots: KVSlots) -> tuple[np.ndarray, KVSlots]:
        """One token per row: (logits [B, V], the batch one token longer per row)."""
        ids, new = np.asarray(last_tokens, dtype=np.int64).reshape(-1, 1), np.ones(len(last_tokens), dtype=np.int64)
        return self.step(ids, new, slots) if self.decoding is None else self.step(ids, new, slots, self.decoding)


def _check_unpadded(cached: np.ndarray, new: np.ndarray, columns: int) -> None:
    """The passes a graph without `query_seqlens` can run (see `unpadded_passes`), refused here with the rule
    rather than by GroupQueryAttention in the middle of a batch."""
    if not bool((new == columns).all()):
        raise ValueError("this graph cannot pad: every row of a pass needs the same number of new tokens")
    if cached.shape[0] > 1 and columns > 1 and bool(cached.any()):
        raise ValueError(f"this graph cannot prefill {cached.shape[0]} rows of {columns} tokens over cached ones in "
                         "one pass (GroupQueryAttention: batch_size must be 1 when sequence_length > 1 and past "
                         "context is given): one row per pass (`unpadded_passes`)")


@dataclass
class PromptPrefill:
    """One prompt prefilled a chunk at a time, so that a long prompt does not hold the running batch up for its
    whole prefill: the scheduler runs a decode step of the running rows between chunks (chunked prefill)."""

    decoder: Decoder
    prompt: list[int]
    slots: KVSlots  # one row: the prompt's tokens so far
    prefixes: PrefixCache | None = None

    @property
    def remaining(self) -> int:
        """Prompt tokens not in the cache yet."""
        return len(self.prompt) - int(self.slots.lengths[0])

    def advance(self, chunk: int) -> np.ndarray | None:
        """Compute the next `chunk` prompt tokens over the cache so far: the logits of the prompt's last token [V]
        once the prompt is complete (its cache is then stored for later prompts), else None."""
        done = int(self.slots.lengths[0])
        part = self.prompt[done : done + max(1, chunk)]
        logits, self.slots = self.decoder.step(np.asarray([part], dtype=np.int64),
                                               np.array([len(part)], dtype=np.int64), self.slots)
        if self.remaining:
            return None
        if self.prefixes is not None:
            self.prefixes.store(self.prompt, self.slots.row(0))
        return logits[0]

