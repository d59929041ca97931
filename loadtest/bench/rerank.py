"""`tritonstack bench rerank`: pairs/s of reranking, the gateway's `POST /v1/rerank` vs direct Triton, in one run.

Builds a cross-encoder with MiniLM's architecture and size (`loadtest.bench.cross_encoder`, random weights: the
cost is real, the scores are not), exports it with `tritonstack export hf --task rerank`, and starts Redis and
Triton (`stack.up.start_stack`, no worker or stack gateway) and one gateway process (`stack.gateway`), all on free
loopback ports. A closed loop (`loadtest.bench.closed_loop`: a request can take seconds here, which wrk's fixed
timeout and abandoned requests do not suit) then sends, at each concurrency and number of documents per request,
one query with N documents per request — direct to Triton as one KServe v2 batch of N (query, document) rows, and
through the gateway's `/v1/rerank` — both paths back to back in every round, the order reversed each round. Every
text carries the run, the client and the request, so no pair repeats and the gateway's cache never answers.
`loadtest.bench.rerank_report` writes the section.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtest.bench.closed_loop import LoopResult, run_closed_loop
from loadtest.bench.gateway import UNLIMITED
from loadtest.bench.report import write_section
from loadtest.bench.rerank_report import DIRECT, GATEWAY, PATHS, Results, render
from stack.gateway import api_key_entry, start_gateway
from stack.process import console_script, free_port
from stack.up import StackOptions, start_stack

MODEL = "rerank-bench"
DOCS = (16, 64)
CONCURRENCY = (1, 8)
WARMUP_S = 1  # each warm-up run still waits for the request it started
BACKEND_TIMEOUT_S = 600  # a busy CPU queues 8 × 64 pairs for longer than the default 30 s
# `{TEXT}` is the closed loop's unique sentence (the run, the client, the request); every document adds its
# index, so the N documents of a request differ from each other and from every other request's.
QUERY = "which passage best answers {TEXT}?"
PASSAGES = (
    "Triton batches concurrent requests on the server so that the model runs on larger inputs, which uses the "
    "hardware better than one request at a time, at the price of a short wait in the queue.",
    "A cross-encoder reads the query and the document together and returns one relevance score for the pair; it "
    "is slower than comparing two embeddings but usually ranks the candidates more accurately.",
    "The gateway checks the key, counts the request against its limits, looks every pair up in the cache and "
    "sends only the misses to the model server, then sorts the documents by their scores.",
    "Redis keeps the cached scores for a day, so a document that was already scored against the same query is "
    "answered without running the model again, whichever gateway replica receives the request.",
)


def documents(n: int) -> list[str]:
    """The `n` document templates of a request (each contains `{TEXT}`)."""
    return [f"passage {i} on {{TEXT}}: {PASSAGES[i % len(PASSAGES)]}" for i in range(n)]


def gateway_body(n: int) -> str:
    """Cohere's `/v1/rerank` request: the query and `n` documents."""
    return json.dumps({"model": MODEL, "query": QUERY, "documents": documents(n)})


def direct_body(n: int) -> str:
    """The same `n` (query, document) pairs as one KServe v2 batch: `query` and `document` BYTES [n, 1]."""
    inputs = [{"name": "query", "shape": [n, 1], "datatype": "BYTES", "data": [QUERY] * n},
              {"name": "document", "shape": [n, 1], "datatype": "BYTES", "data": documents(n)}]
    return json.dumps({"inputs": inputs})


@dataclass
class Servers:
    """Where the two paths answer, and the gateway's key."""

    triton_http: str  # host:port
    gateway_url: str
    key: str


@contextmanager
def servers(tmp: Path, key: str) -> Iterator[Servers]:
    """Redis and Triton on `tmp/repository` and one gateway (rate limits on, too high to refuse), on free ports;
    every process stopped afterwards."""
    opts = StackOptions.on_free_ports(tmp / "repository", tmp / "state", worker=False, gateway=False)
    with start_stack(opts) as stack:
        assert stack.triton is not None
        settings = {**UNLIMITED, "triton_grpc_url": stack.triton.grpc_url, "triton_http_url": stack.triton.http_url,
                    "redis_url": opts.redis_url, "api_keys": [api_key_entry("bench", key)], "log_level": "warning",
                    "backend_timeout_s": BACKEND_TIMEOUT_S}
        gateway = start_gateway(settings, port=free_port(), name="gateway-rerank", log_path=tmp / "gateway.log",
                                log_level="warning")
        try:
            yield Servers(stack.triton.http_url, gateway.url, key)
        finally:
            gateway.process.stop()


def export_model(tmp: Path) -> None:
    """Build the cross-encoder (in a child process: torch stays out of this one) and export it into
    `tmp/repository`."""
    source = tmp / MODEL
    quiet = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # no progress bars
    subprocess.run([sys.executable, "-m", "loadtest.bench.cross_encoder", str(source)], check=True,
                   stdout=subprocess.DEVNULL, env=quiet)
    subprocess.run([console_script(), "export", "hf", str(source), "--task", "rerank", "--name", MODEL,
                    "--repository", str(tmp / "repository")], check=True, stdout=subprocess.DEVNULL)


