"""`tritonstack bench gateway`: the embeddings gateway against direct Triton, measured in one run.

Starts its own redis-server, a Triton serving a freshly exported MiniLM repository, and two gateway processes
(`tritonstack gateway`, one with rate limits on, one with them off), all on free loopback ports. `wrk` then
measures, in the same run: direct Triton (KServe v2 JSON) vs the gateway's `/v1/embeddings` and its `/v2`
passthrough with unique sentences (never cached) at concurrency 1 (added p50 latency) and 32 (throughput ratio),
with two bare apps as floors (`loadtest.bench.floors`), alternating the order per round; then cache-hit
throughput of one gateway process (one fixed sentence) with and without rate limits. The gateway's CPU time per
request is read from /proc around every run, and `py-spy` (when installed) samples the gateway during a cache-hit
and a cache-miss run to say where that time goes.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtest.bench import floors, latency, profile
from loadtest.bench.report import cpu_seconds, machine_description, markdown_table, write_section
from loadtest.bench.triton import INFER_BODY
from loadtest.wrk import WrkResult, run_wrk
from stack.process import ManagedProcess, free_port
from stack.redis import RedisServer
from stack.triton import TritonOptions, TritonServer

MODEL = "minilm"
EMBED_BODY = '{"model":"minilm","input":"{TEXT}","encoding_format":"base64"}'
HIT_BODY = EMBED_BODY.replace("{TEXT}", "one sentence that every request repeats, so the cache answers it")
UNLIMITED = {"TRITONSTACK_GATEWAY_REQUESTS_PER_MINUTE": "1000000000",
             "TRITONSTACK_GATEWAY_TOKENS_PER_MINUTE": "1000000000000"}
HIT_RUNS = ((True, 16), (True, 32), (True, 64), (False, 32))  # (rate limits on, concurrency)
DIRECT, EMBED, PASSTHROUGH = "direct Triton (KServe v2 JSON)", "gateway /v1/embeddings", "gateway /v2 passthrough"
TARGET_ADDED_P50_MS, TARGET_RATIO, TARGET_HIT_RPS, TARGET_HIT_P99_MS = 1.0, 0.85, 3000, 10.0


@dataclass
class Gateway:
    """One running gateway process."""

    name: str
    process: ManagedProcess
    port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def cpu_s(self) -> float:
        return cpu_seconds(self.process.pid)

    def redis_errors(self) -> float:
        """Sum of `gateway_redis_errors_total` (Redis calls that failed or timed out)."""
        text = httpx.get(self.url("/metrics"), timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("gateway_redis_errors_total"))


@dataclass
class Measured:
    """One path at one concurrency over every round: medians over rounds, gateway CPU over all of them."""

    path: str
    runs: list[WrkResult]
    cpu_s: float | None = None  # gateway CPU over all runs

    @property
    def rps(self) -> float:
        return statistics.median(r.rps for r in self.runs)

    def pct(self, name: str) -> float:
        return float(statistics.median(getattr(r, name) for r in self.runs))

    @property
    def cpu_us(self) -> float | None:
        requests = sum(r.requests for r in self.runs)
        return None if self.cpu_s is None or not requests else 1e6 * self.cpu_s / requests

    @property
    def errors(self) -> int:
        return sum(r.errors + r.non2xx for r in self.runs)


@dataclass
class Stack:
    """Redis, Triton and the two gateways of one benchmark run."""

    triton: TritonServer
    limited: Gateway
    unlimited: Gateway
    key: str
    floors: dict[str, Gateway]  # label → a bare app (`floors`)


def start_gateway(tmp: Path, name: str, triton: TritonServer, redis_url: str, key: str, limits: bool) -> Gateway:
    """`tritonstack gateway` on a free port (its settings from TRITONSTACK_GATEWAY_*), ready on /healthz."""
    port = free_port()
    env = {**os.environ, **UNLIMITED,
           "TRITONSTACK_GATEWAY_TRITON_GRPC_URL": triton.grpc_url,
           "TRITONSTACK_GATEWAY_TRITON_HTTP_URL": triton.http_url,
           "TRITONSTACK_GATEWAY_REDIS_URL": redis_url,
           "TRITONSTACK_GATEWAY_API_KEYS": json.dumps([{"name": "bench", "sha256": _sha256(key)}]),
           "TRITONSTACK_GATEWAY_RATE_LIMIT_ENABLED": str(limits).lower(),
           "TRITONSTACK_GATEWAY_LOG_LEVEL": "warning"}
    argv = [str(Path(sys.executable).parent / "tritonstack"), "gateway", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning"]
    process = ManagedProcess(f"gateway-{name}", argv, env=env, log_path=tmp / f"gateway-{name}.log").start()
    gateway = Gateway(name, process, port)
    process.wait_ready(lambda: _ok(gateway.url("/healthz")), timeout=60)
    return gateway


def start_floor(tmp: Path, kind: str, triton: TritonServer) -> Gateway:
    """A bare app of `floors` on a free port, ready on /healthz."""
    port = free_port()
    process = ManagedProcess(f"floor-{kind}", floors.argv(kind, triton.grpc_url, port),
                             log_path=tmp / f"floor-{kind}.log").start()
    app = Gateway(f"floor-{kind}", process, port)
    process.wait_ready(lambda: _ok(app.url("/healthz")), timeout=60)
    return app


def _sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


class Bench:
    """Runs wrk against the stack, recording gateway CPU per run."""

    def __init__(self, stack: Stack, duration_s: int) -> None:
        self.stack = stack
        self.duration_s = duration_s
        self.direct_url = f"http://{stack.triton.http_url}/v2/models/{MODEL}/infer"
        self.runs = 0
        self.splits: dict[str, list[latency.Split]] = {}  # "direct" / "gateway": c=1 runs split by layer

    def wrk(self, url: str, body: str, c: int, gateway: Gateway | None, fixed: bool = False,
            duration_s: int | None = None) -> tuple[WrkResult, float | None]:
        self.runs += 1  # a new salt per run: unique sentences never repeat an earlier run's (cache-cold)
        before = gateway.cpu_s() if gateway is not None else None
        result = run_wrk(url, body, connections=c, duration_s=duration_s or self.duration_s,
                         auth=self.stack.key if gateway is not None else None,
                         script="fixed_text.lua" if fixed else "unique_text.lua", salt=f"run{self.runs}")
        return result, (gateway.cpu_s() - before) if gateway is not None and before is not None else None

    def paths(self) -> dict[str, tuple[str, str, Gateway | None]]:
        """Cache-cold paths: label → (url, body, the process whose CPU is read; None for Triton)."""
        gw = self.stack.limited
        paths = {DIRECT: (self.direct_url, INFER_BODY, None), EMBED: (gw.url("/v1/embeddings"), EMBED_BODY, gw),
                 PASSTHROUGH: (gw.url(f"/v2/models/{MODEL}/infer"), INFER_BODY, gw)}
        paths.update({label: (app.url("/v1/embeddings"), EMBED_BODY, app) for label, app in self.stack.floors.items()})
        return paths

    def warm_up(self) -> None:
        for url, body, gateway in self.paths().values():
            self.wrk(url, body, 8, gateway, duration_s=2)
        for gateway in (self.stack.limited, self.stack.unlimited):
            self.wrk(gateway.url("/v1/embeddings"), HIT_BODY, 8, gateway, fixed=True, duration_s=2)

    def cold(self, concurrency: int, rounds: int) -> dict[str, Measured]:
        """Every cache-cold path at `concurrency`, `rounds` times, reversing the order each round; at c=1 the
        direct and /v1/embeddings runs are also split layer by layer (`latency`, into `self.splits`)."""
        paths = self.paths()
        measured = {label: Measured(label, [], 0.0 if gw is not None else None) for label, (_, _, gw) in paths.items()}
        for r in range(rounds):
            for label in (list(paths) if r % 2 == 0 else list(reversed(paths))):
                url, body, gateway = paths[label]
                timed = concurrency == 1 and label in (DIRECT, EMBED)
                before = self._timers(gateway) if timed else None
                result, cpu = self.wrk(url, body, concurrency, gateway)
                if before is not None:
                    split = latency.Split.of(result, self._timers(gateway) - before)
                    self.splits.setdefault("gateway" if gateway is not None else "direct", []).append(split)
                _add(measured[label], result, cpu)
        return measured

    def _timers(self, gateway: Gateway | None) -> latency.Timers:
        triton = self.stack.triton.http_url
        if gateway is None:
            return latency.read(triton, MODEL)
        return latency.read(triton, MODEL, gateway.url("/metrics"), "/v1/embeddings")

    def hits(self, rounds: int) -> list[Measured]:
        """Cache hits of one process: every (gateway, concurrency) of `HIT_RUNS`, `rounds` times, order reversed
        each round."""
        runs = [(self.stack.limited if on else self.stack.unlimited, c) for on, c in HIT_RUNS]
        measured = [Measured(f"cache hit, rate limits {'on' if on else 'off'}", [], 0.0) for on, _ in HIT_RUNS]
        for r in range(rounds):
            for i in (range(len(runs)) if r % 2 == 0 else reversed(range(len(runs)))):
                gateway, c = runs[i]
                _add(measured[i], *self.wrk(gateway.url("/v1/embeddings"), HIT_BODY, c, gateway, fixed=True))
        return measured

    def profiled(self, fixed: bool) -> tuple[list[tuple[str, float]], float]:
        """(component shares, gateway CPU µs per request) while wrk runs cache hits or unique misses at c=32."""
        gateway = self.stack.limited
        body = HIT_BODY if fixed else EMBED_BODY
        holder: dict[str, list[tuple[list[str], int]]] = {}
        seconds = max(2, self.duration_s - 2)
        sampler = _background(lambda: holder.setdefault("stacks", profile.record(gateway.process.pid, seconds)))
        result, cpu = self.wrk(gateway.url("/v1/embeddings"), body, 32, gateway, fixed=fixed)
        sampler.join()
        return profile.breakdown(holder.get("stacks", [])), 1e6 * (cpu or 0.0) / max(result.requests, 1)


def _add(measured: Measured, result: WrkResult, cpu: float | None) -> Measured:
    measured.runs.append(result)
    if measured.cpu_s is not None and cpu is not None:
        measured.cpu_s += cpu
    return measured


def _background(fn: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def export_model(repository: Path) -> None:
    cli = Path(sys.executable).parent / "tritonstack"
    subprocess.run([str(cli), "export", "minilm", "--repository", str(repository)], check=True,
                   stdout=subprocess.DEVNULL)


@dataclass
class Results:
    """Everything one run measured."""

    c1: dict[str, Measured]
    c32: dict[str, Measured]
    hits: list[Measured]
    profiles: dict[str, tuple[list[tuple[str, float]], float]]
    redis_errors: float
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at the start and the end (other users)
    splits: dict[str, list[latency.Split]] | None = None


def run(duration_s: int, rounds: int, with_profile: bool, output: Path | None, command: str) -> str:
    """Start everything, measure, stop everything; write the section (unless `output` is None)."""
    key = f"sk-bench-{secrets.token_hex(8)}"
    with tempfile.TemporaryDirectory(prefix="tritonstack-gateway-bench-") as tmp_name:
        tmp = Path(tmp_name)
        export_model(tmp / "repository")
        started: list[ManagedProcess] = []
        try:
            redis = RedisServer(free_port(), log_path=tmp / "redis.log").start_and_wait()
            started.append(redis)
            triton = TritonServer(
                TritonOptions(tmp / "repository", http_port=free_port(), grpc_port=free_port(),
                              metrics_port=free_port()),
                state_dir=tmp / "state", log_path=tmp / "state" / "triton.log").start_and_wait()
            started.append(triton)
            limited = start_gateway(tmp, "limits", triton, redis.url, key, limits=True)
            started.append(limited.process)
            unlimited = start_gateway(tmp, "nolimits", triton, redis.url, key, limits=False)
            started.append(unlimited.process)
            apps = {label: start_floor(tmp, kind, triton) for kind, label in floors.LABELS.items()}
            started.extend(app.process for app in apps.values())
            results = measure(Bench(Stack(triton, limited, unlimited, key, apps), duration_s), rounds, with_profile)
        finally:
            for process in reversed(started):
                process.stop()
    markdown = render(results, command)
    if output is not None:
        write_section(output, "gateway", markdown)
    return markdown


def measure(bench: Bench, rounds: int, with_profile: bool) -> Results:
    stack = bench.stack
    load_before = os.getloadavg()[0]
    errors_before = stack.limited.redis_errors() + stack.unlimited.redis_errors()
    bench.warm_up()
    c1, c32 = bench.cold(1, rounds), bench.cold(32, rounds)
    hits = bench.hits(max(1, rounds - 1))
    profiles: dict[str, tuple[list[tuple[str, float]], float]] = {}
    if with_profile:
        try:
            profiles["cache hit (c=32, rate limits on)"] = bench.profiled(fixed=True)
            profiles["cache miss (c=32, unique sentences, rate limits on)"] = bench.profiled(fixed=False)
        except profile.ProfilerMissingError as exc:
            print(f"note: no profile: {exc}", file=sys.stderr)
    errors = stack.limited.redis_errors() + stack.unlimited.redis_errors() - errors_before
    return Results(c1, c32, hits, profiles, errors, (load_before, os.getloadavg()[0]), bench.splits)


def _row(m: Measured, concurrency: int) -> list[str]:
    cpu = f"{m.cpu_us:.0f}" if m.cpu_us is not None else "—"
    return [m.path, str(concurrency), f"{m.rps:.0f}", f"{m.pct('p50_ms'):.2f}", f"{m.pct('p95_ms'):.2f}",
            f"{m.pct('p99_ms'):.2f}", cpu, str(m.errors)]


def _rounds(n: int) -> str:
    return f"{n} round{'s' if n != 1 else ''}"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _paired(a: Measured, b: Measured, fn: Callable[[WrkResult, WrkResult], float]) -> float:
    """Median over rounds of fn(a's run, b's run), each pair measured back to back."""
    return float(statistics.median(fn(x, y) for x, y in zip(a.runs, b.runs, strict=True)))


def _targets(res: Results) -> list[list[str]]:
    p50_diff, rps_ratio = (lambda x, y: x.p50_ms - y.p50_ms), (lambda x, y: x.rps / y.rps)
    added = _paired(res.c1[EMBED], res.c1[DIRECT], p50_diff)
    ratio = _paired(res.c32[EMBED], res.c32[DIRECT], rps_ratio)
    pt_added = _paired(res.c1[PASSTHROUGH], res.c1[DIRECT], p50_diff)
    pt_ratio = _paired(res.c32[PASSTHROUGH], res.c32[DIRECT], rps_ratio)
    rows = [
        ["/v1/embeddings: added p50 latency at c=1", f"{added:+.2f} ms", f"≤ {TARGET_ADDED_P50_MS:g} ms",
         _verdict(added <= TARGET_ADDED_P50_MS)],
        ["/v1/embeddings / direct throughput at c=32", f"{ratio:.2f}×", f"≥ {TARGET_RATIO}×",
         _verdict(ratio >= TARGET_RATIO)],
        ["/v2 passthrough: added p50 latency at c=1", f"{pt_added:+.2f} ms", "—", ""],
        ["/v2 passthrough / direct throughput at c=32", f"{pt_ratio:.2f}×", "—", ""],
    ]
    for label in (label for label in floors.LABELS.values() if label in res.c1 and label in res.c32):
        rows += [[f"{label}: added p50 latency at c=1", f"{_paired(res.c1[label], res.c1[DIRECT], p50_diff):+.2f} ms",
                  "—", ""],
                 [f"{label} / direct throughput at c=32", f"{_paired(res.c32[label], res.c32[DIRECT], rps_ratio):.2f}×",
                  "—", ""]]
    for hit in (h for h in res.hits if h.path.endswith("on")):  # the targets are for the gateway as deployed
        c = hit.runs[0].connections
        ok = hit.rps >= TARGET_HIT_RPS and hit.pct("p99_ms") <= TARGET_HIT_P99_MS
        rows.append([f"{hit.path}, c={c}: req/s, p99", f"{hit.rps:.0f}, {hit.pct('p99_ms'):.1f} ms",
                     f"≥ {TARGET_HIT_RPS:,}, ≤ {TARGET_HIT_P99_MS:g} ms", _verdict(ok)])
    return rows


def _profile_text(res: Results) -> list[str]:
    if not res.profiles:
        return ["(No profile in this run: `--no-profile`, or py-spy is missing — `.venv/bin/pip install py-spy`.)"]
    parts = []
    for label, (shares, cpu_us) in res.profiles.items():
        rows = [[name, f"{100 * share:.0f}%", f"{share * cpu_us:.0f}"] for name, share in shares if share >= 0.005]
        parts.append(f"**{label}**: {cpu_us:.0f} µs of gateway CPU per request (/proc), split by py-spy's samples "
                     "of that run (idle excluded).")
        parts.append(markdown_table(["component", "share", "µs/request"], rows))
    return parts


def render(res: Results, command: str) -> str:
    """The markdown section."""
    rows = ([_row(m, 1) for m in res.c1.values()] + [_row(m, 32) for m in res.c32.values()]
            + [_row(h, h.runs[0].connections) for h in res.hits])
    rounds = len(next(iter(res.c1.values())).runs)
    on, off = (next(h for h in res.hits if h.runs[0].connections == 32 and h.path.endswith(state))
               for state in ("on", "off"))
    cost_ratio = _paired(on, off, lambda x, y: x.rps / y.rps)
    limit_cost = (on.cpu_us or 0.0) - (off.cpu_us or 0.0)
    return "\n\n".join([
        "## Gateway: overhead vs direct Triton, cache-hit throughput, cost of rate limiting (MiniLM, CPU)",
        f"Command: `{command}`  \nMachine: {machine_description()}; 1-minute load average {res.load[0]:.1f} at the "
        f"start, {res.load[1]:.1f} at the end (the machine is shared)  \n"
        "Load: `wrk` (1 thread, closed loop). Cache-cold rows: one unique ~20-token sentence per request; "
        f"direct Triton gets the KServe v2 JSON body, the gateway the OpenAI body with `encoding_format: base64` "
        f"(gRPC to Triton) or the same v2 body on its passthrough; {_rounds(rounds)} per concurrency, the order "
        "reversed each round; cells are medians over rounds, each ratio and latency difference the median of "
        "per-round values (pairs measured back to back). Cache-hit rows: one fixed sentence, one gateway process, "
        f"{_rounds(len(on.runs))}. Gateway settings: rate limits on (limits too high to refuse) unless stated, "
        "Redis and Triton on loopback; Triton, Redis, the gateway and wrk share the machine's CPUs. `CPU µs/req`: the "
        "gateway process's user+system time divided by the requests it served (at c=1 mostly the cost of waking "
        "from idle at every Redis and Triton round trip, which is high on this VM: compare the c=32 rows).",
        markdown_table(["path", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "CPU µs/req", "errors"],
                       rows),
        markdown_table(["measure", "measured", "target", ""], _targets(res)),
        "The `floor:` rows are two bare apps (`loadtest/bench/floors.py`) measured in the same rounds: one "
        "text per request through tritonclient's gRPC aio client (as the gateway calls Triton), answered with the "
        "OpenAI body, and nothing else (no validation, cache, auth, limits, metrics, coalescing): one as a FastAPI "
        "route, one as a bare ASGI app, both on uvicorn with uvloop and httptools. They show what the gateway's "
        "framework and gRPC client cost by themselves on this machine.",
        f"Rate limiting costs {limit_cost:.0f} µs of gateway CPU per cache hit (at c=32, throughput with limits "
        f"on / off: {cost_ratio:.2f}×, median of rounds). Redis errors (timeouts) during the run: "
        f"{res.redis_errors:.0f}. In a closed loop the mean latency is concurrency / throughput, so p99 ≤ 10 ms "
        "at c=32 needs well over 3,200 req/s and at c=64 over 6,400 req/s; the c=16 row is where both cache-hit "
        "targets can hold together.",
        "### Where the time goes",
        "Redis round trips per request: a cache hit makes none most of the time (the key's rate-limit lease "
        "answers; one script call per lease of up to 64 requests reads both windows and counts them); a miss adds "
        "one before Triton (the cache lookup and the cross-replica lock in one script; at low load Triton starts "
        "on the misses without waiting for it) and one after, off the response path (stores and unlock in one "
        "pipeline). Concurrent misses share Triton requests (at most 4 in flight per model version). Token usage "
        "is debited in one call per key every 50 ms, not per request. A response's head and body leave in one "
        "socket write (`gateway/http/server.py`). Native code has no Python frame of its own "
        "and shows under the event loop: uvloop's socket I/O and, on misses, the Cython core of the gRPC client.",
        *_latency_text(res),
        *_profile_text(res),
    ])


def _latency_text(res: Results) -> list[str]:
    splits = res.splits or {}
    if not splits.get("direct") or not splits.get("gateway"):
        return []
    return ["**One request at a time (c=1)**: mean milliseconds per request, split by the timers each layer exports "
            "(Triton's statistics, the gateway's backend-wait and request-duration histograms; the client's mean "
            "is duration / requests of the closed loop); medians over rounds. Means, not the p50s above.",
            markdown_table(["layer", "direct Triton", "gateway /v1/embeddings", "difference"],
                           latency.rows(splits["direct"], splits["gateway"]))]
