"""`tritonstack bench llm`: transformers `generate` vs the Triton generation model (SmolLM2-135M, CPU), and our
stack vs llama.cpp's `llama-server`, one run.

Each round measures, one after the other on one machine:
1. transformers `generate`, fp32 (the GGUF dequantised, like the export), greedy, `max_tokens` new tokens;
2. Triton (gRPC streaming, official tritonclient), one stream, greedy: tokens/s end to end (prefill included)
   and time to first token;
3. Triton with `streams` concurrent streams, greedy, different prompts: aggregate tokens/s, TTFT, and the mean
   batch size of the forward passes (from the model's own `batch_size` output); the same with a response per token
   (the requests' `max_stream_interval` 1: what coalescing a stream's tokens under load gains);
4. Triton, one stream while a long prompt arrives with a short one: the stream's longest wait between two tokens
   while the long prompt is prefilled (chunked prefill bounds it), against the long prompt's prefill time alone
   (what the stream would wait without chunks), and the short prompt's time to first token (it starts between
   the long prompt's chunks instead of after the last).
5. with the peer (`--peer`, default): our stack through its gateway (`/v1/chat/completions`, streamed) and
   llama.cpp's `llama-server` on the same GGUF, one stream and `streams` streams each, the same client and prompts
   (`loadtest.bench.llm_peer`; the server is built once by `loadtest.bench.llama_cpp`).
Step 2 runs again after step 3, and a round's ratios take the mean of its two single streams: the machine is
shared and noisy, and its load drifts while a round runs. Ratios are medians of per-round ratios. Every Triton
request of a round has a prompt of its own (tagged with the round), so only the chat template's system prompt, shared
by all, comes from the model's prefix cache, as in real traffic; a repeated prompt would be prefilled from the cache
in a later round.
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loadtest.bench.gateway import UNLIMITED
from loadtest.bench.llama_cpp import PeerUnavailableError, ensure_llama_server, start_llama_server
from loadtest.bench.llm_peer import PeerRounds, StreamingClient, gateway_endpoint, llama_server_endpoint, run_round
from loadtest.bench.llm_report import render
from loadtest.bench.llm_steps import engine_steps
from loadtest.bench.report import cpu_seconds, write_section
from stack.process import ManagedProcess, stop_all
from stack.triton import TritonServer
from stack.up import Stack, StackOptions, start_stack

MODEL = "smollm2"
PROMPTS = (
    "Write a long story about a robot who learns to paint.",
    "Explain in detail how a bicycle works, part by part.",
    "Describe a walk through a busy city market in the morning.",
    "Write a detailed recipe for vegetable soup, step by step.",
    "Explain the water cycle to a ten-year-old, with examples.",
    "Write a letter to a friend about a trip to the mountains.",
    "Describe the history of the printing press in detail.",
    "Write a story about a lighthouse keeper and a storm.",
)

LONG_REQUESTS = "\n".join(PROMPTS * 12)  # ~1,300 tokens
INTERRUPT_AFTER = 10  # the long (and short) prompt are sent once the running stream has this many tokens
SHORT = "What is the capital of France?"
PEER_THREADS = 2  # llama-server's -t: two threads, as in the comparison


@dataclass
class StreamTiming:
    """One generation as the client saw it."""

    sent: float
    arrivals: list[float] = field(default_factory=list)
    tokens: int = 0
    prompt_tokens: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # completion tokens at each arrival
    error: str | None = None
    done: bool = False

    @property
    def ttft_s(self) -> float:
        return self.arrivals[0] - self.sent

    @property
    def total_s(self) -> float:
        return self.arrivals[-1] - self.sent

    @property
    def tps(self) -> float:
        """Tokens/s from the send to the last token (prefill included)."""
        return self.tokens / self.total_s

    @property
    def decode_tps(self) -> float:
        """Tokens/s after the first token."""
        return (self.tokens - 1) / (self.arrivals[-1] - self.arrivals[0])


class TransformersBaseline:
    """transformers `generate` on the fp32 model (the GGUF dequantised), greedy, a fixed number of new tokens."""

    def __init__(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        from export.llm import smollm2

        hf_logging.disable_progress_bar()
        source = smollm2.source_dir()
        tokenizer = smollm2.load_tokenizer(source)
        self.model = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=smollm2.GGUF_FILE,
                                                          dtype=torch.float32).eval()
        self.encoded = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[0]}],
                                                     add_generation_prompt=True, return_tensors="pt",
                                                     return_dict=True)
        self.tokens_per_s(8)  # warm-up

    def tokens_per_s(self, max_tokens: int) -> float:
        """New tokens per second of `generate` (prefill included): the better of torch's default thread count and
        one thread (on a busy machine torch's OpenMP threads wait on each other, and one thread can be several
        times faster than two)."""
        import torch

        default = torch.get_num_threads()
        rates = []
        for threads in sorted({default, 1}):
            torch.set_num_threads(threads)
            with torch.no_grad():
                start = time.perf_counter()
                out = self.model.generate(**self.encoded, do_sample=False, max_new_tokens=max_tokens,
                                          min_new_tokens=max_tokens)
                elapsed = time.perf_counter() - start
            rates.append((out.shape[1] - self.encoded["input_ids"].shape[1]) / elapsed)
        torch.set_num_threads(default)
        return max(rates)


def _inputs(prompt: str, max_tokens: int, interval: int | None = None) -> list:
    import tritonclient.grpc as grpcclient

    messages = np.array([json.dumps([{"role": "user", "content": prompt}]).encode()], dtype=np.object_)
    exactly = np.array([max_tokens], dtype=np.int32)  # min_tokens = max_tokens, as the baseline's min_new_tokens
    arrays = [("messages", messages, "BYTES"), ("max_tokens", exactly, "INT32"), ("min_tokens", exactly, "INT32"),
              ("temperature", np.array([0.0], dtype=np.float32), "FP32")]
    if interval is not None:
        arrays.append(("max_stream_interval", np.array([interval], dtype=np.int32), "INT32"))
    inputs = []
    for name, array, datatype in arrays:
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def run_streams(server: TritonServer, prompts: list[str], max_tokens: int,
                interrupt: tuple[tuple[str, int], ...] = (), interval: int | None = None) -> list[StreamTiming]:
    """Send every prompt at once on one gRPC stream; wait for all final responses. The `interrupt` prompts
    ((prompt, max_tokens) each) are sent too, in order, once the first stream has `INTERRUPT_AFTER` tokens (their
    timings last). `interval`: the requests' `max_stream_interval` (None: the model's)."""
    import tritonclient.grpc as grpcclient

    events: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: events.put((time.perf_counter(), result, error)))
    timings: dict[str, StreamTiming] = {}

    def send(key: str, prompt: str, tokens: int) -> None:
        timings[key] = StreamTiming(sent=time.perf_counter())
        client.async_stream_infer(MODEL, _inputs(prompt, tokens, interval), request_id=key)

    try:
        for i, prompt in enumerate(prompts):
            send(str(i), prompt, max_tokens)
        while not all(t.done for t in timings.values()) or (interrupt and "late0" not in timings):
            at, result, error = events.get(timeout=600)
            if error is not None:
                raise RuntimeError(f"generation failed: {error}")
            timing = timings[result.get_response().id]
            timing.arrivals.append(at)
            timing.tokens = int(result.as_numpy("completion_tokens")[0])
            timing.counts.append(timing.tokens)
            timing.prompt_tokens = int(result.as_numpy("prompt_tokens")[0])
            timing.batch_sizes.append(int(result.as_numpy("batch_size")[0]))
            timing.done = bool(result.as_numpy("finish_reason")[0])
            if interrupt and "late0" not in timings and len(timings["0"].arrivals) >= INTERRUPT_AFTER:
                for i, (prompt, tokens) in enumerate(interrupt):
                    send(f"late{i}", prompt, tokens)
    finally:
        client.stop_stream()
        client.close()
    return list(timings.values())


def long_prompt(tag: str) -> str:
    """A ~1,300-token prompt that shares no cached prefix with another tag's (the model reuses cached prefixes)."""
    return f"{tag}: summarise these requests in one sentence.\n{LONG_REQUESTS}"


