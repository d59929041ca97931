"""`tritonstack bench baseline`: the naive FastAPI + sentence-transformers service, timed with wrk.

Starts `loadtest.baselines.naive_st` on a free port, warms it up, and drives a closed loop of unique
one-sentence `/v1/embeddings` requests (the gateway bench's body) at each concurrency. Writes the `baseline`
section of docs/BENCHMARKS.md, the raw numbers to `docs/img/baseline.json`, and redraws the plots from every
bench JSON there (with Triton's series when `bench triton` saved one, the section also states the ratio).
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from loadtest.bench import plots
from loadtest.bench.report import machine_description, markdown_table, write_section
from loadtest.wrk import WrkResult, run_wrk
from stack.process import ManagedProcess, free_port, http_ok

Runs = dict[str, dict[int, list[WrkResult]]]
EMBED_BODY = '{"model":"minilm","input":"{TEXT}","encoding_format":"base64"}'


def start_baseline(port: int, log: Path) -> ManagedProcess:
    """The naive service in its own process; returns once /health answers."""
    proc = ManagedProcess("naive-baseline", [sys.executable, "-m", "loadtest.baselines.naive_st", "--port", str(port)],
                          log_path=log)
    return proc.start_ready(lambda: http_ok(f"http://127.0.0.1:{port}/health"), timeout=120, interval=0.5)


NAIVE = "naive FastAPI + sentence-transformers"
GATEWAY = "gateway /v1/embeddings (cache-cold)"


@dataclass(frozen=True)
class Target:
    """A service under test: its URL, the bearer token it needs, the body and the wrk script that sends it
    (`unique_text.lua`: a new sentence per request; `fixed_text.lua`: the body as is, cache-warm)."""

    label: str
    url: str
    auth: str | None = None
    body: str = EMBED_BODY
    script: str = "unique_text.lua"


def measure(targets: list[Target], concurrencies: list[int], duration_s: int, rounds: int) -> Runs:
    """Targets interleaved run by run at each concurrency; every run has its own salt (no sentence repeats)."""
    for t in targets:  # warm-up, discarded
        run_wrk(t.url, t.body, connections=4, duration_s=2, auth=t.auth, script=t.script, salt=secrets.token_hex(4))
    runs: Runs = {t.label: {c: [] for c in concurrencies} for t in targets}
    for c in concurrencies:
        for r in range(rounds):
            for t in (targets if r % 2 == 0 else list(reversed(targets))):
                result = run_wrk(t.url, t.body, connections=c, duration_s=duration_s, auth=t.auth, script=t.script,
                                 salt=secrets.token_hex(4))
                runs[t.label][c].append(result)
    return runs


# (numerator, denominator, target at c=32): ratios stated when both series ran
RATIOS = (
    ("gateway /v1/embeddings (cache-cold)", NAIVE, "≥ 7×"),
    ("gateway /v1/embeddings (cache-cold)", "Triton direct (KServe v2 JSON, batched)", "≥ 0.85×"),
    ("gateway /v1/embeddings (cache-warm, one repeated sentence)", NAIVE, ""),
)


def paired_ratios(runs: Runs) -> list[list[str]]:
    """Throughput ratios per concurrency: median of per-round ratios (the two runs back to back)."""
    rows = []
    for num, den, target in RATIOS:
        if num not in runs or den not in runs:
            continue
        for c, below in runs[den].items():
            ratios = [a.rps / b.rps for a, b in zip(runs[num][c], below, strict=True) if b.rps]
            if ratios:
                rows.append([f"{_short(num)} / {_short(den)}, c={c}", f"{statistics.median(ratios):.2f}×",
                             f"{target} at c=32" if c == 32 and target else ""])
    return rows


def _short(label: str) -> str:
    return label.split(" (")[0] + (" cache-cold" if "cache-cold" in label else " cache-warm" if "warm" in label else "")


def gateway_targets(url: str, api_key: str | None) -> list[Target]:
    """A running gateway's cache-cold (unique sentences) and cache-warm (one repeated sentence) series."""
    base = url.rstrip("/") + "/v1/embeddings"
    warm_body = EMBED_BODY.replace("{TEXT}", "one sentence that every request repeats, so the cache answers it")
    return [Target(GATEWAY, base, api_key),
            Target("gateway /v1/embeddings (cache-warm, one repeated sentence)", base, api_key, warm_body,
                   "fixed_text.lua")]


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
    others = [label for label in s if label != NAIVE]
    together = (f" {', '.join(others)}: measured in the same run, interleaved run by run with the baseline (the "
                "order reversed every round), on the same machine." if others else "")
    return "\n\n".join(filter(None, [
        "## Naive baseline vs Triton and the gateway (MiniLM, CPU)",
        f"Command: `{command}`  \nMachine: {machine_description()}; 1-minute load average "
        f"{os.getloadavg()[0]:.1f} at the end  \n"
        "Baseline: `loadtest/baselines/naive_st.py` — one uvicorn process, sync endpoint, `SentenceTransformer."
        "encode` per request, no batching across requests, no cache. Load: `wrk` (1 thread, closed loop), one "
        "unique ~20-token sentence per request (the cache-warm series repeats one sentence), OpenAI "
        "`/v1/embeddings` body (base64; Triton direct gets the same sentence as a KServe v2 JSON body). "
        f"{duration_s} s per run, median of {rounds} run(s) per concurrency.{together}",
        markdown_table(["service", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"], rows),
        markdown_table(["ratio (same run)", "measured", "target"], ratios) if ratios else "",
        _errors_note(s),
        extra,
        f"Plots of every series saved under `docs/{rel}/` (raw numbers: `docs/{rel}/*.json`):\n\n"
        f"![throughput vs concurrency]({rel}/throughput.png)\n\n![latency percentiles]({rel}/latency.png)",
    ]))


def _errors_note(s: plots.Series) -> str:
    bad = [label for label, points in s.items() if any(p["errors"] for p in points)]
    return (f"**Errors in {', '.join(bad)}: those rows and their ratios are not valid measurements.**"
            if bad else "")


def run(duration_s: int, concurrencies: list[int], rounds: int, output: Path | None, command: str,
        targets: list[Target] | None = None) -> str:
    """Start the baseline, measure it with `targets` interleaved, save JSON and plots, write the section."""
    port = free_port()
    img_dir = (output.parent if output else Path("docs")) / "img"
    log = Path("runs") / f"naive-baseline-{port}.log"
    log.parent.mkdir(exist_ok=True)
    everything = [Target(NAIVE, f"http://127.0.0.1:{port}/v1/embeddings"), *(targets or [])]
    proc = start_baseline(port, log)
    try:
        runs = measure(everything, sorted(concurrencies), duration_s, rounds)
    finally:
        proc.stop()
    s = plots.from_wrk_runs(runs)
    plots.save_series(img_dir, "baseline", s, {"command": command, "load generator": "wrk"})
    plots.draw(img_dir)
    extra = "" if len(everything) > 2 else _triton_ratio(img_dir, s[NAIVE])
    markdown = render(s, paired_ratios(runs), command, duration_s, rounds, img_dir, extra)
    if output:
        write_section(output, "baseline", markdown)
    return markdown
