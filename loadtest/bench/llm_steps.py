"""The served decoder's own decode-step times, in the benchmark process: the ceiling of the N-streams ratio.

A stream's tokens/s is bound by the decode step it shares: one row runs the 4-bit graph, N rows the fp32 graph
(`llm_engine.Decoder`). So N × (1-row step) / (N-row step) is what N streams can gain over one with these kernels,
before any scheduling, prefill or Triton cost: `tritonstack bench llm` prints it beside the end-to-end ratio.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from export.repository import versions
from triton_models.llm_engine import Decoder, KVSlots, ModelInfo


def _median_step(decoder: Decoder, rows: int, context: int, steps: int) -> float:
    """Median seconds of a decode step of `rows` rows that hold `context` cached tokens each (growing by one)."""
    slots: KVSlots = decoder.empty(rows, context + steps + 8)
    slots.lengths[:] = context  # the cache's values do not change the work: zeros will do
    tokens = list(range(100, 100 + rows))
    for _ in range(3):  # warm-up: the first runs allocate
        _, slots = decoder.decode(tokens, slots)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        _, slots = decoder.decode(tokens, slots)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def engine_steps(repository: Path, model: str, rows: int, context: int, steps: int = 30,
                 alternations: int = 3) -> dict[str, float]:
    """1-row and `rows`-row decode steps of the newest version's decoder, alternated `alternations` times (load on
    a shared machine then hits both alike), with the served defaults (all cores, no spin-waiting)."""
    version = repository / model / str(max(versions(repository, model)))
    info = ModelInfo.load(version / "generation.json")
    packed = version / "model.packed.onnx"
    decoder = Decoder(version / "model.onnx", info, single_row_path=packed if packed.exists() else None)
    single, many = [], []
    for _ in range(alternations):
        single.append(_median_step(decoder, 1, context, steps))
        many.append(_median_step(decoder, rows, context, steps))
    one, batch = statistics.median(single), statistics.median(many)
    return {"step_1_ms": one * 1000, "step_n_ms": batch * 1000, "ceiling": rows * one / batch, "context": context}
