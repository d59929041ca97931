"""`tritonstack bench baseline`: the naive FastAPI + sentence-transformers service, measured with wrk.

Starts `loadtest.baselines.naive_st` on a free port, warms it up, and drives a closed loop of unique
one-sentence `/v1/embeddings` requests (the gateway bench's body) at each concurrency. Writes the `baseline`
section of docs/BENCHMARKS.md, the raw numbers to `docs/img/baseline.json`, and redraws the plots from every
bench JSON there (with Triton's series when `bench triton` saved one, the section also states the ratio).
"""

from __future__ import annotations

import json
import secrets
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from deploy.local.process import free_port
from loadtest.bench import plots
from loadtest.bench.report import machine_description, markdown_table, write_section
from loadtest.wrk import WrkResult, run_wrk

Runs = dict[str, dict[int, list[WrkResult]]]
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


NAIVE = "naive FastAPI + sentence-transformers"
GATEWAY = "gateway /v1/embeddings (cache-cold)"


@dataclass(frozen=True)
class Target:
    """A service under test: its embeddings URL and the bearer token it needs."""

    label: str
    url: str
    auth: str | None = None


def measure(targets: list[Target], concurrencies: list[int], duration_s: int, rounds: int) -> Runs:
    """Targets interleaved run by run at each concurrency; every run has its own salt (no sentence repeats)."""
    for t in targets:  # warm-up, discarded
        run_wrk(t.url, EMBED_BODY, connections=4, duration_s=2, auth=t.auth, salt=secrets.token_hex(4))
    runs: Runs = {t.label: {c: [] for c in concurrencies} for t in targets}
    for c in concurrencies:
        for _ in range(rounds):
            for t in targets:
                result = run_wrk(t.url, EMBED_BODY, connections=c, duration_s=duration_s, auth=t.auth,
                                 salt=secrets.token_hex(4))
                runs[t.label][c].append(result)
    return runs


def paired_ratios(runs: Runs) -> list[list[str]]:
    """Gateway / naive throughput per concurrency: median of per-round ratios (runs back to back)."""
    if GATEWAY not in runs:
        return []
    rows = []
    for c, naive in runs[NAIVE].items():
        ratios = [g.rps / n.rps for g, n in zip(runs[GATEWAY][c], naive, strict=True) if n.rps]
        if ratios:
            rows.append([f"gateway cache-cold / naive, c={c}", f"{statistics.median(ratios):.1f}×",
                         "≥ 7× at c=32" if c == 32 else ""])
    return rows


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


def render(s: plots.Series, ratios: list[list[str]], command: str, duration_s: int, rounds: int, img_dir: Path,
           extra: str) -> str:
    rows = [[label, str(int(p["concurrency"])), f"{p['rps']:.0f}", f"{p['p50_ms']:.1f}", f"{p['p95_ms']:.1f}",
             f"{p['p99_ms']:.1f}", str(int(p["errors"]))] for label, points in s.items() for p in points]
    rel = img_dir.name
    gateway = (" The gateway (`--gateway`) ran in the same run, interleaved run by run with the baseline, on the "
               "same machine." if ratios else "")
    return "\n\n".join(filter(None, [
        "## Naive baseline: FastAPI + sentence-transformers per request (MiniLM, CPU)",
        f"Command: `{command}`  \nMachine: {machine_description()}  \n"
        "Service: `loadtest/baselines/naive_st.py` — one uvicorn process, sync endpoint, `SentenceTransformer."
        "encode` per request, no batching across requests, no cache. Load: `wrk` (1 thread, closed loop), one "
        f"unique ~20-token sentence per request, OpenAI `/v1/embeddings` body (base64). {duration_s} s per run, "
        f"median of {rounds} run(s) per concurrency.{gateway}",
        markdown_table(["service", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"], rows),
        markdown_table(["ratio", "measured", "target"], ratios) if ratios else "",
        extra,
        f"Plots of every series saved under `docs/{rel}/` (raw numbers: `docs/{rel}/*.json`):\n\n"
        f"![throughput vs concurrency]({rel}/throughput.png)\n\n![latency percentiles]({rel}/latency.png)",
    ]))


def run(duration_s: int, concurrencies: list[int], rounds: int, output: Path | None, command: str,
        gateway: str | None = None, api_key: str | None = None) -> str:
    """Start the baseline, measure (with a running gateway when given), save JSON and plots, write the section."""
    port = free_port()
    img_dir = (output.parent if output else Path("docs")) / "img"
    log = Path("runs") / f"naive-baseline-{port}.log"
    log.parent.mkdir(exist_ok=True)
    targets = [Target(NAIVE, f"http://127.0.0.1:{port}/v1/embeddings")]
    if gateway:
        targets.append(Target(GATEWAY, gateway.rstrip("/") + "/v1/embeddings", api_key))
    proc = start_baseline(port, log)
    try:
        runs = measure(targets, sorted(concurrencies), duration_s, rounds)
    finally:
        proc.terminate()
        proc.wait(30)
    s = plots.from_wrk_runs(runs)
    plots.save_series(img_dir, "baseline", s, {"command": command, "load generator": "wrk"})
    plots.draw(img_dir)
    extra = _triton_ratio(img_dir, s[NAIVE])
    markdown = render(s, paired_ratios(runs), command, duration_s, rounds, img_dir, extra)
    if output:
        write_section(output, "baseline", markdown)
    return markdown
