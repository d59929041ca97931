"""The served decoder's own decode-step times, in the benchmark process: the ceiling of the N-streams ratio.

A stream's tokens/s is bound by the decode step it shares: one row runs the 4-bit graph, N rows the fp32 graph
(`llm_engine.Decoder`; an `--decode int8` export runs its int8 graph for both). So N × (1-row step) / (N-row step)
is what N streams can gain over one with these kernels, before any scheduling, prefill or Triton cost:
`tritonstack bench llm` prints it beside the end-to-end ratio.

`python -m loadtest.bench.llm_steps DIR…` compares the newest versions of exported models (e.g. the default and
the `--decode int8` export) in one run: 1-row and N-row steps of each, rounds alternating the models.
"""

from __future__ import annotations

import argparse
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


def _decoder(model_dir: Path, allow_spinning: bool = False) -> Decoder:
    """The newest version's decoder, as served (its single-row or int8 decode graph, if any)."""
    version = model_dir / str(max(versions(model_dir.parent, model_dir.name)))
    packed, int8 = version / "model.packed.onnx", version / "model.int8.onnx"
    return Decoder(version / "model.onnx", ModelInfo.load(version / "generation.json"),
                   single_row_path=packed if packed.exists() else None, decode_path=int8 if int8.exists() else None,
                   allow_spinning=allow_spinning)


def engine_steps(repository: Path, model: str, rows: int, context: int, steps: int = 30,
                 alternations: int = 3) -> dict[str, float]:
    """1-row and `rows`-row decode steps of the newest version's decoder, alternated `alternations` times (load on
    a shared machine then hits both alike), with the served defaults (all cores, no spin-waiting)."""
    decoder = _decoder(repository / model)
    single, many = [], []
    for _ in range(alternations):
        single.append(_median_step(decoder, 1, context, steps))
        many.append(_median_step(decoder, rows, context, steps))
    one, batch = statistics.median(single), statistics.median(many)
    return {"step_1_ms": one * 1000, "step_n_ms": batch * 1000, "ceiling": rows * one / batch, "context": context}


def compare(model_dirs: list[Path], rows: int = 8, context: int = 110, steps: int = 30, rounds: int = 3,
            allow_spinning: bool = False) -> dict[str, dict[str, float]]:
    """Median 1-row and `rows`-row step times (ms) of each model, over `rounds` rounds that alternate the models
    (in reversed order every other round): model directory → {"step_1_ms", "step_n_ms"}."""
    decoders = {str(d): _decoder(d, allow_spinning) for d in model_dirs}
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in decoders}
    for r in range(rounds):
        for name in (list(decoders) if r % 2 == 0 else list(decoders)[::-1]):
            times[name][0].append(_median_step(decoders[name], 1, context, steps) * 1000)
            times[name][1].append(_median_step(decoders[name], rows, context, steps) * 1000)
    return {name: {"step_1_ms": statistics.median(one), "step_n_ms": statistics.median(many)}
            for name, (one, many) in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench.llm_steps", description=compare.__doc__)
    parser.add_argument("models", nargs="+", type=Path, help="model directories (repository/name)")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--context", type=int, default=110, help="cached tokens per row")
    parser.add_argument("--steps", type=int, default=30, help="steps per measurement (median)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ort-spinning", action="store_true", help="ONNX Runtime threads spin-wait")
    args = parser.parse_args(argv)
    results = compare(args.models, args.rows, args.context, args.steps, args.rounds, args.ort_spinning)
    print(f"| model | 1 row (ms) | {args.rows} rows (ms) | {args.rows} rows / 1 row (ceiling) |")
    print("|---|---|---|---|")
    for name, r in results.items():
        ceiling = args.rows * r["step_1_ms"] / r["step_n_ms"]
        print(f"| {name} | {r['step_1_ms']:.1f} | {r['step_n_ms']:.1f} | {ceiling:.2f}× |")


if __name__ == "__main__":
    main()
