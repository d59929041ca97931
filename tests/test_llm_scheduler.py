"""The continuous-batching scheduler (`llm_scheduler`) on a stand-in decoder, without a server or the real model:
batching and capacity, prefill groups, chunked prefill (cancelled, failing, passed by short prompts), the sender
thread, and responses coalesced under load; and on a tiny real graph in the GPU target's configuration (unpadded),
the passes GroupQueryAttention accepts."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.llm_fakes import Pieces, slots, tiny_graph
from triton_models.llm_engine import KVSlots
from triton_models.llm_text import SamplingParams, TextStream

TRITON_PYTHON = Path(__file__).parents[1] / "triton_models"


class FakeDecoder:
    """Logits that always pick token (last + 1); counts forward passes and their batch sizes."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.passes: list[tuple[str, int]] = []  # (kind, rows or prompt tokens) of every forward pass

    def _logits(self, last: int) -> np.ndarray:
        out = np.zeros(16, dtype=np.float32)
        out[(last + 1) % 16] = 1.0
        return out

    def prefill(self, ids: list[int], prefixes=None):
        self.batches.append(1)
        return self._logits(ids[-1]), slots([len(ids)])

    def prefill_many(self, prompts: list[list[int]], prefixes=None):
        self.batches.append(len(prompts))
        self.passes.append(("prefill", len(prompts)))
        return np.stack([self._logits(ids[-1]) for ids in prompts]), slots([len(ids) for ids in prompts])

    def prefill_start(self, ids: list[int], prefixes=None) -> FakePrefill:
        return FakePrefill(self, ids)

    def decode(self, last: list[int], batch: KVSlots):
        self.batches.append(len(last))
        self.passes.append(("decode", len(last)))
        grown = batch.reserve(batch.width + 1)
        assert grown is batch, "the scheduler sizes a batch for its rows' last tokens: decode never grows it"
        grown.lengths += 1
        return np.stack([self._logits(t) for t in last]), grown


class FakePrefill:
    """`llm_engine.PromptPrefill` of the fake decoder: `chunk` prompt tokens per pass."""

    def __init__(self, decoder: FakeDecoder, prompt: list[int]) -> None:
        self.decoder, self.prompt, self.done = decoder, prompt, 0
        self.slots = slots([0])

    def advance(self, chunk: int):
        n = min(chunk, len(self.prompt) - self.done)
        self.done += n
        self.decoder.passes.append(("chunk", n))
        if self.done < len(self.prompt):
            return None
        self.slots = slots([len(self.prompt)])
        return self.decoder._logits(self.prompt[-1])


class Recorder:
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.finished: tuple[str, int] | None = None
        self.error: str | None = None
        self.logprobs: list[str] = []  # each response's log-probability entries (JSON)

    def token(self, text: str, info) -> None:
        self.tokens.append(text)
        self.logprobs.append(info.logprobs)

    def finish(self, text: str, reason: str, info) -> None:
        self.tokens.append(text)
        self.logprobs.append(info.logprobs)
        self.finished = (reason, info.completion_tokens)

    def fail(self, message: str) -> None:
        self.error = message

    def cancelled(self) -> bool:
        return False


def _run(scheduler, until) -> None:
    """Start `scheduler`, wait until `until()` holds (10 s at most), stop it."""
    scheduler.start()
    deadline = time.monotonic() + 10
    while not until() and time.monotonic() < deadline:
        time.sleep(0.01)
    scheduler.stop()


@pytest.fixture
def scheduling(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(TRITON_PYTHON))  # the served model imports its helpers as top-level modules
    import llm_scheduler

    yield llm_scheduler
    for name in ("llm_scheduler", "llm_requests", "llm_prefix", "llm_engine", "llm_text", "llm_logprobs"):
        sys.modules.pop(name, None)