def interrupted(server: TritonServer, max_tokens: int, tag: str) -> dict[str, float]:
    """One stream while a long prompt arrives, a short one right behind it: the stream's longest and median gap
    between tokens from the long prompt's arrival to its first token, the long and the short prompt's times to
    first token; then the prefill time of another long prompt alone."""
    stream, late, short = run_streams(server, [PROMPTS[0]], max_tokens,
                                      interrupt=((long_prompt(f"{tag} beside"), 1), (f"{tag}: {SHORT}", 1)))
    before = [t for t in stream.arrivals if t < late.sent]
    after = [t for t in stream.arrivals if t > late.arrivals[0]]
    window = [before[-1], *(t for t in stream.arrivals if late.sent <= t <= late.arrivals[0]), *after[:1]]
    gaps = np.diff(window) * 1000
    alone = run_streams(server, [long_prompt(f"{tag} alone")], 1)[0]
    return {"max_gap_ms": float(gaps.max()), "median_gap_ms": float(np.median(gaps)),
            "late_ttft_ms": late.ttft_s * 1000, "alone_ttft_ms": alone.ttft_s * 1000,
            "short_ttft_ms": short.ttft_s * 1000,
            "late_tokens": late.prompt_tokens}


def _decode_rate(run: list[StreamTiming]) -> float:
    """Aggregate tokens/s once every stream has its first token (the prefills are done) until the last token."""
    start = max(t.arrivals[0] for t in run)
    end = max(t.arrivals[-1] for t in run)
    before = sum(max(c for a, c in zip(t.arrivals, t.counts, strict=True) if a <= start) for t in run)
    return (sum(t.tokens for t in run) - before) / (end - start)


