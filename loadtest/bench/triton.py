"""`tritonstack bench triton`: Triton batched vs unbatched vs int8 vs raw in-process ONNX Runtime, one run.

Each variant is exported into a fresh repository with `tritonstack export minilm`, one Triton serves them all,
and `wrk` drives a closed loop of unique one-sentence requests at each concurrency. Ratios are computed
from the runs of this one invocation only: the machine is shared and noisy.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.bench import plots
from loadtest.bench.report import machine_description, markdown_table, write_section
from loadtest.wrk import WrkResult, run_wrk
from stack.triton import TritonOptions, TritonServer, start_triton

INFER_BODY = '{"inputs":[{"name":"text","shape":[1,1],"datatype":"BYTES","data":["{TEXT}"]}]}'
RATIO_CONCURRENCY = 32
WORDS = ["model", "serving", "batch", "latency", "vector", "token", "gateway", "queue", "cache", "triton"]


@dataclass(frozen=True)
class Variant:
    """A model exported under its own name with its own flags."""

    name: str
    label: str
    flags: tuple[str, ...]


VARIANTS = (
    Variant("minilm_unbatched", "fp32, no dynamic batching (2 instances)", ("--no-dynamic-batching",)),
    Variant("minilm", "fp32, dynamic batching (default: 2 instances × 1 core)", ()),
    Variant("minilm_int8", "int8, dynamic batching", ("--precision", "int8")),
)
TUNING = (
    Variant("minilm_1x", "fp32, batching, 1 instance × all cores", ("--instances", "1")),
    Variant("minilm_delay1ms", "fp32, batching, max_queue_delay 1 ms", ("--max-queue-delay-us", "1000")),
    Variant("minilm_queue256", "fp32, batching, max_queue_size 256", ("--max-queue-size", "256")),
    Variant("minilm_spinning", "fp32, batching, ORT threads spin-wait", ("--ort-spinning",)),
)


def sentence(i: int) -> str:
    """The same kind of unique sentence the wrk script sends."""
    return f"request {i} from thread 0 asks about {WORDS[i % 10]} and {WORDS[(i * 7) % 10]} in a short sentence"


def export_variants(repository: Path, variants: tuple[Variant, ...]) -> None:
    cli = Path(sys.executable).parent / "tritonstack"
    for v in variants:
        argv = [str(cli), "export", "minilm", "--repository", str(repository), "--name", v.name, *v.flags]
        subprocess.run(argv, check=True)


def ort_in_process(version_dir: Path, batch: int, duration_s: float) -> float:
    """Items/s of ONNX Runtime in this process on batches of unique sentences, tokenisation included."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(version_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=256)
    tokenizer.enable_padding()
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    done, i = 0, 0
    deadline = time.perf_counter() + duration_s
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        encodings = tokenizer.encode_batch([sentence(i + k) for k in range(batch)])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        session.run(None, {"input_ids": ids, "attention_mask": mask})
        done += batch
        i += batch
    return done / (time.perf_counter() - start)


Runs = dict[str, dict[int, list[WrkResult]]]


def measure(
    server: TritonServer,
    variants: tuple[Variant, ...],
    concurrencies: list[int],
    duration_s: int,
    rounds: int,
    ort_probe: Callable[[], float],
) -> tuple[Runs, list[float]]:
    """Interleave variants round by round, so slow drifts in background load hit all of them alike.

    Returns every run per variant and concurrency, and one in-process ORT measurement per round.
    """
    urls = {v.name: f"http://{server.http_url}/v2/models/{v.name}/infer" for v in variants}
    for url in urls.values():
        run_wrk(url, INFER_BODY, connections=8, duration_s=2)  # warm-up, discarded
    runs: Runs = {v.name: {c: [] for c in concurrencies} for v in variants}
    ort: list[float] = []
    for c in concurrencies:
        for _ in range(rounds):
            for v in variants:
                runs[v.name][c].append(run_wrk(urls[v.name], INFER_BODY, connections=c, duration_s=duration_s))
            if c == ratio_concurrency(concurrencies):
                ort.append(ort_probe())
    return runs, ort