def test_scheduler_batches_rows_and_enforces_capacity(scheduling) -> None:
    decoder = FakeDecoder()
    limits = scheduling.Limits(max_batch_size=2, max_kv_tokens=40, max_context=20)
    scheduler = scheduling.Scheduler(decoder, limits, eos_token_ids=(15,))

    def sequence(prompt: list[int], max_tokens: int) -> tuple:
        sink = Recorder()
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0, seed=None)
        return scheduling.Sequence(prompt, params, sink, TextStream(Pieces(), ()), np.random.default_rng()), sink

    first, a = sequence([0, 1], 4)
    second, b = sequence([2], 3)
    scheduler.submit(first)
    scheduler.submit(second)
    with pytest.raises(scheduling.OverloadedError):  # two in flight = max_batch_size
        scheduler.submit(sequence([0], 1)[0])
    _run(scheduler, until=lambda: a.finished is not None and b.finished is not None)
    assert a.finished == ("length", 4) and b.finished == ("length", 3)
    assert "".join(a.tokens) == " is Paris." and "".join(b.tokens) == " Paris."
    assert 2 in decoder.batches  # both rows decoded in the same forward passes
    with pytest.raises(ValueError):  # prompt + max_tokens beyond the context
        scheduler.submit(sequence([0] * 15, 10)[0])
    big = scheduling.Scheduler(decoder, scheduling.Limits(max_batch_size=8, max_kv_tokens=30, max_context=20), ())
    big.submit(sequence([0] * 10, 5)[0])
    with pytest.raises(scheduling.OverloadedError):  # 2 rows × 16 slots at their longest > 30 slots
        big.submit(sequence([0] * 10, 6)[0])


def test_a_request_sent_on_the_final_response_is_accepted(scheduling) -> None:
    """A full batch: once a row's final response is decided it no longer counts against capacity, so a client that
    sends its next request the moment that response arrives (before the row leaves the batch) is admitted."""
    scheduler = scheduling.Scheduler(FakeDecoder(), scheduling.Limits(max_batch_size=1, max_kv_tokens=40,
                                                                        max_context=20), eos_token_ids=(15,))
    params = SamplingParams(max_tokens=2, temperature=0.0, top_p=1.0, seed=None)

    def sequence(prompt: list[int]):
        return scheduling.Sequence(prompt, params, Recorder(), TextStream(Pieces(), ()), np.random.default_rng())

    first = sequence([0, 1])
    scheduler.submit(first)
    with pytest.raises(scheduling.OverloadedError):
        scheduler.submit(sequence([2]))
    first.done = True  # what the scheduler sets when it posts the final response, before the row leaves
    follow_up = sequence([2])
    scheduler.submit(follow_up)
    _run(scheduler, until=lambda: follow_up.sink.finished is not None)
    assert follow_up.sink.finished == ("length", 2)


def test_prompts_admitted_together_prefill_in_groups_of_similar_length(scheduling) -> None:
    params = SamplingParams(max_tokens=4, temperature=0.0, top_p=1.0, seed=None)

    def seq(n: int):
        return scheduling.Sequence([0] * n, params, Recorder(), TextStream(Pieces(), ()), np.random.default_rng())

    groups = scheduling.prefill_groups([seq(n) for n in (40, 12, 10, 11, 38, 300)])
    assert [[len(s.prompt) for s in g] for g in groups] == [[10, 11, 12], [38, 40], [300]]
    assert scheduling.prefill_groups([]) == []
    decoder = FakeDecoder()
    scheduler = scheduling.Scheduler(decoder, scheduling.Limits(max_batch_size=4, max_kv_tokens=400), ())
    sinks = [Recorder() for _ in range(3)]
    for sink, n in zip(sinks, (3, 4, 5), strict=True):
        scheduler.submit(scheduling.Sequence([0] * (n - 1) + [1], params, sink, TextStream(Pieces(), ()),
                                             np.random.default_rng()))
    _run(scheduler, until=lambda: all(s.finished is not None for s in sinks))
    assert all(s.finished == ("length", 4) for s in sinks)
    assert decoder.batches[0] == 3  # the three waiting prompts: one prefill pass