def serving(repository: Path) -> str:
    """What the export's config.pbtxt says about serving: instances, dynamic batching, max_batch_size."""
    config = (repository / MODEL / "config.pbtxt").read_text()
    instances = re.search(r"instance_group\s*{[^}]*count:\s*(\d+)", config)
    batch = re.search(r"^max_batch_size:\s*(\d+)", config, re.M)
    return ", ".join([f"{instances.group(1) if instances else 1} instance(s)",
                      "dynamic batching" if "dynamic_batching" in config else "no dynamic batching",
                      f"max_batch_size {batch.group(1) if batch else '?'}"])


class Bench:
    """Closed-loop runs of the two paths; a new salt per run keeps every run's pairs new."""

    def __init__(self, servers: Servers, duration_s: int) -> None:
        self.servers = servers
        self.duration_s = duration_s
        self.runs = 0
        self.salt = secrets.token_hex(4)  # this benchmark's: a pair never repeats one of an earlier run's

    def target(self, path: str, n: int) -> tuple[str, str, str | None]:
        """(URL, body template, bearer key) of `path` with `n` documents per request."""
        if path == GATEWAY:
            return f"{self.servers.gateway_url}/v1/rerank", gateway_body(n), self.servers.key
        return f"http://{self.servers.triton_http}/v2/models/{MODEL}/infer", direct_body(n), None

    def loop(self, path: str, n: int, c: int, duration_s: float | None = None) -> LoopResult:
        """One closed-loop run of `path` at `c` connections with `n` documents per request."""
        self.runs += 1
        url, body, key = self.target(path, n)
        return run_closed_loop(url, body, concurrency=c, duration_s=duration_s or self.duration_s, auth=key,
                               salt=f"run {self.runs} {self.salt}")

    def check(self, n: int) -> tuple[float, float]:
        """One request of the same `n` pairs on both paths: (tokens per pair, largest score difference); raises
        unless both answer every pair."""
        text = f"the check request {secrets.token_hex(4)}"
        with httpx.Client(timeout=120) as client:
            url, body, key = self.target(GATEWAY, n)
            answer = client.post(url, content=body.replace("{TEXT}", text),
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            answer.raise_for_status()
            gateway = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
            tokens = answer.json()["usage"]["total_tokens"]
            url, body, _ = self.target(DIRECT, n)
            direct = client.post(url, content=body.replace("{TEXT}", text))
            direct.raise_for_status()
            scores = next(o["data"] for o in direct.json()["outputs"] if o["name"] == "score")
        if sorted(gateway) != list(range(n)) or len(scores) != n:
            raise RuntimeError(f"the check request did not score {n} pairs on both paths")
        return tokens / n, max(abs(gateway[i] - float(scores[i])) for i in range(n))

    def warm_up(self, docs: tuple[int, ...]) -> None:
        """A short run of every path and number of documents at concurrency 1, discarded."""
        for n in docs:
            for path in PATHS:
                self.loop(path, n, 1, duration_s=WARMUP_S)

    def measure(self, docs: tuple[int, ...], concurrency: tuple[int, ...], rounds: int
                ) -> dict[tuple[str, int, int], list[LoopResult]]:
        """`rounds` rounds; in each, every (concurrency, documents) setting runs both paths back to back, the
        order of the paths reversed each round."""
        record: dict[tuple[str, int, int], list[LoopResult]] = {}
        for r in range(rounds):
            order = PATHS if r % 2 == 0 else tuple(reversed(PATHS))
            for c in concurrency:
                for n in docs:
                    for path in order:
                        record.setdefault((path, n, c), []).append(self.loop(path, n, c))
        return record


def run(duration_s: int, rounds: int, output: Path | None, command: str, docs: tuple[int, ...] = DOCS,
        concurrency: tuple[int, ...] = CONCURRENCY) -> str:
    """Build and export the model, start everything, measure, stop everything; write the section (unless `output`
    is None) and return it."""
    key = f"sk-bench-{secrets.token_hex(8)}"
    with tempfile.TemporaryDirectory(prefix="tritonstack-rerank-bench-") as tmp_name:
        tmp = Path(tmp_name)
        export_model(tmp)
        with servers(tmp, key) as started:
            bench = Bench(started, duration_s)
            tokens_per_pair, score_diff = bench.check(max(docs))
            load_before = os.getloadavg()[0]
            bench.warm_up(docs)
            runs = bench.measure(docs, concurrency, rounds)
            load = (load_before, os.getloadavg()[0])
        config = serving(tmp / "repository")
    results = Results(runs, docs, concurrency, duration_s, tokens_per_pair, score_diff, load, config)
    markdown = render(results, command)
    if output is not None:
        write_section(output, "rerank", markdown)
    return markdown
