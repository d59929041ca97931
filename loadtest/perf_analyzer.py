"""NVIDIA's `perf_analyzer` as a load generator: where it is installed, how it runs, what it reports.

It is the binary inside the tritonclient 2.51 wheel, installed in `.venv-clients` by `make clients` (it clashes with
the main venv). Without a GPU it needs only `libcudart.so.12`, from the nvidia-cuda-runtime-cu12 wheel in the same
venv, and Debian's `libb64-0d`. The tests (tests/test_nvidia_clients.py) and `tritonstack bench gateway` use it.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ROOT / ".venv-clients"


class PerfAnalyzerMissingError(RuntimeError):
    """perf_analyzer (or the CUDA runtime library it loads) is not installed."""


def executable() -> Path:
    """The perf_analyzer binary of the clients' venv."""
    path = CLIENTS / "bin" / "perf_analyzer"
    if not path.exists():
        raise PerfAnalyzerMissingError(f"{path} is not installed: `make clients` installs NVIDIA's clients")
    return path


def environment() -> dict[str, str]:
    """The environment perf_analyzer runs in: the wheel's libcudart.so.12 on LD_LIBRARY_PATH (no GPU is used)."""
    libs = sorted(CLIENTS.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    if not libs:
        raise PerfAnalyzerMissingError(f"{CLIENTS} lacks nvidia-cuda-runtime-cu12: run `make clients`")
    paths = [str(libs[0]), *filter(None, [os.environ.get("LD_LIBRARY_PATH")])]
    return {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(paths)}


@dataclass(frozen=True)
class PerfResult:
    """One perf_analyzer measurement at one concurrency."""

    concurrency: int
    infer_per_s: float
    p50_ms: float
    p99_ms: float


def sentences_file(directory: Path, sentences: list[str], input_name: str = "text") -> Path:
    """perf_analyzer's `--input-data` JSON: one request per sentence, in turn."""
    path = directory / "perf_analyzer_input.json"
    path.write_text(json.dumps({"data": [{input_name: [s]} for s in sentences]}), encoding="utf-8")
    return path


def measure(address: str, model: str, concurrency: int, input_data: Path, *, key: str | None = None,
            tensor_format: str = "binary", interval_ms: int = 3000, stability_pct: int = 25,
            timeout_s: float = 300) -> PerfResult:
    """One measurement of `model` over KServe v2 HTTP at `address` (host:port), with an API key when given: the
    first three consecutive windows whose throughput and latency agree within `stability_pct` (perf_analyzer's
    default of 10 % is rarely reached on a shared machine); raises RuntimeError with perf_analyzer's own output when
    it fails (e.g. the gateway's refusal)."""
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-") as tmp:
        report = Path(tmp) / "report.csv"
        argv = [str(executable()), "-m", model, "-u", address, "-i", "http", "--input-data", str(input_data),
                "--concurrency-range", str(concurrency), "--measurement-interval", str(interval_ms),
                "--stability-percentage", str(stability_pct), "--max-trials", "20",
                "--input-tensor-format", tensor_format, "--output-tensor-format", tensor_format, "-f", str(report)]
        if key is not None:
            argv += ["-H", f"Authorization: Bearer {key}"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=environment(),
                              check=False)
        if done.returncode != 0 or not report.exists():
            raise RuntimeError(f"perf_analyzer failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")
        with report.open(newline="") as handle:
            row = next(csv.DictReader(handle))
    return PerfResult(concurrency, float(row["Inferences/Second"]), float(row["p50 latency"]) / 1000,
                      float(row["p99 latency"]) / 1000)