def _submit_greedy(scheduling, scheduler, prompt: list[int], max_tokens: int) -> Recorder:
    """Submit a greedy request whose tokens read " t<id>"; its recorder."""
    sink = Recorder()
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0, seed=None)
    scheduler.submit(scheduling.Sequence(prompt, params, sink, TextStream(Numbered(), ()), np.random.default_rng()))
    return sink


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps_of_the_running_rows(scheduling) -> None:
    decoder = FakeDecoder()
    limits = scheduling.Limits(max_batch_size=4, max_kv_tokens=400, prefill_chunk=4)
    scheduler = scheduling.Scheduler(decoder, limits, ())

    def submit(prompt: list[int], max_tokens: int) -> Recorder:
        return _submit_greedy(scheduling, scheduler, prompt, max_tokens)

    running, long = submit([0], 8), submit(list(range(10)), 3)
    assert scheduler.in_flight() == 2
    _run(scheduler, until=lambda: running.finished is not None and long.finished is not None)
    # the short prompt starts at once; the 10-token prompt (over the 4-token budget) comes in chunks of 4, 4, 2,
    # each followed by a decode step of the running row, then joins the batch
    assert decoder.passes[:8] == [("prefill", 1), ("decode", 1), ("chunk", 4), ("decode", 1), ("chunk", 4),
                                  ("decode", 1), ("chunk", 2), ("decode", 2)]
    assert running.finished == ("length", 8) and long.finished == ("length", 3)
    assert "".join(long.tokens) == " t10 t11 t12"  # first token from the last chunk's logits, then decoded


