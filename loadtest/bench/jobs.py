"""`tritonstack bench jobs`: a bulk embedding job's items/s vs Triton's own batched throughput, and pickup latency.

One stack (`stack.up.start_stack`, `tritonstack up`'s processes on free ports: Redis, Triton, one worker, the
gateway). Per round,
back to back and in alternating order: (a) Triton alone — `batch_concurrency` gRPC requests of
`max_batch_size` unique sentences in flight, as the worker sends them, for `items` sentences; (b) one
embeddings job of `items` unique sentences through `POST /v1/jobs`, timed by the job's own timestamps
(first start → finish). Every sentence is new, so the cache never answers. Pickup latency is timed on small
jobs submitted one at a time to an idle worker (submit → the job's `started_at`).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from jobs.config import WorkerConfig
from loadtest.bench.report import cpu_seconds, machine_description, markdown_table, write_section
from stack.up import Stack, StackOptions, start_stack

MODEL = "minilm"
_WORDS = ("model", "serving", "batch", "latency", "vector", "token", "gateway", "queue", "cache", "triton")


def sentences(n: int, tag: str) -> list[str]:
    """`n` unique ~20-token sentences."""
    return [f"{tag} document {i} asks about {_WORDS[i % 10]} and {_WORDS[(i // 10) % 10]} in one short sentence"
            for i in range(n)]


async def triton_items_per_s(grpc_url: str, texts: list[str], batch: int, concurrency: int) -> float:
    """Items/s of Triton alone: `concurrency` requests of `batch` texts in flight until all are embedded."""
    from tritonclient.grpc import InferInput
    from tritonclient.grpc.aio import InferenceServerClient

    client = InferenceServerClient(grpc_url)
    batches = iter([texts[i : i + batch] for i in range(0, len(texts), batch)])

    async def loop() -> None:
        for part in batches:
            data = np.array([t.encode() for t in part], dtype=np.object_).reshape(-1, 1)
            tensor = InferInput("text", list(data.shape), "BYTES")
            tensor.set_data_from_numpy(data)
            await client.infer(MODEL, [tensor], client_timeout=120)

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.close()
    return len(texts) / elapsed


def wait_finished(client: httpx.Client, job_id: str, poll_s: float = 0.05) -> dict[str, Any]:
    """Poll a job until it has finished."""
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["finished_at"] is not None:
            return job
        time.sleep(poll_s)


def job_items_per_s(client: httpx.Client, texts: list[str]) -> tuple[float, float]:
    """(items/s from first start to finish, pickup seconds) of one embeddings job."""
    job = client.post("/v1/jobs", json={"type": "embeddings", "model": MODEL, "input": texts}).json()
    job = wait_finished(client, job["id"])
    if job["status"] != "succeeded":
        raise RuntimeError(f"benchmark job did not succeed: {job}")
    return job["progress"]["done"] / (job["finished_at"] - job["started_at"]), job["started_at"] - job["created_at"]


def pickup_latencies(client: httpx.Client, n: int) -> list[float]:
    """Submit → started, for `n` one-sentence jobs submitted one at a time (idle worker)."""
    out = []
    for text in sentences(n, f"pickup-{uuid.uuid4().hex[:6]}"):
        job = client.post("/v1/jobs", json={"type": "embeddings", "model": MODEL, "input": [text]}).json()
        job = wait_finished(client, job["id"], poll_s=0.01)
        out.append(job["started_at"] - job["created_at"])
    return out


def measure(opts: StackOptions, items: int, rounds: int) -> dict[str, list[float]]:
    """Run the stack and every measurement; raw numbers by name."""
    with start_stack(opts) as stack, httpx.Client(base_url=opts.gateway_url, timeout=120,
                                                  headers={"Authorization": f"Bearer {stack.api_key}"}) as client:
        grpc = f"127.0.0.1:{opts.triton_grpc_port}"
        concurrency = WorkerConfig().batch_concurrency
        asyncio.run(triton_items_per_s(grpc, sentences(256, "warmup"), 64, concurrency))
        results: dict[str, list[float]] = {"triton": [], "job": [], "ratio": [], "job_pickup": [], "worker_cpu": [],
                                           "triton_cpu": []}
        for r in range(rounds):
            for step in ("triton", "job") if r % 2 == 0 else ("job", "triton"):
                texts = sentences(items, f"{step}-{uuid.uuid4().hex[:8]}")
                if step == "triton":
                    results["triton"].append(asyncio.run(triton_items_per_s(grpc, texts, 64, concurrency)))
                else:
                    job_round(stack, client, texts, results)
            results["ratio"].append(results["job"][-1] / results["triton"][-1])
        results["pickup"] = pickup_latencies(client, 20)
    return results


def job_round(stack: Stack, client: httpx.Client, texts: list[str], results: dict[str, list[float]]) -> None:
    """One embeddings job of `texts`: its items/s, pickup and the worker's and Triton's CPU per 1,000 items."""
    assert stack.worker is not None and stack.triton is not None
    worker, triton = stack.worker.process.pid, stack.triton.pid
    before = cpu_seconds(worker, children=True), cpu_seconds(triton, children=True)
    rate, pickup = job_items_per_s(client, texts)
    results["worker_cpu"].append((cpu_seconds(worker, children=True) - before[0]) / len(texts) * 1000)
    results["triton_cpu"].append((cpu_seconds(triton, children=True) - before[1]) / len(texts) * 1000)
    results["job"].append(rate)
    results["job_pickup"].append(pickup)


def render(results: dict[str, list[float]], items: int, rounds: int, command: str) -> str:
    """The BENCHMARKS.md section."""
    fmt = ", ".join
    ratio = statistics.median(results["ratio"])
    pickup = sorted(results["pickup"])
    rows = [
        ["Triton alone (64-item gRPC batches, 4 in flight)", f"{statistics.median(results['triton']):.0f}",
         fmt(f"{v:.0f}" for v in results["triton"])],
        [f"embeddings job ({items:,} sentences, first start → finish)", f"{statistics.median(results['job']):.0f}",
         fmt(f"{v:.0f}" for v in results["job"])],
    ]
    return "\n\n".join([
        "## Background jobs: bulk embeddings vs Triton's batched throughput, pickup latency",
        f"Command: `{command}`  \nMachine: {machine_description()}  \n"
        "Stack: `tritonstack up`'s processes on free ports (Redis, Triton CPU with the default MiniLM config, one "
        "worker with default settings, the gateway), all on this machine. Every sentence is unique (no cache "
        f"hits). Triton alone and the job alternate over {rounds} rounds; cells are medians, the ratio is the "
        "median of per-round ratios.",
        markdown_table(["measure", "items/s (median)", "per round"], rows),
        markdown_table(["measure", "value", "target"], [
            ["job items/s ÷ Triton items/s", f"{ratio:.2f}× (rounds: {fmt(f'{v:.2f}' for v in results['ratio'])})",
             "≥ 0.9×"],
            ["pickup latency, submit → running (20 one-sentence jobs, idle worker)",
             f"p50 {statistics.median(pickup) * 1000:.0f} ms, max {pickup[-1] * 1000:.0f} ms", "—"],
            ["pickup latency of the large jobs", fmt(f"{v * 1000:.0f} ms" for v in results["job_pickup"]), "—"],
            ["CPU per 1,000 items during the job: worker / Triton",
             f"{statistics.median(results['worker_cpu']):.2f} s / {statistics.median(results['triton_cpu']):.2f} s "
             f"({statistics.median(results['worker_cpu']) / statistics.median(results['triton_cpu']):.1%})", "—"],
        ]),
    ])


def run(repository: Path, items: int, rounds: int, output: Path | None, command: str) -> str:
    """Measure and (unless `output` is None) write the `jobs` section; returns the markdown."""
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as state:
        opts = StackOptions.on_free_ports(repository, Path(state))
        markdown = render(measure(opts, items, rounds), items, rounds, command)
    if output is not None:
        write_section(output, "jobs", markdown)
    return markdown
