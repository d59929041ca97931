"""`tritonstack bench gateway`: the embeddings gateway against direct Triton, compared in one run.

Starts its own redis-server and a Triton serving a freshly exported MiniLM repository (`stack.up.start_stack`), and
two gateway processes (`stack.gateway`: `tritonstack gateway`, one with rate limits on, one with them off), all on
free loopback ports. `wrk` then times, in the same run: direct Triton (KServe v2 JSON) vs the gateway's
`/v1/embeddings` and its `/v2` passthrough with unique sentences (never cached) at concurrency 1 (added p50
latency) and 32 (throughput ratio), with two bare apps as floors (`loadtest.bench.floors`), alternating the order
per round; then cache-hit throughput of one gateway process (one fixed sentence) with and without rate limits. The
gateway's CPU time per request is read from /proc around every run, and `py-spy` (when installed) samples the
gateway during a cache-hit and a cache-miss run to say where that time goes. `loadtest.bench.gateway_report`
writes the section.

The cost of tracing: three more gateways like the rate-limited one, with OpenTelemetry on (`TRACED`): 1 % and
100 % of new traces sampled, exporting to a sink on loopback that reads and discards (`otlp_sink`: a collector
decoding spans would take CPU from the processes under test), and 100 % exporting to a closed port (collector down).
Their cache-cold `/v1/embeddings` runs take part in the same interleaved rounds. Triton stays untraced: its
exporter would send the 100 % row's spans during whichever run comes next.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtest import perf_analyzer
from loadtest.bench import floors, latency, otlp_sink, profile
from loadtest.bench.gateway_report import (
    DIRECT,
    EMBED,
    PA_DIRECT,
    PA_FLOOR,
    PA_GATEWAY,
    PASSTHROUGH,
    Measured,
    Results,
    render,
)
from loadtest.bench.gateway_tracing import TRACE_1, TRACE_100, TRACE_DOWN
from loadtest.bench.report import cpu_seconds, write_section
from loadtest.bench.triton import INFER_BODY
from loadtest.wrk import WrkResult, run_wrk
from stack.gateway import api_key_entry
from stack.gateway import start_gateway as launch_gateway
from stack.process import ManagedProcess, console_script, free_port, http_ok, stop_all
from stack.triton import TritonServer
from stack.up import StackOptions, start_stack

MODEL = "minilm"
PERF_SENTENCES = [f"sentence {i}: the gateway adds auth, limits and metrics in front of Triton" for i in range(64)]
EMBED_BODY = '{"model":"minilm","input":"{TEXT}","encoding_format":"base64"}'
HIT_BODY = EMBED_BODY.replace("{TEXT}", "one sentence that every request repeats, so the cache answers it")
UNLIMITED: dict[str, object] = {"requests_per_minute": 1_000_000_000, "tokens_per_minute": 1_000_000_000_000}
HIT_RUNS = ((True, 16), (True, 32), (True, 64), (False, 32))  # (rate limits on, concurrency)
# tracing rows: label → (sampling ratio, whether the OTLP endpoint is the sink or a closed port)
TRACED = {TRACE_1: ("0.01", True), TRACE_100: ("1", True), TRACE_DOWN: ("1", False)}


@dataclass
class Gateway:
    """One running gateway (or floor) process."""

    name: str
    process: ManagedProcess
    port: int

    def url(self, path: str) -> str:
        """The URL of `path` on it."""
        return f"http://127.0.0.1:{self.port}{path}"

    def cpu_s(self) -> float:
        """Its CPU seconds so far."""
        return cpu_seconds(self.process.pid)

    def redis_errors(self) -> float:
        """Sum of `gateway_redis_errors_total` (Redis calls that failed or timed out)."""
        text = httpx.get(self.url("/metrics"), timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("gateway_redis_errors_total"))


@dataclass
class Servers:
    """Triton, the gateways, the floors and the OTLP sink of one benchmark run."""

    triton: TritonServer
    limited: Gateway
    unlimited: Gateway
    key: str
    floors: dict[str, Gateway]  # label → a bare app (`floors`)
    traced: dict[str, Gateway]  # label → a gateway like `limited`, tracing on (`TRACED`)
    sink_url: str = ""  # the OTLP sink's base URL


def start_gateway(tmp: Path, name: str, triton: TritonServer, redis_url: str, key: str, limits: bool,
                  otel: dict[str, str] | None = None) -> Gateway:
    """`tritonstack gateway` on a free port with rate limits on or off (too high to refuse), ready on /healthz;
    tracing off unless `otel` sets OpenTelemetry's variables (the bench's own OTEL_* never leak in)."""
    settings = {**UNLIMITED, "triton_grpc_url": triton.grpc_url, "triton_http_url": triton.http_url,
                "redis_url": redis_url, "api_keys": [api_key_entry("bench", key)], "rate_limit_enabled": limits,
                "log_level": "warning"}
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    started = launch_gateway(settings, port=free_port(), name=f"gateway-{name}", log_path=tmp / f"gateway-{name}.log",
                             log_level="warning", base_env={**base, **(otel or {})})
    return Gateway(name, started.process, started.port)


def otel_env(ratio: str, endpoint: str) -> dict[str, str]:
    """OpenTelemetry's variables for a traced gateway: `ratio` of new traces sampled, OTLP to `endpoint`, the
    batch processor's default delay."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": ratio, "OTEL_SERVICE_NAME": "tritonstack-gateway-bench"}


