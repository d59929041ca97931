"""`tritonstack bench`: every standard comparison in one reproducible command, written to docs/BENCHMARKS.md.

Steps, each writing its own section (and the plots under docs/img/), in this order:

1. `triton`   — Triton direct, dynamic batching vs none, int8 vs fp32, raw in-process ONNX Runtime;
2. `baseline` — the naive FastAPI + sentence-transformers service vs Triton direct and the gateway, cache-cold
                and cache-warm, interleaved in one run on the stack `tritonstack up` runs (started on free ports,
                or the gateway at `--host`);
3. `gateway`  — the gateway's added latency and throughput vs direct Triton, cache-hit throughput, a profile;
4. `rerank`   — pairs/s of `/v1/rerank` vs direct Triton on a MiniLM-sized cross-encoder it builds and exports;
5. `jobs`     — a bulk embeddings job's items/s vs Triton alone;
6. `llm`      — SmolLM2's tokens/s, time to first token and concurrent streams (when smollm2 is exported), and
                our gateway against llama.cpp's `llama-server` on the same GGUF.

With `--host`, only the step that needs nothing but a running gateway runs (step 2, without Triton direct);
the other steps start their own servers. A summary section lists what ran, what was skipped and why.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from loadtest.bench.gateway import UNLIMITED
from loadtest.bench.report import machine_description, markdown_table, write_section
from stack.up import StackOptions, start_stack

STEPS = ("triton", "baseline", "gateway", "rerank", "jobs", "llm")
LLM_MIN_ROUNDS = 3  # a single stream's run is short: one noisy moment would move a 2-round median


@dataclass(frozen=True)
class SuiteOptions:
    """What `tritonstack bench` was asked for."""

    command: str
    output: Path = Path("docs/BENCHMARKS.md")
    repository: Path = Path("model_repository")
    host: str | None = None
    api_key: str | None = None
    concurrency: tuple[int, ...] = (1, 8, 32, 64)
    duration_s: int = 5
    rounds: int = 2
    only: tuple[str, ...] = STEPS
    job_items: int = 10_000
    llm_max_tokens: int = 128
    llm_peer: bool = True  # llama.cpp's llama-server beside our gateway (built once when missing)


@dataclass
class StepReport:
    """How one step went."""

    name: str
    status: str  # "ran" | "skipped: why" | "failed: why"
    seconds: float = 0.0


@dataclass
class SuiteReport:
    """Every step, in order, with the load average around the run."""

    steps: list[StepReport] = field(default_factory=list)
    load: tuple[float, float] = (0.0, 0.0)


def _has_version(repository: Path, model: str) -> bool:
    folder = repository / model
    return folder.is_dir() and any(p.is_dir() and p.name.isdigit() for p in folder.iterdir())


def _step_command(opts: SuiteOptions, step: str) -> str:
    return f"{opts.command} (step `{step}`)"


@contextmanager
def local_stack(opts: SuiteOptions) -> Iterator[tuple[str, str, str]]:
    """`tritonstack up`'s stack on free ports, its gateway's rate limits too high to refuse a benchmark: yields
    (gateway URL, API key, Triton HTTP host:port)."""
    with tempfile.TemporaryDirectory(prefix="tritonstack-bench-stack-") as state:
        stack = StackOptions.on_free_ports(opts.repository.resolve(), Path(state), gateway_settings=dict(UNLIMITED))
        with start_stack(stack) as started:
            yield stack.gateway_url, str(started.api_key), f"127.0.0.1:{stack.triton_http_port}"


def _triton(opts: SuiteOptions) -> str:
    from loadtest.bench import triton

    triton.run(opts.duration_s, list(opts.concurrency), False, opts.rounds, opts.output, _step_command(opts, "triton"))
    return "ran"


def _baseline(opts: SuiteOptions) -> str:
    from loadtest.bench import baseline
    from loadtest.bench.triton import INFER_BODY

    command = _step_command(opts, "baseline")
    if opts.host:
        targets = baseline.gateway_targets(opts.host, opts.api_key)
        baseline.run(opts.duration_s, list(opts.concurrency), opts.rounds, opts.output, command, targets)
        return f"ran against {opts.host}"
    with local_stack(opts) as (gateway_url, key, triton_http):
        direct = baseline.Target("Triton direct (KServe v2 JSON, batched)",
                                 f"http://{triton_http}/v2/models/minilm/infer", body=INFER_BODY)
        targets = [direct, *baseline.gateway_targets(gateway_url, key)]
        baseline.run(opts.duration_s, list(opts.concurrency), opts.rounds, opts.output, command, targets)
    return "ran"


def _gateway(opts: SuiteOptions) -> str:
    from loadtest.bench import gateway

    gateway.run(max(opts.duration_s, 5), max(opts.rounds, 2), True, opts.output, _step_command(opts, "gateway"))
    return "ran"


def _rerank(opts: SuiteOptions) -> str:
    from loadtest.bench import rerank

    rerank.run(max(opts.duration_s, 5), max(opts.rounds, 2), opts.output, _step_command(opts, "rerank"))
    return "ran"


def _jobs(opts: SuiteOptions) -> str:
    from loadtest.bench import jobs

    jobs.run(opts.repository, opts.job_items, opts.rounds, opts.output, _step_command(opts, "jobs"))
    return "ran"


def _llm(opts: SuiteOptions) -> str:
    if not _has_version(opts.repository, "smollm2"):
        return f"skipped: no smollm2 in {opts.repository} (`tritonstack export smollm2`, which `make up` runs)"
    from loadtest.bench import llm

    rounds = max(opts.rounds, LLM_MIN_ROUNDS)
    llm.run(opts.repository, opts.llm_max_tokens, 8, rounds, opts.output, _step_command(opts, "llm"), opts.llm_peer)
    return "ran"


RUNNERS: dict[str, Callable[[SuiteOptions], str]] = {
    "triton": _triton, "baseline": _baseline, "gateway": _gateway, "rerank": _rerank, "jobs": _jobs, "llm": _llm,
}


def _why_not(opts: SuiteOptions, step: str) -> str | None:
    if step not in opts.only:
        return "skipped: not selected (`--only`)"
    if opts.host and step != "baseline":
        return "skipped: `--host` measures a running gateway only (this step starts its own servers)"
    if step in {"baseline", "jobs"} and not opts.host and not _has_version(opts.repository, "minilm"):
        return f"skipped: no minilm in {opts.repository} (`tritonstack export minilm`, which `make up` runs)"
    return None


def run(opts: SuiteOptions, progress: Callable[[str], None] = print) -> SuiteReport:
    """Run every step in order; one step failing does not stop the others (its error is reported)."""
    report = SuiteReport(load=(os.getloadavg()[0], 0.0))
    for step in STEPS:
        reason = _why_not(opts, step)
        if reason is not None:
            report.steps.append(StepReport(step, reason))
            progress(f"[{step}] {reason}")
            continue
        progress(f"[{step}] running…")
        started = time.monotonic()
        try:
            status = RUNNERS[step](opts)
        except Exception as exc:  # a broken step is reported; the suite goes on
            status = f"failed: {type(exc).__name__}: {exc}"
        report.steps.append(StepReport(step, status, time.monotonic() - started))
        progress(f"[{step}] {status} ({time.monotonic() - started:.0f} s)")
    report.load = (report.load[0], os.getloadavg()[0])
    write_section(opts.output, "summary", render(opts, report))
    return report


def render(opts: SuiteOptions, report: SuiteReport) -> str:
    """The summary section: when, where, the exact command, and what each step did."""
    rows = [[f"`{s.name}`", s.status, f"{s.seconds:.0f}" if s.seconds else "—"] for s in report.steps]
    return "\n\n".join([
        "## Summary of the last `tritonstack bench`",
        f"Command: `{opts.command}`  \nRun: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  \nMachine: "
        f"{machine_description()}; 1-minute load average {report.load[0]:.1f} at the start, {report.load[1]:.1f} "
        "at the end (the machine may be shared: compare ratios within one section, not numbers across sections)",
        markdown_table(["step", "status", "seconds"], rows),
        "Each section below names the command (and step) that produced it; `tritonstack bench STEP --help` runs "
        "one step alone with more options.",
    ])
