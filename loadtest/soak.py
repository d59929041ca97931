"""Soak test (issue #9, item 7): a long mixed load against a fresh local stack, watching for leaks.

    .venv/bin/python -m loadtest.soak --duration 600            # the documented 10-minute run
    .venv/bin/python -m loadtest.soak --duration 15 --warmup 5  # a smoke run (tests/test_soak.py)

Starts Redis, Triton (the models of `--repository` that have weights), one jobs worker and one gateway on free
loopback ports (`stack.up.start_stack`, as `tritonstack up` does), then runs for `--duration` seconds:
embeddings clients, half cache-cold (a fresh sentence per request) and half cache-warm (a Zipf-popular hot
set), one jobs client (submit, poll, fetch the result, repeat) and, when the repository has a smollm2 export,
chat clients: one non-streamed and `--chat-streams` streamed (SSE through the gateway, Triton's decoupled model
over gRPC streams). Every `--sample-every` seconds it records the RSS, open file descriptors and established TCP
connections of the gateway, the worker, Triton's server and each python-backend stub (psutil). Verdict, after
`--warmup` seconds:
- RSS growth of each process ≤ `--max-rss-growth` (median of the last 3 samples vs the first 3 after warm-up);
- no linear growth: the least-squares slope of each process's RSS over the last `--slope-window-s` seconds
  (default: the second half of the run; MB/min) ≤ `--max-rss-slope` (a cache still filling up passes the first
  check and this one once it is full; a slow leak passes the first over a short run and fails this one);
- no fd or connection leak: the same medians differ by at most `--fd-slack` / `--conn-slack`;
- error ratio 0 (any non-2xx, transport error, wrong answer or failed job is an error).
Prints a table, optionally writes JSON (`--json`), exits 1 on any failure. The default load (`--clients builtin`)
is an asyncio/aiohttp client, not Locust: importing Locust monkey-patches the process with gevent.

`--clients locust` (issue 23's acceptance soak) replaces those clients with real ones, each in its own process
(loadtest/soak_clients.py): Locust's `mix` scenario headless with `--locust-users` users, and perf_analyzer on the
gateway's `/v2` (minilm) at `--perf-analyzer-concurrency`, `--perf-analyzer-requests` per run, runs repeated until
the deadline (skipped, with a message, without `.venv-clients`). The error-ratio check becomes: Locust's failures
0 (its stats CSV), not aborted, exit 0; every perf_analyzer run's exit code 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from loadtest.soak_clients import ClientOptions, drive_clients, locust_check, perf_check
from stack.gateway import ENV_PREFIX as GATEWAY_ENV_PREFIX
from stack.up import Stack, StackOptions, start_stack

# Gateway settings of the soak (the environment's win): rate limits on, so the limiter's Redis path is exercised,
# but far above what the soak sends; an in-process L1 cache small enough to be full before the warm-up ends. The
# default L1 keeps filling with cold requests for most of a 10-minute run, and that bounded growth would read as
# a leak.
GATEWAY_DEFAULTS: dict[str, object] = {"requests_per_minute": 10_000_000, "tokens_per_minute": 1_000_000_000,
                                       "cache_l1_size": 500}
HOT_SET = 200
WORDS = ("model", "serving", "batch", "latency", "vector", "token", "gateway", "queue", "cache", "triton")


@dataclass
class SoakOptions:
    """What to run and the pass/fail bounds."""

    repository: Path = Path("model_repository")
    duration_s: float = 600.0
    warmup_s: float = 60.0
    sample_every_s: float = 5.0
    embed_clients: int = 4
    think_s: float = 0.02  # pause between a client's requests: a steady load, not a saturation test
    job_items: int = 20
    max_rss_growth: float = 0.10
    max_rss_slope: float = 0.1  # MB/min over the slope window; noise of a few-minute run needs more (see --help)
    slope_window_s: float | None = None  # the last seconds the slope is fitted over; None: the second half
    chat_streams: int = 2
    fd_slack: int = 8
    conn_slack: int = 8
    state_dir: Path | None = None
    clients: str = "builtin"  # or "locust": Locust `mix` + perf_analyzer (loadtest/soak_clients.py)
    real_clients: ClientOptions = field(default_factory=ClientOptions)


@dataclass
class Sample:
    """One reading of one process."""

    t: float
    role: str
    rss_mb: float
    fds: int
    connections: int


@dataclass
class Report:
    """Counts, samples and the verdict of one run."""

    duration_s: float
    requests: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    clients: dict[str, dict[str, Any]] = field(default_factory=dict)  # --clients locust: what each one reported

    @property
    def ok(self) -> bool:
        """Every check passed."""
        return all(c["ok"] for c in self.checks.values())


def loadable_models(repository: Path) -> list[str]:
    """Models with at least one non-empty version directory (an un-exported smollm2 has an empty one)."""
    models = []
    for config in sorted(repository.glob("*/config.pbtxt")):
        versions = [d for d in config.parent.iterdir() if d.is_dir() and d.name.isdigit() and any(d.iterdir())]
        if versions:
            models.append(config.parent.name)
    return models


def start(opts: SoakOptions, state: Path) -> tuple[Stack, list[str]]:
    """Redis, Triton (the exported models), worker and gateway on free ports, each ready; the models served."""
    models = loadable_models(opts.repository)
    if not models:
        raise SystemExit(f"no exported model in {opts.repository}: run `tritonstack export minilm` first")
    defaults = {name: value for name, value in GATEWAY_DEFAULTS.items()
                if f"{GATEWAY_ENV_PREFIX}{name.upper()}" not in os.environ}
    stack = start_stack(StackOptions.on_free_ports(opts.repository, state, models=models, gateway_settings=defaults))
    return stack, models


def stack_processes(stack: Stack) -> dict[str, int]:
    """The processes to watch by role: gateway, worker, Triton's server, and `stub:<model>` per python stub."""
    assert stack.gateway is not None and stack.worker is not None and stack.triton is not None
    pids = {"gateway": stack.gateway.process.pid, "worker": stack.worker.process.pid, "triton": stack.triton.pid}
    for child in psutil.Process(stack.triton.pid).children(recursive=True):
        argv = child.cmdline()  # stub, model.py, shm region, 2 sizes, parent pid, backend dir, …, instance name
        if argv and argv[0].endswith("triton_python_backend_stub"):
            pids[f"stub:{argv[8] if len(argv) > 8 else child.pid}"] = child.pid
    return pids