def start_floor(tmp: Path, kind: str, triton: TritonServer) -> Gateway:
    """A bare app of `floors` on a free port, ready on /healthz."""
    port = free_port()
    process = ManagedProcess(f"floor-{kind}", floors.argv(kind, triton.http_url, port),
                             log_path=tmp / f"floor-{kind}.log")
    app = Gateway(f"floor-{kind}", process, port)
    process.start_ready(lambda: http_ok(app.url("/healthz")), timeout=60)
    return app


@contextmanager
def servers(tmp: Path, key: str) -> Iterator[Servers]:
    """Redis and Triton on `tmp/repository` (`start_stack`, no worker or stack gateway), the two gateways and the
    floors, all on free ports; every process stopped afterwards."""
    opts = StackOptions.on_free_ports(tmp / "repository", tmp / "state", worker=False, gateway=False)
    with start_stack(opts) as stack:
        assert stack.triton is not None
        started: list[ManagedProcess] = []
        try:
            gateways = []
            for name, limits in (("limits", True), ("nolimits", False)):
                gateways.append(start_gateway(tmp, name, stack.triton, opts.redis_url, key, limits))
                started.append(gateways[-1].process)
            apps = {}
            for kind, label in floors.LABELS.items():
                apps[label] = start_floor(tmp, kind, stack.triton)
                started.append(apps[label].process)
            sink_port = free_port()
            sink = ManagedProcess("otlp-sink", otlp_sink.argv(sink_port), log_path=tmp / "otlp-sink.log")
            sink_url = f"http://127.0.0.1:{sink_port}"
            started.append(sink.start_ready(lambda: http_ok(f"{sink_url}/stats"), timeout=30))
            traced = {}
            for i, (label, (ratio, up)) in enumerate(TRACED.items()):
                endpoint = sink_url if up else f"http://127.0.0.1:{free_port()}"  # nothing listens there
                traced[label] = start_gateway(tmp, f"traced{i}", stack.triton, opts.redis_url, key, True,
                                              otel_env(ratio, endpoint))
                started.append(traced[label].process)
            yield Servers(stack.triton, gateways[0], gateways[1], key, apps, traced, sink_url)
        finally:
            stop_all(started)