def _cpu_s(server_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of this process (the benchmark's gRPC client) and Triton's server process
    (its frontends and backend threads; the model's stub process, which runs ONNX Runtime, not included)."""
    return {"client": cpu_seconds(), "triton": cpu_seconds(server_pid)}


def _prompts(tag: str, streams: int) -> list[str]:
    """`streams` prompts no earlier request had (the model caches prompts' prefixes)."""
    return [f"({tag}.{i}) {PROMPTS[i % len(PROMPTS)]}" for i in range(streams)]


def _aggregate(runs: list[list[StreamTiming]]) -> list[float]:
    """Aggregate tokens/s of each concurrent run: all tokens over the first send to the last response."""
    return [sum(t.tokens for t in run) / (max(t.arrivals[-1] for t in run) - min(t.sent for t in run))
            for run in runs]


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


@dataclass
class Rounds:
    """Every measurement of every round (each round: transformers, Triton 1 stream, Triton N streams)."""

    hf: list[float] = field(default_factory=list)
    single: list[StreamTiming] = field(default_factory=list)  # two per round: before and after the concurrent runs
    many: list[list[StreamTiming]] = field(default_factory=list)
    each: list[list[StreamTiming]] = field(default_factory=list)  # `many` with a response per token
    cpu: dict[str, list[float]] = field(default_factory=dict)  # host CPU ms per decode step, by run and process
    interrupts: list[dict[str, float]] = field(default_factory=list)

    def reference(self, rate: Callable[[StreamTiming], float]) -> list[float]:
        """Per round, the mean `rate` of its two single streams (run before and after its concurrent runs)."""
        return [(rate(a) + rate(b)) / 2 for a, b in zip(self.single[0::2], self.single[1::2], strict=True)]

    def summary(self) -> dict:
        aggregate, each = _aggregate(self.many), _aggregate(self.each)
        decode = [_decode_rate(run) for run in self.many]
        single = [t.tps for t in self.single]
        reference = self.reference(lambda t: t.tps)
        return {
            "hf_tps": _median(self.hf), "hf_best": max(self.hf),
            "single_tps": _median(single), "single_best": max(single),
            "single_decode_tps": _median([t.decode_tps for t in self.single]),
            "many_decode_tps": _median(decode),
            "ratio_decode": _median([d / r for d, r in
                                     zip(decode, self.reference(lambda t: t.decode_tps), strict=True)]),
            "single_ttft_ms": _median([t.ttft_s * 1000 for t in self.single]),
            "many_tps": _median(aggregate), "many_best": max(aggregate),
            "many_ttft_ms": _median([t.ttft_s * 1000 for run in self.many for t in run]),
            "many_ttft_max_ms": max(t.ttft_s * 1000 for run in self.many for t in run),
            "many_batch": _median([statistics.fmean(b for t in run for b in t.batch_sizes[1:]) for run in self.many]),
            "many_per_response": _median([sum(t.tokens for t in run) / sum(len(t.arrivals) for t in run)
                                          for run in self.many]),
            "each_tps": _median(each), "each_best": max(each),
            "ratio_each": _median([e / r for e, r in zip(each, reference, strict=True)]),
            **{f"cpu_{key}": _median(values) for key, values in self.cpu.items()},
            "ratio_single": _median([r / h for r, h in zip(reference, self.hf, strict=True)]),
            "ratio_many": _median([a / r for a, r in zip(aggregate, reference, strict=True)]),
            **{f"long_{key}": _median([i[key] for i in self.interrupts]) for key in self.interrupts[0]},
        }


def _start(repository: Path, state_dir: Path, gateway: bool) -> Stack:
    """Triton with `smollm2` only, and with `gateway` the gateway (Redis too) in front of it as `tritonstack up`
    runs it (no worker; rate limits too high to refuse a benchmark); logs under `state_dir`."""
    options = StackOptions.on_free_ports(repository, state_dir, models=[MODEL], worker=False, redis=gateway,
                                         gateway=gateway, gateway_settings={**UNLIMITED, "log_level": "warning"})
    return start_stack(options)


def _peer_binary(peer: bool) -> tuple[Path | None, str | None]:
    """llama-server's binary (built once when missing), or why the peer is left out."""
    if not peer:
        return None, "not measured (`--no-peer`)"
    try:
        return ensure_llama_server(), None
    except PeerUnavailableError as exc:
        return None, f"not measured: {exc}"


def measure(repository: Path, state_dir: Path, max_tokens: int, streams: int, rounds: int,
            peer: bool = True) -> dict:
    """Interleave transformers, Triton single-stream and Triton N-stream runs round by round (background load on
    a shared machine then hits all three alike); with `peer`, each round also runs our gateway and llama.cpp's
    `llama-server` on the same GGUF (`loadtest.bench.llm_peer`). Ratios are medians of per-round ratios."""
    from export.llm import smollm2

    binary, peer_reason = _peer_binary(peer)
    baseline = TransformersBaseline()
    logs = state_dir / "bench-llm"
    stack = _start(repository, logs, gateway=binary is not None)
    server = stack.triton
    assert server is not None
    processes: list[ManagedProcess] = []
    client: StreamingClient | None = None
    record, peer_record = Rounds(), PeerRounds()
    load_before = os.getloadavg()[0]
    try:
        run_streams(server, [PROMPTS[1]], 8)  # warm-up
        if binary is not None and stack.gateway is not None:
            llama, url = start_llama_server(binary, smollm2.source_dir() / smollm2.GGUF_FILE, threads=PEER_THREADS,
                                            parallel=streams, log_path=logs / "llama-server.log")
            processes.append(llama)
            client = StreamingClient()
            ours, other = gateway_endpoint(stack.gateway.url, str(stack.api_key), MODEL), llama_server_endpoint(url)
            for endpoint in (ours, other):  # warm-up
                client.streams(endpoint, [PROMPTS[2]], 8)
        for r in range(1, rounds + 1):
            record.hf.append(baseline.tokens_per_s(max_tokens))
            record.single.append(run_streams(server, [f"(r{r}) {PROMPTS[0]}"], max_tokens)[0])
            for name, runs, interval in (("many", record.many, None), ("each", record.each, 1)):
                before = _cpu_s(server.pid)
                runs.append(run_streams(server, _prompts(f"r{r} {name}", streams), max_tokens, interval=interval))
                for process, used in _cpu_s(server.pid).items():
                    record.cpu.setdefault(f"{name}_{process}", []).append((used - before[process]) / max_tokens * 1e3)
            record.single.append(run_streams(server, [f"(r{r}, again) {PROMPTS[0]}"], max_tokens)[0])
            record.interrupts.append(interrupted(server, max_tokens, f"Round {len(record.interrupts) + 1}"))
            if client is not None:
                run_round(client, ours, other, peer_record, r, PROMPTS, max_tokens, streams)
    finally:
        if client is not None:
            client.close()
        stop_all(processes)
        stack.stop()
    context = record.single[0].prompt_tokens + max_tokens // 2  # a stream's mean cached tokens while it decodes
    steps = engine_steps(repository, MODEL, streams, context)
    return {**record.summary(), **{f"engine_{k}": v for k, v in steps.items()}, "interrupt_after": INTERRUPT_AFTER,
            "load": (load_before, os.getloadavg()[0]),
            "peer": peer_record.summary() if client is not None else None, "peer_reason": peer_reason,
            "peer_threads": PEER_THREADS}


def run(repository: Path, max_tokens: int, streams: int, rounds: int, output: Path, command: str,
        peer: bool = True) -> str:
    """Export when missing, measure, write the `llm` section of `output`; returns the markdown."""
    from export.llm.pipeline import Smollm2Request, export_smollm2

    export_smollm2(Smollm2Request(repository=repository, if_missing=True))
    summary = measure(repository.resolve(), Path(".tritonstack").resolve(), max_tokens, streams, rounds, peer)
    markdown = render(summary, max_tokens, streams, rounds, command)
    write_section(output, "llm", markdown)
    return markdown
