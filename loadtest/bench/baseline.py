"""`tritonstack bench baseline`: the naive FastAPI + sentence-transformers service, measured with wrk.

Starts `loadtest.baselines.naive_st` on a free port, warms it up, and drives a closed loop of unique
one-sentence `/v1/embeddings` requests (the gateway bench's body) at each concurrency. Writes the `baseline`
section of docs/BENCHMARKS.md, the raw numbers to `docs/img/baseline.json`, and redraws the plots from every
bench JSON there (with Triton's series when `bench triton` saved one, the section also states the ratio).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx

from deploy.local.process import free_port
from loadtest.bench import plots
from loadtest.bench.report import machine_description, markdown_table, write_section
from loadtest.wrk import WrkResult, run_wrk

EMBED_BODY = '{"model":"minilm","input":"{TEXT}","encoding_format":"base64"}'


def start_baseline(port: int, log: Path) -> subprocess.Popen[bytes]:
    """The naive service in its own process; returns once /health answers."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "loadtest.baselines.naive_st", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the baseline exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)  # polling the child's readiness
    proc.kill()
    raise RuntimeError(f"the baseline did not start in 120 s; see {log}")


def measure(url: str, concurrencies: list[int], duration_s: int, rounds: int) -> dict[int, list[WrkResult]]:
    """Median-able runs per concurrency; each run has its own salt so no sentence repeats."""
    run_wrk(url, EMBED_BODY, connections=4, duration_s=2, salt=secrets.token_hex(4))  # warm-up, discarded
    return {
        c: [run_wrk(url, EMBED_BODY, connections=c, duration_s=duration_s, salt=secrets.token_hex(4))
            for _ in range(rounds)]
        for c in concurrencies
    }


def series(runs: dict[int, list[WrkResult]]) -> plots.Series:
    """Per-concurrency medians in the plots' JSON form."""
    return plots.from_wrk_runs({"naive FastAPI + sentence-transformers": runs})


def _triton_ratio(img_dir: Path, naive: list[dict[str, float]]) -> str:
    """A line comparing Triton's batched series (if saved) with the baseline at the top concurrency."""
    path = img_dir / "triton.json"
    if not path.exists():
        return ""
    batched = next((v for k, v in json.loads(path.read_text())["series"].items() if "dynamic batching (def" in k), [])
    top = naive[-1]
    same = [p for p in batched if p["concurrency"] == top["concurrency"]]
    if not same or not top["rps"]:
        return ""
    ratio = same[0]["rps"] / top["rps"]
    return (f"Triton batched (from `bench triton`'s last run, {path.name}) / naive at c={top['concurrency']}: "
            f"**{ratio:.1f}×** (different runs: indicative only).")


def render(s: plots.Series, command: str, duration_s: int, rounds: int, img_dir: Path, extra: str) -> str:
    (label, points), = s.items()
    rows = [[label, str(int(p["concurrency"])), f"{p['rps']:.0f}", f"{p['p50_ms']:.1f}", f"{p['p95_ms']:.1f}",
             f"{p['p99_ms']:.1f}", str(int(p["errors"]))] for p in points]
    rel = img_dir.name
    return "\n\n".join(filter(None, [
        "## Naive baseline: FastAPI + sentence-transformers per request (MiniLM, CPU)",
        f"Command: `{command}`  \nMachine: {machine_description()}  \n"
        "Service: `loadtest/baselines/naive_st.py` — one uvicorn process, sync endpoint, `SentenceTransformer."
        "encode` per request, no batching across requests, no cache. Load: `wrk` (1 thread, closed loop), one "
        f"unique ~20-token sentence per request, OpenAI `/v1/embeddings` body (base64). {duration_s} s per run, "
        f"median of {rounds} run(s) per concurrency.",
        markdown_table(["service", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"], rows),
        extra,
        f"Plots of every series saved under `docs/{rel}/` (raw numbers: `docs/{rel}/*.json`):\n\n"
        f"![throughput vs concurrency]({rel}/throughput.png)\n\n![latency percentiles]({rel}/latency.png)",
    ]))


def run(duration_s: int, concurrencies: list[int], rounds: int, output: Path | None, command: str) -> str:
    """Start the baseline, measure, save JSON and plots, write the section; returns the markdown."""
    port = free_port()
    img_dir = (output.parent if output else Path("docs")) / "img"
    log = Path("runs") / f"naive-baseline-{port}.log"
    log.parent.mkdir(exist_ok=True)
    proc = start_baseline(port, log)
    try:
        runs = measure(f"http://127.0.0.1:{port}/v1/embeddings", sorted(concurrencies), duration_s, rounds)
    finally:
        proc.terminate()
        proc.wait(30)
    s = series(runs)
    plots.save_series(img_dir, "baseline", s, {"command": command, "load generator": "wrk"})
    plots.draw(img_dir)
    markdown = render(s, command, duration_s, rounds, img_dir, _triton_ratio(img_dir, next(iter(s.values()))))
    if output:
        write_section(output, "baseline", markdown)
    return markdown