class Bench:
    """Runs wrk against the stack, recording gateway CPU per run."""

    def __init__(self, servers: Servers, duration_s: int) -> None:
        self.servers = servers
        self.duration_s = duration_s
        self.direct_url = f"http://{servers.triton.http_url}/v2/models/{MODEL}/infer"
        self.runs = 0
        self.splits: dict[str, list[latency.Split]] = {}  # "direct" / "gateway": c=1 runs split by layer

    def wrk(self, url: str, body: str, c: int, gateway: Gateway | None, fixed: bool = False,
            duration_s: int | None = None) -> tuple[WrkResult, float | None]:
        """One wrk run on `url` at `c` connections; (its result, `gateway`'s CPU seconds during it)."""
        self.runs += 1  # a new salt per run: unique sentences never repeat an earlier run's (cache-cold)
        before = gateway.cpu_s() if gateway is not None else None
        result = run_wrk(url, body, connections=c, duration_s=duration_s or self.duration_s,
                         auth=self.servers.key if gateway is not None else None,
                         script="fixed_text.lua" if fixed else "unique_text.lua", salt=f"run{self.runs}")
        return result, (gateway.cpu_s() - before) if gateway is not None and before is not None else None

    def paths(self) -> dict[str, tuple[str, str, Gateway | None]]:
        """Cache-cold paths: label → (url, body, the process whose CPU is read; None for Triton)."""
        gw = self.servers.limited
        paths = {DIRECT: (self.direct_url, INFER_BODY, None), EMBED: (gw.url("/v1/embeddings"), EMBED_BODY, gw),
                 PASSTHROUGH: (gw.url(f"/v2/models/{MODEL}/infer"), INFER_BODY, gw)}
        floor_apps = self.servers.floors.items()
        paths.update({label: (app.url("/v1/embeddings"), EMBED_BODY, app) for label, app in floor_apps})
        paths.update({label: (g.url("/v1/embeddings"), EMBED_BODY, g) for label, g in self.servers.traced.items()})
        return paths

    def sink_stats(self) -> dict[str, int]:
        """What the OTLP sink received so far (export requests, bytes)."""
        return httpx.get(f"{self.servers.sink_url}/stats", timeout=10).json()

    def warm_up(self) -> None:
        """Short runs of every path, discarded."""
        for url, body, gateway in self.paths().values():
            self.wrk(url, body, 8, gateway, duration_s=2)
        for gateway in (self.servers.limited, self.servers.unlimited):
            self.wrk(gateway.url("/v1/embeddings"), HIT_BODY, 8, gateway, fixed=True, duration_s=2)

    def cold(self, concurrency: int, rounds: int) -> dict[str, Measured]:
        """Every cache-cold path at `concurrency`, `rounds` times, reversing the order each round; at c=1 the
        direct and /v1/embeddings runs are also split layer by layer (`latency`, into `self.splits`)."""
        paths = self.paths()
        record = {label: Measured(label, [], 0.0 if gw is not None else None) for label, (_, _, gw) in paths.items()}
        for r in range(rounds):
            for label in (list(paths) if r % 2 == 0 else list(reversed(paths))):
                url, body, gateway = paths[label]
                timed = concurrency == 1 and label in (DIRECT, EMBED)
                before = self._timers(gateway) if timed else None
                result, cpu = self.wrk(url, body, concurrency, gateway)
                if before is not None:
                    split = latency.Split.of(result, self._timers(gateway) - before)
                    self.splits.setdefault("gateway" if gateway is not None else "direct", []).append(split)
                _add(record[label], result, cpu)
        return record

    def _timers(self, gateway: Gateway | None) -> latency.Timers:
        """Triton's statistics, and `gateway`'s request timers unless None."""
        triton = self.servers.triton.http_url
        if gateway is None:
            return latency.read(triton, MODEL)
        return latency.read(triton, MODEL, gateway.url("/metrics"), "/v1/embeddings")

    def hits(self, rounds: int) -> list[Measured]:
        """Cache hits of one process: every (gateway, concurrency) of `HIT_RUNS`, `rounds` times, order reversed
        each round."""
        runs = [(self.servers.limited if on else self.servers.unlimited, c) for on, c in HIT_RUNS]
        record = [Measured(f"cache hit, rate limits {'on' if on else 'off'}", [], 0.0) for on, _ in HIT_RUNS]
        for r in range(rounds):
            for i in (range(len(runs)) if r % 2 == 0 else reversed(range(len(runs)))):
                gateway, c = runs[i]
                _add(record[i], *self.wrk(gateway.url("/v1/embeddings"), HIT_BODY, c, gateway, fixed=True))
        return record

    def perf(self, rounds: int, tmp: Path) -> dict[tuple[str, int], list[perf_analyzer.PerfResult]]:
        """perf_analyzer on /v2, direct Triton, through the gateway and through the bare ASGI relay, at c=1 and
        c=32, `rounds` times each."""
        data = perf_analyzer.sentences_file(tmp, PERF_SENTENCES)
        gateway = self.servers.limited
        paths = {PA_DIRECT: (self.servers.triton.http_url, None), PA_GATEWAY: (f"127.0.0.1:{gateway.port}",
                                                                                 self.servers.key)}
        floor = self.servers.floors.get(floors.LABELS["asgi"])
        if floor is not None:  # the bare ASGI app relays /v2 as it comes: the passthrough's floor
            paths[PA_FLOOR] = (f"127.0.0.1:{floor.port}", None)
        record: dict[tuple[str, int], list[perf_analyzer.PerfResult]] = {}
        for c in (1, 32):
            for r in range(rounds):
                for label in (list(paths) if r % 2 == 0 else list(reversed(paths))):
                    address, key = paths[label]
                    try:
                        result = perf_analyzer.measure(address, MODEL, c, data, key=key)
                    except RuntimeError as exc:
                        if label != PA_FLOOR:
                            raise
                        print(f"note: no perf_analyzer floor rows: {exc}", file=sys.stderr)  # the floor is optional
                        del paths[PA_FLOOR]
                        record = {k: v for k, v in record.items() if k[0] != PA_FLOOR}
                        continue
                    record.setdefault((label, c), []).append(result)
        return record

    def profiled(self, fixed: bool) -> tuple[list[tuple[str, float]], float]:
        """(component shares, gateway CPU µs per request) while wrk runs cache hits or unique misses at c=32."""
        gateway = self.servers.limited
        body = HIT_BODY if fixed else EMBED_BODY
        holder: dict[str, list[tuple[list[str], int]]] = {}
        seconds = max(2, self.duration_s - 2)
        sampler = _background(lambda: holder.setdefault("stacks", profile.record(gateway.process.pid, seconds)))
        result, cpu = self.wrk(gateway.url("/v1/embeddings"), body, 32, gateway, fixed=fixed)
        sampler.join()
        return profile.breakdown(holder.get("stacks", [])), 1e6 * (cpu or 0.0) / max(result.requests, 1)