class CancelledLater(Recorder):
    """A client that goes away after the scheduler has asked `calls` times whether it did."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls = calls

    def cancelled(self) -> bool:
        self.calls -= 1
        return self.calls < 0


class FailingPrefill(FakePrefill):
    def advance(self, chunk: int):
        if self.done:
            raise RuntimeError("out of memory")
        return super().advance(chunk)


def test_a_chunked_prompt_can_be_cancelled_or_fail_between_chunks(scheduling) -> None:
    params = SamplingParams(max_tokens=6, temperature=0.0, top_p=1.0, seed=None)

    def run(decoder: FakeDecoder, long_sink: Recorder) -> Recorder:
        scheduler = scheduling.Scheduler(decoder, scheduling.Limits(max_batch_size=4, max_kv_tokens=400,
                                                                    prefill_chunk=4), ())
        running = Recorder()
        for prompt, sink in (([0], running), (list(range(10)), long_sink)):
            scheduler.submit(scheduling.Sequence(prompt, params, sink, TextStream(Numbered(), ()),
                                                 np.random.default_rng()))
        scheduler.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(r.finished is None and r.error is None
                                                  for r in (running, long_sink)):
            time.sleep(0.01)
        scheduler.stop()
        return running

    decoder = FakeDecoder()
    gone = CancelledLater(calls=2)  # asked at admission and before the first chunk: gone before the second
    running = run(decoder, gone)
    assert gone.error == "request cancelled" and not gone.tokens
    assert running.finished == ("length", 6)  # the running stream goes on alone
    assert [kind for kind, _ in decoder.passes].count("chunk") == 1 and ("decode", 2) not in decoder.passes

    failing = FakeDecoder()
    failing.prefill_start = lambda ids, prefixes=None: FailingPrefill(failing, ids)  # type: ignore[method-assign]
    broken = Recorder()
    running = run(failing, broken)
    # a failed forward pass fails the rows it could have touched: the chunked prompt and the running batch
    assert broken.error is not None and "out of memory" in broken.error
    assert running.error is not None and "out of memory" in running.error


class GatedPrefill(FakePrefill):
    """A chunked prefill whose first chunk waits for `release` (and says when it started)."""

    def __init__(self, decoder: FakeDecoder, prompt: list[int], started: threading.Event,
                 release: threading.Event) -> None:
        super().__init__(decoder, prompt)
        self.started, self.release = started, release

    def advance(self, chunk: int):
        if not self.done:
            self.started.set()
            assert self.release.wait(10)
        return super().advance(chunk)


def test_short_prompts_start_during_a_chunked_prefill_and_the_long_prompt_keeps_half_the_budget(scheduling) -> None:
    decoder = FakeDecoder()
    started, release = threading.Event(), threading.Event()
    decoder.prefill_start = lambda ids, prefixes=None: GatedPrefill(  # type: ignore[method-assign]
        decoder, ids, started, release)
    scheduler = scheduling.Scheduler(decoder, scheduling.Limits(max_batch_size=4, max_kv_tokens=400,
                                                                prefill_chunk=4), ())

    def submit(prompt: list[int], max_tokens: int) -> Recorder:
        return _submit_greedy(scheduling, scheduler, prompt, max_tokens)

    long = submit(list(range(10)), 2)
    scheduler.start()
    assert started.wait(10)  # the long prompt's first chunk is being computed
    medium = submit([1, 2, 3], 2)  # 3 tokens: over half the budget, waits for the long prompt
    short = submit([5, 6], 3)  # 2 tokens: fits half the budget, passes the medium one
    release.set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(s.finished is None for s in (long, medium, short)):
        time.sleep(0.01)
    scheduler.stop()
    assert decoder.passes[:8] == [
        ("chunk", 4),  # the long prompt alone
        ("prefill", 1), ("chunk", 2), ("decode", 1),  # the short one starts; the chunk gets what it left
        ("chunk", 4), ("decode", 2),  # the long prompt's last chunk; it joins the short one
        ("prefill", 1), ("decode", 1),  # the medium one, once no prompt is chunked (the others are done)
    ]
    assert "".join(short.tokens) == " t7 t8 t9" and "".join(long.tokens) == " t10 t11"
    assert "".join(medium.tokens) == " t4 t5"


class GatedDecoder(FakeDecoder):
    """A prefill that waits for `release` (and says when it started): the scheduler is caught mid-prefill."""

    def __init__(self) -> None:
        super().__init__()
        self.started, self.release = threading.Event(), threading.Event()

    def prefill_many(self, prompts: list[list[int]], prefixes=None):
        self.started.set()
        assert self.release.wait(10)
        return super().prefill_many(prompts, prefixes)


def test_prompts_being_prefilled_count_against_capacity(scheduling) -> None:
    decoder = GatedDecoder()
    scheduler = scheduling.Scheduler(decoder, scheduling.Limits(max_batch_size=1, max_kv_tokens=400), ())
    params = SamplingParams(max_tokens=3, temperature=0.0, top_p=1.0, seed=None)

    def sequence(sink: Recorder):
        return scheduling.Sequence([0], params, sink, TextStream(Numbered(), ()), np.random.default_rng())

    first = Recorder()
    scheduler.submit(sequence(first))
    scheduler.start()
    try:
        assert decoder.started.wait(10)  # taken from the queue, not in the batch yet
        assert scheduler.in_flight() == 1
        with pytest.raises(scheduling.OverloadedError):
            scheduler.submit(sequence(Recorder()))
    finally:
        decoder.release.set()
    deadline = time.monotonic() + 10
    while first.finished is None and time.monotonic() < deadline:
        time.sleep(0.01)
    scheduler.stop()
    assert first.finished == ("length", 3)


class Breaking(Recorder):
    """A sink whose client goes away: sending its `fail_at`-th token raises; optionally reports cancellation."""

    def __init__(self, fail_at: int = 0, cancel_after: int = 0) -> None:
        super().__init__()
        self.fail_at, self.cancel_after, self.thread = fail_at, cancel_after, ""

    def token(self, text: str, info) -> None:
        self.thread = threading.current_thread().name
        if len(self.tokens) + 1 == self.fail_at:
            raise RuntimeError("stream closed")
        super().token(text, info)

    def cancelled(self) -> bool:
        return bool(self.cancel_after) and len(self.tokens) >= self.cancel_after


class Numbered:
    """A stand-in tokenizer for any id."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(f" t{i}" for i in ids)


class PacedDecoder(FakeDecoder):
    """Steps that take a while, as real ones do (the sender thread sees a cancellation well before the end)."""

    def decode(self, last: list[int], batch: KVSlots):
        time.sleep(0.03)
        return super().decode(last, batch)