def ratio_concurrency(concurrencies: list[int]) -> int:
    """Where the ratios are stated: c=32 (where the targets are set) when it ran, else the highest."""
    return RATIO_CONCURRENCY if RATIO_CONCURRENCY in concurrencies else max(concurrencies)


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _row(label: str, c: int, rs: list[WrkResult]) -> list[str]:
    return [
        label,
        str(c),
        f"{_median([r.rps for r in rs]):.0f}",
        f"{_median([r.p50_ms for r in rs]):.1f}",
        f"{_median([r.p95_ms for r in rs]):.1f}",
        f"{_median([r.p99_ms for r in rs]):.1f}",
        str(sum(r.errors + r.non2xx for r in rs)),
    ]


def _paired(runs: Runs, a: str, b: str, c: int) -> float:
    """Median over rounds of a/b throughput, each pair run back to back."""
    return _median([x.rps / y.rps for x, y in zip(runs[a][c], runs[b][c], strict=True)])


def render(runs: Runs, labels: dict[str, str], ort: list[float], rounds: int, command: str) -> str:
    rows = [_row(labels[name], c, rs) for name, by_c in runs.items() for c, rs in by_c.items()]
    c = ratio_concurrency(list(runs["minilm"]))
    batched = runs["minilm"][c]
    vs_ort = _median([r.rps / o for r, o in zip(batched, ort, strict=True)])
    ratios = [
        ["batched / unbatched", f"{_paired(runs, 'minilm', 'minilm_unbatched', c):.2f}×", "≥ 1.6×"],
        ["batched / raw ORT in-process batch 32", f"{vs_ort:.2f}×", "≥ 0.95×"],
        ["int8 / fp32 (both batched)", f"{_paired(runs, 'minilm_int8', 'minilm', c):.2f}×", "≥ 2×"],
    ]
    return "\n\n".join(
        [
            "## Triton: dynamic batching, int8, and raw ONNX Runtime (MiniLM, CPU)",
            f"Command: `{command}`  \nMachine: {machine_description()}  \n"
            "Load: `wrk` (1 thread, closed loop), one unique ~20-token sentence per request, KServe v2 JSON over HTTP "
            "straight to Triton. Raw ORT: the same ONNX file in-process, batches of 32 unique sentences, "
            f"tokenisation included, ORT's default threads. Variants are interleaved over {rounds} rounds; each "
            "cell is the median over rounds, each ratio the median of per-round ratios (pairs measured back to back).",
            markdown_table(["variant", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"], rows),
            f"Raw ONNX Runtime in-process, batch 32: **{_median(ort):.0f} items/s** (median of {len(ort)}).",
            f"Ratios at concurrency {c}, same run:",
            markdown_table(["ratio", "measured", "target"], ratios),
        ]
    )


def run(duration_s: int, concurrencies: list[int], tuning: bool, rounds: int, output: Path, command: str) -> str:
    """Export, serve, measure and write the section; returns the markdown."""
    variants = VARIANTS + (TUNING if tuning else ())
    with tempfile.TemporaryDirectory(prefix="tritonstack-bench-") as tmp:
        repository = Path(tmp) / "repository"
        export_variants(repository, variants)
        server = start_triton(TritonOptions.on_free_ports(repository), Path(tmp) / "state",
                              log_path=Path(tmp) / "state" / "triton.log")
        version_dir = repository / "minilm" / "1"
        try:
            runs, ort = measure(
                server,
                variants,
                sorted(concurrencies),
                duration_s,
                rounds,
                lambda: ort_in_process(version_dir, batch=32, duration_s=duration_s),
            )
        finally:
            server.stop()
    markdown = render(runs, {v.name: v.label for v in variants}, ort, rounds, command)
    write_section(output, "triton", markdown)
    labels = {v.name: v.label for v in variants}
    img_dir = output.parent / "img"  # raw numbers for the plots (loadtest.bench.plots)
    plots.save_series(
        img_dir,
        "triton",
        plots.from_wrk_runs({labels[k]: v for k, v in runs.items()}),
        {"command": command, "load generator": "wrk"},
    )
    plots.draw(img_dir)
    return markdown