def _add(record: Measured, result: WrkResult, cpu: float | None) -> Measured:
    """Append a run (and its gateway CPU) to a path's record."""
    record.runs.append(result)
    if record.cpu_s is not None and cpu is not None:
        record.cpu_s += cpu
    return record


def _background(fn: Callable[[], object]) -> threading.Thread:
    """Run `fn` in a daemon thread."""
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def export_model(repository: Path) -> None:
    """`tritonstack export minilm` into `repository`."""
    subprocess.run([console_script(), "export", "minilm", "--repository", str(repository)], check=True,
                   stdout=subprocess.DEVNULL)


def run(duration_s: int, rounds: int, with_profile: bool, output: Path | None, command: str) -> str:
    """Start everything, run the benchmark, stop everything; write the section (unless `output` is None)."""
    key = f"sk-bench-{secrets.token_hex(8)}"
    with tempfile.TemporaryDirectory(prefix="tritonstack-gateway-bench-") as tmp_name:
        tmp = Path(tmp_name)
        export_model(tmp / "repository")
        with servers(tmp, key) as started:
            results = measure(Bench(started, duration_s), rounds, with_profile, tmp)
    markdown = render(results, command)
    if output is not None:
        write_section(output, "gateway", markdown)
    return markdown


def measure(bench: Bench, rounds: int, with_profile: bool, tmp: Path) -> Results:
    """Warm up, then the cache-cold rounds at c=1 and c=32, the cache hits, perf_analyzer's rows and (optionally)
    the profiles."""
    gateways = (bench.servers.limited, bench.servers.unlimited, *bench.servers.traced.values())
    load_before = os.getloadavg()[0]
    errors_before = sum(g.redis_errors() for g in gateways)
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
    perf, perf_missing = None, None
    try:
        perf = bench.perf(rounds, tmp)
    except perf_analyzer.PerfAnalyzerMissingError as exc:
        perf_missing = str(exc)
        print(f"note: no perf_analyzer rows: {exc}", file=sys.stderr)
    errors = sum(g.redis_errors() for g in gateways) - errors_before
    return Results(c1, c32, hits, profiles, errors, (load_before, os.getloadavg()[0]), bench.splits, perf,
                   perf_missing, bench.sink_stats())