def test_responses_leave_through_the_sender_thread_and_a_broken_stream_ends_only_its_request(scheduling) -> None:
    decoder = PacedDecoder()
    scheduler = scheduling.Scheduler(decoder, scheduling.Limits(max_batch_size=4, max_kv_tokens=400), ())
    params = SamplingParams(max_tokens=15, temperature=0.0, top_p=1.0, seed=None)
    sinks = {"ok": Recorder(), "broken": Breaking(fail_at=2), "cancelled": Breaking(cancel_after=3)}
    for sink in sinks.values():
        scheduler.submit(scheduling.Sequence([0], params, sink, TextStream(Numbered(), ()), np.random.default_rng()))
    _run(scheduler, until=lambda: sinks["ok"].finished is not None and all(
        s.error is not None for s in (sinks["broken"], sinks["cancelled"])))
    assert sinks["ok"].finished == ("length", 15)
    assert sinks["broken"].error is not None and "stream closed" in sinks["broken"].error
    assert sinks["broken"].tokens == [sinks["ok"].tokens[0]] and sinks["broken"].finished is None
    assert sinks["cancelled"].error == "request cancelled" and sinks["cancelled"].finished is None
    assert sinks["cancelled"].thread == "generation-sender"  # responses never block the forward passes
    assert decoder.batches[-1] == 1  # the ended rows left the batch; the last steps carried only "ok"


def _responses(scheduling, rows: int, max_tokens: int, intervals: dict[int, int] | None = None,
               stops: dict[int, str] | None = None) -> list[Recorder]:
    """`rows` greedy requests admitted together (the request's max_stream_interval where `intervals` has one, its
    stop string where `stops` has one), generated to the end; their recorders."""
    scheduler = scheduling.Scheduler(FakeDecoder(), scheduling.Limits(max_batch_size=rows, max_kv_tokens=400), ())
    sinks = []
    for r in range(rows):
        stop = tuple((stops or {}).get(r, "").split())
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0, seed=None, stop=stop,
                                max_stream_interval=(intervals or {}).get(r))
        sinks.append(Recorder())
        scheduler.submit(scheduling.Sequence([0], params, sinks[-1], TextStream(Numbered(), stop),
                                             np.random.default_rng()))
    _run(scheduler, until=lambda: all(s.finished is not None for s in sinks))
    return sinks


def test_under_load_a_response_carries_several_tokens_the_first_always_alone(scheduling) -> None:
    tokens = [f" t{i}" for i in range(1, 10)]  # what every row generates
    full = _responses(scheduling, 8, 9, intervals={7: 1}, stops={6: "t9"})  # the stop ends row 6 with the others
    assert all(s.finished == ("length", 9) for s in full[:6]) and full[7].finished == ("length", 9)
    # 8 rows: every 4th token (rows // 2, the default max_stream_interval), the first and the last at once
    assert full[0].tokens == ["".join(tokens[:1]), "".join(tokens[1:5]), "".join(tokens[5:])]
    assert all(s.tokens == full[0].tokens for s in full[1:6])
    assert full[6].tokens == [tokens[0], "".join(tokens[1:5]), " t6 t7 t8 "] and full[6].finished == ("stop", 9)
    assert full[7].tokens == tokens  # the request asked for a response per token
    early = _responses(scheduling, 8, 9, stops={0: "t7"})  # row 0 stops at its 7th token: 7 rows, k = 3
    assert early[0].tokens == [tokens[0], "".join(tokens[1:5]), " t6 "] and early[0].finished == ("stop", 7)
    assert early[1].tokens == [tokens[0], "".join(tokens[1:5]), "".join(tokens[5:8]), tokens[8]]
    assert _responses(scheduling, 3, 9)[0].tokens == tokens  # 1–3 rows: every token
    six = _responses(scheduling, 6, 9, intervals={0: 2})  # 6 rows: every 3rd token, or the request's cap of 2
    assert six[1].tokens == ["".join(tokens[:1]), "".join(tokens[1:4]), "".join(tokens[4:7]), "".join(tokens[7:])]
    assert six[0].tokens == [tokens[0], *("".join(tokens[i:i + 2]) for i in range(1, 9, 2))]


class Named:
    """`llm_logprobs.TokenNames` for the fake vocabulary (`Numbered`)."""

    def describe(self, token: int) -> dict:
        return {"token": f" t{token}", "bytes": []}