def read_process(pid: int) -> tuple[float, int, int]:
    """(RSS in MiB, open fds, established TCP connections) of `pid`."""
    proc = psutil.Process(pid)
    conns = sum(1 for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_ESTABLISHED)
    return proc.memory_info().rss / 2**20, proc.num_fds(), conns


class Load:
    """The mixed clients; counts requests and errors per kind."""

    def __init__(self, session: aiohttp.ClientSession, opts: SoakOptions, chat: bool, deadline: float) -> None:
        self.session = session
        self.opts = opts
        self.chat = chat
        self.deadline = deadline
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.tag = uuid.uuid4().hex[:8]
        self.rng = random.Random(7)
        self.weights = [1.0 / (k + 1) ** 1.1 for k in range(HOT_SET)]

    def running(self) -> bool:
        """Until the deadline."""
        return time.monotonic() < self.deadline

    async def call(self, kind: str, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        """One request; returns the JSON (or text for NDJSON) on `expect`, else records an error and None."""
        self.requests[kind] += 1
        try:
            async with self.session.request(method, path, json=body) as resp:
                text = await resp.text()
                if resp.status != expect:
                    self.errors[f"{kind}:{resp.status}"] += 1
                    return None
                return json.loads(text) if resp.content_type == "application/json" else text
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.errors[f"{kind}:{type(exc).__name__}"] += 1
            return None

    async def embeddings(self, warm: bool) -> None:
        """Cold: a sentence no request sent before; warm: a Zipf-popular one (mostly cache hits)."""
        kind, i = ("embeddings-warm" if warm else "embeddings-cold"), 0
        while self.running():
            i += 1
            if warm:
                rank = self.rng.choices(range(HOT_SET), weights=self.weights)[0]
                text = f"popular soak question {rank} about {WORDS[rank % 10]}"
            else:
                text = f"soak {self.tag} request {id(self)}.{i} about {WORDS[i % 10]} and {WORDS[i * 7 % 10]}"
            body = await self.call(kind, "POST", "/v1/embeddings", {"model": "minilm", "input": text})
            if body is not None and len(body["data"][0]["embedding"]) != 384:
                self.errors[f"{kind}:wrong_dimension"] += 1
            await asyncio.sleep(self.opts.think_s)

    async def jobs(self) -> None:
        """Submit an embeddings job, poll until it ends, fetch the result; repeat."""
        n = 0
        while self.running():
            n += 1
            texts = [f"soak job {self.tag}.{n} item {j} on {WORDS[j % 10]}" for j in range(self.opts.job_items)]
            job = await self.call("jobs", "POST", "/v1/jobs", {"type": "embeddings", "model": "minilm",
                                                                "input": texts}, expect=202)
            while job is not None and job.get("finished_at") is None:
                await asyncio.sleep(0.2)
                job = await self.call("jobs-poll", "GET", f"/v1/jobs/{job['id']}")
            if job is None:
                continue
            if job["status"] != "succeeded":
                self.errors[f"jobs:{job['status']}"] += 1
                continue
            lines = await self.call("jobs-result", "GET", f"/v1/jobs/{job['id']}/result")
            if lines is not None and len(str(lines).splitlines()) != self.opts.job_items:
                self.errors["jobs:result_lines"] += 1

    async def chat_streams(self) -> None:
        """Streamed chat completions: SSE chunks until `data: [DONE]` (when a smollm2 export is served)."""
        while self.running():
            self.requests["chat-stream"] += 1
            body = {"model": "smollm2", "max_tokens": 24, "temperature": 0, "stream": True,
                    "messages": [{"role": "user", "content": f"Describe a colour. ({self.rng.random():.6f})"}]}
            try:
                async with self.session.post("/v1/chat/completions", json=body) as resp:
                    lines = [line.strip() async for line in resp.content if line.strip()]
                    if resp.status != 200:
                        self.errors[f"chat-stream:{resp.status}"] += 1
                    elif len(lines) < 2 or lines[-1] != b"data: [DONE]":
                        self.errors["chat-stream:unterminated"] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.errors[f"chat-stream:{type(exc).__name__}"] += 1
            await asyncio.sleep(self.opts.think_s)

    async def chats(self) -> None:
        """Short non-streamed chat completions (when a smollm2 export is served)."""
        while self.running():
            body = {"model": "smollm2", "max_tokens": 8, "temperature": 0,
                    "messages": [{"role": "user", "content": f"Name a colour. ({self.rng.random():.6f})"}]}
            answer = await self.call("chat", "POST", "/v1/chat/completions", body)
            if answer is not None and not answer.get("choices"):
                self.errors["chat:no_choices"] += 1
            await asyncio.sleep(self.opts.think_s)


async def sampler(pids: dict[str, int], every_s: float, until: float, start: float, out: list[Sample]) -> None:
    """Read every process each `every_s` until `until` (one last reading at the end)."""
    while True:
        now = time.monotonic()
        for role, pid in pids.items():
            rss, fds, conns = read_process(pid)
            out.append(Sample(round(now - start, 1), role, round(rss, 1), fds, conns))
        if now >= until:
            return
        await asyncio.sleep(min(every_s, max(0.0, until - time.monotonic())))


async def drive(url: str, key: str, pids: dict[str, int], opts: SoakOptions, chat: bool,
                state: Path | None = None) -> Report:
    """Run the clients and the sampler for the duration."""
    start = time.monotonic()
    deadline = start + opts.duration_s
    samples: list[Sample] = []
    if opts.clients == "locust":
        _, clients = await asyncio.gather(
            sampler(pids, opts.sample_every_s, deadline, start, samples),
            drive_clients(url, key, state or Path(tempfile.mkdtemp(prefix="tritonstack-soak-")), opts.real_clients,
                          opts.duration_s, chat))
        return Report(round(time.monotonic() - start, 1), samples=samples, clients=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout) as session:
        load = Load(session, opts, chat, deadline)
        clients = [load.embeddings(warm=i % 2 == 1) for i in range(opts.embed_clients)] + [load.jobs()]
        if chat:
            clients += [load.chats(), *(load.chat_streams() for _ in range(opts.chat_streams))]
        await asyncio.gather(sampler(pids, opts.sample_every_s, deadline, start, samples), *clients)
    return Report(round(time.monotonic() - start, 1), dict(load.requests), dict(load.errors), samples)


def judge(report: Report, opts: SoakOptions) -> None:
    """Fill `report.checks` (see the module docstring)."""
    if report.clients:
        report.checks["locust_failures"] = locust_check(report.clients["locust"])
        if "skipped" not in report.clients["perf_analyzer"]:
            report.checks["perf_analyzer_failed_runs"] = perf_check(report.clients["perf_analyzer"])
    else:
        total = sum(report.requests.values())
        errors = sum(report.errors.values())
        report.checks["error_ratio"] = {"value": errors / total if total else 1.0, "bound": 0.0,
                                        "ok": total > 0 and errors == 0}
    for role in dict.fromkeys(s.role for s in report.samples):
        after = [s for s in report.samples if s.role == role and s.t >= opts.warmup_s]
        if len(after) < 4:
            report.checks[f"{role}_samples"] = {"value": len(after), "bound": 4, "ok": False}
            continue
        first, last = after[:3], after[-3:]

        def median(rows: list[Sample], attr: str) -> float:
            return statistics.median(getattr(s, attr) for s in rows)

        base, end = median(first, "rss_mb"), median(last, "rss_mb")
        growth = end / base - 1
        report.checks[f"{role}_rss_growth"] = {"value": round(growth, 4), "from_mb": base, "to_mb": end,
                                               "bound": opts.max_rss_growth, "ok": growth <= opts.max_rss_growth}
        for attr, slack in (("fds", opts.fd_slack), ("connections", opts.conn_slack)):
            delta = median(last, attr) - median(first, attr)
            report.checks[f"{role}_{attr}_delta"] = {"value": delta, "from": median(first, attr),
                                                     "to": median(last, attr), "bound": slack, "ok": delta <= slack}
        window = opts.slope_window_s if opts.slope_window_s is not None else after[-1].t / 2
        tail = [s for s in after if s.t >= after[-1].t - window]
        slope = rss_slope(tail)
        report.checks[f"{role}_rss_slope"] = {"value": slope, "unit": "MB/min", "samples": len(tail),
                                              "window_s": round(window, 1),
                                              "bound": opts.max_rss_slope,
                                              "ok": slope is not None and slope <= opts.max_rss_slope}


def rss_slope(samples: list[Sample]) -> float | None:
    """Least-squares slope of RSS over time, in MB per minute (None with fewer than 3 samples)."""
    if len(samples) < 3 or len({s.t for s in samples}) < 2:
        return None
    fit = statistics.linear_regression([s.t / 60 for s in samples], [s.rss_mb for s in samples])
    return round(fit.slope, 4)


def run(opts: SoakOptions) -> Report:
    """Start the stack, soak, stop the stack; the judged report."""
    state = opts.state_dir or Path(tempfile.mkdtemp(prefix="tritonstack-soak-"))
    state.mkdir(parents=True, exist_ok=True)
    stack, models = start(opts, state)
    with stack:
        assert stack.gateway is not None and stack.api_key is not None
        pids = stack_processes(stack)
        report = asyncio.run(drive(stack.gateway.url, stack.api_key, pids, opts, chat="smollm2" in models,
                                   state=state))
    judge(report, opts)
    return report


def render(report: Report) -> str:
    """A plain-text summary."""
    lines = [f"soak: {report.duration_s:.0f}s  requests {report.requests}  errors {report.errors or 0}"]
    for name, outcome in report.clients.items():
        lines.append(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in outcome.items() if k != "errors"))
    for name, check in report.checks.items():
        detail = ", ".join(f"{k}={v}" for k, v in check.items() if k not in {"ok"})
        lines.append(f"  {'PASS' if check['ok'] else 'FAIL'}  {name}: {detail}")
    lines.append("verdict: " + ("PASS" if report.ok else "FAIL"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: exit 0 when every check passed, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=SoakOptions.repository)
    parser.add_argument("--duration", type=float, default=SoakOptions.duration_s, help="seconds of load")
    parser.add_argument("--warmup", type=float, default=None, help="seconds excluded from the growth checks "
                        "(default: 10%% of the duration)")
    parser.add_argument("--sample-every", type=float, default=SoakOptions.sample_every_s)
    parser.add_argument("--embed-clients", type=int, default=SoakOptions.embed_clients)
    parser.add_argument("--max-rss-growth", type=float, default=SoakOptions.max_rss_growth)
    parser.add_argument("--max-rss-slope", type=float, default=SoakOptions.max_rss_slope,
                        help="MB/min, least squares over the slope window (the issue's bound for an "
                        "hour: 0.1; a few minutes' sampling noise is larger)")
    parser.add_argument("--slope-window-s", type=float, default=None, help="fit the slope over the last this "
                        "many seconds (default: the second half of the run; the acceptance: 1800 of 3600)")
    parser.add_argument("--clients", choices=["builtin", "locust"], default="builtin",
                        help="builtin: the soak's aiohttp clients; locust: Locust `mix` + perf_analyzer on /v2")
    parser.add_argument("--locust-users", type=int, default=ClientOptions.locust_users, help="--clients locust")
    parser.add_argument("--perf-analyzer-concurrency", type=int, default=ClientOptions.perf_concurrency,
                        help="--clients locust; 0: no perf_analyzer")
    parser.add_argument("--perf-analyzer-requests", type=int, default=ClientOptions.perf_requests,
                        help="--clients locust: requests per perf_analyzer run (runs repeat until the deadline)")
    parser.add_argument("--chat-streams", type=int, default=SoakOptions.chat_streams,
                        help="streamed chat clients (when smollm2 is exported)")
    parser.add_argument("--state-dir", type=Path, default=None, help="logs and state (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    args = parser.parse_args(argv)
    opts = SoakOptions(repository=args.repository, duration_s=args.duration,
                       warmup_s=args.warmup if args.warmup is not None else args.duration / 10,
                       sample_every_s=args.sample_every, embed_clients=args.embed_clients,
                       max_rss_growth=args.max_rss_growth, max_rss_slope=args.max_rss_slope,
                       chat_streams=args.chat_streams, state_dir=args.state_dir,
                       slope_window_s=args.slope_window_s, clients=args.clients,
                       real_clients=ClientOptions(args.locust_users, args.perf_analyzer_concurrency,
                                                  args.perf_analyzer_requests))
    report = run(opts)
    print(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
