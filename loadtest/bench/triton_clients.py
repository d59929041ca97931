"""Which client the gateway should call Triton with: candidate clients against one Triton, in one process, one run.

`python -m loadtest.bench.triton_clients [--duration S] [--rounds N] [--output docs/BENCHMARKS.md]` starts a
Triton serving MiniLM (the repository's exported version, or `--repository`) on free loopback ports, then times
every candidate embedding one unique sentence per request, as the gateway's miss path does, on one uvloop event
loop: a closed loop at concurrency 1 (p50 latency) and 32 (requests/s), the candidates interleaved and the order
reversed each round. CPU per request is this process's user+system time (every thread: gRPC's poller included)
over the requests it made. The section `triton-clients` of the output names the command.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import uvloop

from loadtest.bench.report import machine_description, markdown_table, write_section

MODEL = "minilm"
Call = Callable[[str], Awaitable[object]]
Candidate = Callable[[str, str], Awaitable[tuple[Call, Callable[[], Awaitable[None]]]]]


async def grpc_aio(grpc_url: str, http_url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """tritonclient's `grpc.aio` client, as the gateway used it (`gateway.backends.triton_grpc`)."""
    from gateway.backends.triton_grpc import TritonGrpc

    client = TritonGrpc(grpc_url, 30.0)

    async def call(text: str) -> object:
        return await client.infer(MODEL, "", {"text": _column(text)}, None)

    return call, client.close


async def tritonclient_http_aio(grpc_url: str, http_url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """tritonclient's `http.aio` client (aiohttp), binary tensors in and out."""
    import tritonclient.http.aio as aio
    from tritonclient.http import InferInput, InferRequestedOutput

    client = aio.InferenceServerClient(http_url, conn_limit=64)
    outputs = [InferRequestedOutput("embedding", binary_data=True), InferRequestedOutput("token_count",
                                                                                          binary_data=True)]

    async def call(text: str) -> object:
        tensor = InferInput("text", [1, 1], "BYTES")
        tensor.set_data_from_numpy(_column(text), binary_data=True)
        result = await client.infer(MODEL, [tensor], outputs=outputs)
        return result.as_numpy("embedding"), result.as_numpy("token_count")

    return call, client.close


async def aiohttp_binary(grpc_url: str, http_url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """aiohttp with this project's KServe binary framing (`gateway.backends.triton_http`)."""
    from gateway.backends.triton_http import TritonHttp, triton_http_session

    session = triton_http_session(64, 30.0)
    client = TritonHttp(http_url, session, 30.0)

    async def call(text: str) -> object:
        return await client.infer(MODEL, "", {"text": _column(text)}, None)

    return call, session.close


CANDIDATES: dict[str, Candidate] = {
    "tritonclient grpc.aio (the gateway's client before)": grpc_aio,
    "tritonclient http.aio, binary tensors": tritonclient_http_aio,
    "aiohttp + KServe binary framing (`gateway/backends/triton_http.py`)": aiohttp_binary,
}


def _column(text: str) -> np.ndarray:
    return np.array([[text.encode()]], dtype=np.object_)


@dataclass
class Record:
    """One candidate over every round: per-round p50 (c=1), req/s (c=32) and CPU µs per request."""

    p50_ms: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    cpu_c1_us: list[float] = field(default_factory=list)
    cpu_c32_us: list[float] = field(default_factory=list)


_counter = itertools.count()


async def closed_loop(call: Call, concurrency: int, seconds: float) -> tuple[list[float], float, float]:
    """(latencies in s, requests/s, CPU µs per request) of `concurrency` callers for `seconds`."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await call(f"sentence {next(_counter)}: the gateway adds auth, limits and metrics in front of Triton")
            latencies.append(time.perf_counter() - started)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return latencies, len(latencies) / wall, 1e6 * cpu / max(len(latencies), 1)


async def measure(grpc_url: str, http_url: str, seconds: float, rounds: int) -> dict[str, Record]:
    """Every candidate at c=1 and c=32, `rounds` times, the order reversed each round."""
    clients = {name: await make(grpc_url, http_url) for name, make in CANDIDATES.items()}
    records = {name: Record() for name in clients}
    try:
        for call, _ in clients.values():
            await closed_loop(call, 8, 1.0)  # warm-up: connections, first-call paths
        for r in range(rounds):
            for name in (list(clients) if r % 2 == 0 else list(reversed(clients))):
                call, _ = clients[name]
                latencies, _, cpu1 = await closed_loop(call, 1, seconds)
                _, rps, cpu32 = await closed_loop(call, 32, seconds)
                rec = records[name]
                rec.p50_ms.append(1e3 * statistics.median(latencies))
                rec.rps.append(rps)
                rec.cpu_c1_us.append(cpu1)
                rec.cpu_c32_us.append(cpu32)
    finally:
        for _, close in clients.values():
            await close()
    return records


def render(records: dict[str, Record], command: str, rounds: int) -> str:
    """The markdown section."""
    med = statistics.median
    rows = [[name, f"{med(r.p50_ms):.2f}", f"{med(r.cpu_c1_us):.0f}", f"{med(r.rps):.0f}", f"{med(r.cpu_c32_us):.0f}"]
            for name, r in records.items()]
    return "\n\n".join([
        "## Triton clients for the gateway: one unique sentence per request (MiniLM, CPU)",
        f"Command: `{command}`  \nMachine: {machine_description()}",
        "Each candidate embeds one unique ~20-token sentence per request against the same Triton (KServe v2, "
        "all outputs), from one uvloop event loop in one process, as the gateway's miss path does: a closed loop "
        f"at concurrency 1 and at 32, {rounds} rounds, candidates interleaved and the order reversed each round; "
        "medians over rounds. CPU µs/request: the client process's user+system time, every thread included (gRPC "
        "completes calls on its own poller thread), over its requests; Triton's own CPU is not in it, but Triton "
        "shares the machine's CPUs with the client.",
        markdown_table(["client", "p50 ms, c=1", "CPU µs/req, c=1", "req/s, c=32", "CPU µs/req, c=32"], rows),
    ])


def _repository(given: Path | None, tmp: Path) -> Path:
    if given is not None:
        return given
    if (Path("model_repository") / MODEL / "1").is_dir():
        return Path("model_repository")
    from loadtest.bench.gateway import export_model

    export_model(tmp / "repository")
    return tmp / "repository"


def main(argv: list[str] | None = None) -> None:
    from stack.triton import TritonOptions, start_triton

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repository", type=Path)
    parser.add_argument("--output", type=Path, help="markdown file whose `triton-clients` section is replaced")
    args = parser.parse_args(argv)
    command = "python -m loadtest.bench.triton_clients " + shlex.join(
        [f"--duration={args.duration:g}", f"--rounds={args.rounds}"])
    with tempfile.TemporaryDirectory(prefix="tritonstack-clients-") as name:
        tmp = Path(name)
        opts = TritonOptions.on_free_ports(_repository(args.repository, tmp), models=[MODEL])
        triton = start_triton(opts, tmp / "state", log_path=tmp / "triton.log")
        try:
            records = uvloop.run(measure(triton.grpc_url, triton.http_url, args.duration, args.rounds))
        finally:
            triton.stop()
    markdown = render(records, command, args.rounds)
    print(markdown)
    if args.output is not None:
        write_section(args.output, "triton-clients", markdown)


if __name__ == "__main__":
    sys.exit(main())