def test_log_probabilities_ride_with_the_responses_that_carry_their_tokens(scheduling) -> None:
    import llm_logprobs

    scheduler = scheduling.Scheduler(FakeDecoder(), scheduling.Limits(max_batch_size=8, max_kv_tokens=400), ())
    sinks = []
    for r in range(8):  # 8 rows: responses of 1, 4 and 4 tokens; only row 0 asks for log-probabilities
        params = SamplingParams(max_tokens=9, temperature=0.0, top_p=1.0, seed=None, logprobs=1 if r == 0 else None)
        sinks.append(Recorder())
        recorder = llm_logprobs.Logprobs(Named(), 1) if r == 0 else None
        scheduler.submit(scheduling.Sequence([0], params, sinks[-1], TextStream(Numbered(), ()),
                                             np.random.default_rng(), logprobs=recorder))
    _run(scheduler, until=lambda: all(s.finished is not None for s in sinks))
    entries = [json.loads(text) for text in sinks[0].logprobs]
    assert [len(e) for e in entries] == [1, 4, 4]
    assert [e["token"] for response in entries for e in response] == [f" t{i}" for i in range(1, 10)]
    first = entries[0][0]  # the fake logits: 1.0 for the next token, 0 for the 15 others
    assert first["logprob"] == pytest.approx(1 - np.log(np.e + 15))
    assert first["top_logprobs"] == [{"token": " t1", "bytes": [], "logprob": first["logprob"]}]
    assert sinks[1].logprobs == ["", "", ""]  # a request that did not ask gets none


@pytest.fixture(scope="module")
def gpu_graph(tmp_path_factory: pytest.TempPathFactory):
    return tiny_graph(tmp_path_factory.mktemp("tiny-decoder"), "fp16")


def test_the_gpu_configuration_prefills_rows_over_a_cached_prefix_one_per_pass(scheduling, gpu_graph) -> None:
    """The GPU target's graph (fp16, no `query_seqlens`: unpadded) on ONNX Runtime's CPU provider, whose
    GroupQueryAttention input check is the CUDA kernel's: prompts that arrive together over a cached system prompt
    never share a pass of several tokens per row (which GroupQueryAttention refuses, and `_fail_all` would end every
    running stream), prompts without a cached prefix still do, and every stream ends normally."""
    import llm_engine

    path, info = gpu_graph
    decoder = llm_engine.Decoder(path, info)
    assert not decoder.padded and decoder.kv_dtype == np.float16
    passes: list[tuple[int, int, int]] = []  # (rows, new tokens per row, most cached tokens of a row)
    step = decoder.step

    def recorded(ids, new, batch):
        passes.append((ids.shape[0], ids.shape[1], int(batch.lengths.max())))
        return step(ids, new, batch)

    decoder.step = recorded
    limits = scheduling.Limits(max_batch_size=8, max_kv_tokens=4096, prefix_cache_tokens=1024)
    scheduler = scheduling.Scheduler(decoder, limits, ())
    system = list(range(1, 13))
    decoder.prefill([*system, 20], scheduler.prefixes)  # an earlier conversation cached the system prompt
    passes.clear()
    prompts = [[*system, 30, 31, 32], [*system, 33, 34, 35], [*system, 36], [40, 41, 42], [43, 44, 45]]
    sinks = [_submit_greedy(scheduling, scheduler, prompt, 4) for prompt in prompts]
    _run(scheduler, until=lambda: all(s.finished is not None or s.error is not None for s in sinks))
    assert [s.error for s in sinks] == [None] * 5 and all(s.finished == ("length", 4) for s in sinks)
    refused = [p for p in passes if p[0] > 1 and p[1] > 1 and p[2] > 0]
    assert not refused, f"passes GroupQueryAttention refuses without padding: {refused}"
    assert (2, 3, 0) in passes  # the two prompts without a cached prefix: one pass
    assert any(rows > 1 and new == 1 for rows, new, _ in passes)  # the rows decode together
    assert scheduler.prefixes.hits >= 3
