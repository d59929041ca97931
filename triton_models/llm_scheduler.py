"""Iteration-level (continuous) batching of generation requests on one decoder, in a background thread.

Each loop iteration:
1. prefills waiting prompts, at most `prefill_chunk` prompt tokens in all (the tokens a prompt shares with a cached
   prefix do not count): prompts that arrived together are prefilled together (`prefill_groups`: one pass per group
   of similar lengths; each reuses the longest prefix it shares with a recent prompt from
   `llm_prefix.PrefixCache`), each first token sampled and sent, and the rows merged into the running batch (each
   row in its own slot of the in-place cache, see `llm_engine.KVSlots`). A prompt longer than the budget is
   prefilled `prefill_chunk` tokens per iteration (chunked prefill, `llm_engine.PromptPrefill`), so the running
   rows keep getting a token per iteration instead of waiting for its whole prefill; meanwhile prompts that fit
   half the budget are prefilled first in each iteration (they pass the long prompt and any other that does not
   fit), and the long prompt's chunk gets what they leave, at least half;
2. runs one decode step for all running rows together — one forward pass, one new token per row;
3. samples each row's token and hands its text delta to the sender thread (`Outbox`); rows that finished (eos, stop
   string, max_tokens, context) or were cancelled get their final response and leave the batch before the next step.

Under load a response carries several tokens (`Scheduler._due`): each response costs the host CPU (the python
backend's IPC, Triton's frontend, the client's gRPC), taken from the decode step itself on a small machine
(`tritonstack bench llm` times both ways; docs/LLM.md). So a row's text goes out every k-th token, k = rows // 2
(at least 1, at most `max_stream_interval`): about two responses per step whatever the batch. The first token and
the final response always go out at once, and a batch of 1–3 rows streams every token.

Responses leave through one sender thread (`llm_requests.Outbox`), overlapping the next forward pass.

Capacity is checked when a request is submitted, so a full model answers at once instead of queueing: at most
`max_batch_size` requests in flight (running + waiting), and the cache of all of them at their longest
(rows × max(prompt + max_tokens)) must stay within `max_kv_tokens` token slots.

Nothing here imports Triton: a request's responses go to its `llm_requests.Sink` (the Triton model adapts a
response sender).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from llm_engine import Decoder, KVSlots, PromptPrefill
from llm_prefix import PrefixCache
from llm_requests import Outbox, Sequence, StepInfo
from llm_text import penalize, sample

log = logging.getLogger("tritonstack.generation")


class OverloadedError(RuntimeError):
    """The model is at capacity; the request was not accepted."""


@dataclass(frozen=True)
class Limits:
    """Capacity bounds (from the model's config.pbtxt parameters)."""

    max_batch_size: int = 8
    max_kv_tokens: int = 16384
    max_context: int = 2048
    prefix_cache_tokens: int = 4096  # token slots of recent prompts kept for prefix reuse (0 = off)
    prefill_chunk: int = 256  # prompt tokens prefilled per iteration, between decode steps (0 = no limit)
    max_stream_interval: int = 4  # tokens one streamed response may carry at most, under load (1 = every token)


@dataclass
class Stats:
    """Counters of the scheduler (read by the model for metrics and by tests through responses)."""

    forward_passes: int = 0
    decode_steps: int = 0
    decode_rows: int = 0
    max_batch_seen: int = 0


class Scheduler:
    """Continuous batching over one `Decoder`; `submit` from any thread, generation in a daemon thread."""

    def __init__(self, decoder: Decoder, limits: Limits, eos_token_ids: tuple[int, ...],
                 observer: Callable[[int, bool], None] | None = None) -> None:
        self.decoder = decoder
        self.observer = observer
        self.limits = limits
        self.eos = frozenset(eos_token_ids)
        self._eos_ids = np.asarray(sorted(self.eos), dtype=np.int64)
        self.stats = Stats()
        self.prefixes = PrefixCache(limits.prefix_cache_tokens) if limits.prefix_cache_tokens > 0 else None
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._admitting: list[Sequence] = []  # taken from `_waiting`, being prefilled in this iteration
        self._chunked: tuple[Sequence, PromptPrefill] | None = None  # a long prompt being prefilled chunk by chunk
        self._batch: KVSlots | None = None
        self._wake = threading.Condition()
        self._stopping = False
        self.outbox = Outbox()
        self._thread = threading.Thread(target=self._loop, name="generation-scheduler", daemon=True)

    def start(self) -> Scheduler:
        self.outbox.start()
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread after the current step; requests still in flight get an error."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._thread.join(timeout)
        for seq in self._flight():
            self._end(seq, "the model is being unloaded")
        self._waiting.clear()
        self._running, self._admitting, self._chunked = [], [], None
        self.outbox.stop(timeout)

    def in_flight(self) -> int:
        """Accepted requests whose final response is not decided yet."""
        with self._wake:
            return sum(not seq.done for seq in self._flight())

    def _flight(self) -> list[Sequence]:
        """Every accepted request not finished yet (call with the lock held, or once the thread has stopped)."""
        chunked = [self._chunked[0]] if self._chunked is not None else []
        return [*self._running, *self._admitting, *chunked, *self._waiting]

    def submit(self, seq: Sequence) -> None:
        """Queue a request for the next iteration, or raise OverloadedError when the model is at capacity."""
        if seq.reserved > self.limits.max_context:
            raise ValueError(
                f"prompt ({len(seq.prompt)} tokens) + max_tokens ({seq.params.max_tokens}) exceeds the context "
                f"of {self.limits.max_context} tokens"
            )
        with self._wake:
            # rows whose final response is decided leave before the next iteration, where this request starts: a
            # client that sends its next request as soon as it has the final response must not be refused
            flight = [s for s in self._flight() if not s.done]
            if len(flight) >= self.limits.max_batch_size:
                raise OverloadedError(f"generation is at capacity: {len(flight)} requests in flight (max_batch_size)")
            longest = max([seq.reserved, *(s.reserved for s in flight)])
            if (len(flight) + 1) * longest > self.limits.max_kv_tokens:
                limit = self.limits.max_kv_tokens
                raise OverloadedError(f"generation is at capacity: the KV cache would exceed {limit} token slots")
            self._waiting.append(seq)
            self._wake.notify_all()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._flight():
                    self._wake.wait()
                if self._stopping:
                    return
                admitted, tokens = self._take()
            try:
                self._iterate(admitted, tokens)
            except Exception as exc:  # a failed forward pass fails the rows it carried, not the thread
                log.exception("generation step failed")
                self._fail_all(admitted, f"generation failed: {exc}")

    def _take(self) -> tuple[list[Sequence], int]:
        """The waiting prompts to prefill in this iteration and their uncached tokens (lock held): in arrival order
        while they fit the `prefill_chunk` budget, at least one. While a long prompt is prefilled in chunks, those
        that fit half the budget, passing any that do not: a short prompt starts within an iteration instead of
        waiting for the long prompt's last chunk, and the long prompt keeps at least half of each iteration."""
        budget = self.limits.prefill_chunk or float("inf")
        chunking = self._chunked is not None
        if chunking:
            budget //= 2
        taken: list[Sequence] = []
        passed: deque[Sequence] = deque()
        tokens = 0
        while self._waiting:
            cost = self._cost(self._waiting[0])
            if (taken or chunking) and tokens + cost > budget:
                if not chunking:
                    break
                passed.append(self._waiting.popleft())
                continue
            taken.append(self._waiting.popleft())
            tokens += cost
        if chunking:  # every waiting prompt was either taken or passed
            self._waiting = passed
        self._admitting = taken  # still counted by `submit` until they join the batch or end
        return taken, tokens

    def _cost(self, seq: Sequence) -> int:
        """Prompt tokens a prefill of `seq` computes (what a cached prefix does not cover)."""
        return len(seq.prompt) - (self.prefixes.match(seq.prompt) if self.prefixes is not None else 0)

    def _iterate(self, admitted: list[Sequence], tokens: int) -> None:
        live = []
        for seq in admitted:
            if seq.sink.cancelled():
                self._end(seq, "request cancelled")
            else:
                live.append(seq)
        chunk = left = self.limits.prefill_chunk
        if chunk and len(live) == 1 and self._cost(live[0]) > chunk:  # alone over the budget: in chunks
            prefill = self.decoder.prefill_start(live[0].prompt, self.prefixes)
            with self._wake:
                self._chunked, self._admitting = (live[0], prefill), []
        else:
            for group in prefill_groups(live):
                self._admit(group)
            with self._wake:
                self._admitting = []  # those that did not join ended at their first token
            left -= tokens
        if self._chunked is not None:  # what short prompts left of this iteration's budget: at least half
            self._prefill_chunk(left)
        if self._running:
            self._decode()

    def _prefill_chunk(self, chunk: int) -> None:
        """The next `chunk` tokens of the long prompt; once it is complete, its first token, and its row joins the
        batch."""
        assert self._chunked is not None
        seq, prefill = self._chunked
        if seq.sink.cancelled():
            with self._wake:
                self._chunked = None
            self._end(seq, "request cancelled")
            return
        logits = prefill.advance(chunk)
        self._observed(1, decode=False)
        if logits is None:
            return
        info = StepInfo(self.stats.forward_passes, 1, len(seq.prompt), 1)
        if self._advance(seq, logits, info):  # ended at its first token
            with self._wake:
                self._chunked = None
        else:
            self._join([seq], prefill.slots)  # no longer chunked from the moment it counts as running

    def _fail_all(self, admitted: list[Sequence], message: str) -> None:
        with self._wake:
            chunked = [self._chunked[0]] if self._chunked is not None else []
            failed, self._running, self._chunked, self._batch = [*self._running, *chunked, *admitted], [], None, None
            self._admitting = []
        for seq in failed:
            self._end(seq, message)

    def _admit(self, group: list[Sequence]) -> None:
        """Prefill `group` in one forward pass, post each first token, and merge the rows that go on."""
        logits, rows = self.decoder.prefill_many([seq.prompt for seq in group], self.prefixes)
        self._observed(len(group), decode=False)
        step = self.stats.forward_passes
        keep = [r for r, seq in enumerate(group)
                if not self._advance(seq, logits[r], StepInfo(step, len(group), len(seq.prompt), 1))]
        if not keep:
            return
        self._join([group[r] for r in keep], rows.selected(keep) if len(keep) < len(group) else rows)

    def _join(self, seqs: list[Sequence], rows: KVSlots) -> None:
        """Prefilled rows join the running batch."""
        joined = {id(seq) for seq in seqs}
        with self._wake:  # counted as running from now on, and no longer as being prefilled
            self._running.extend(seqs)
            self._admitting = [seq for seq in self._admitting if id(seq) not in joined]
            if self._chunked is not None and id(self._chunked[0]) in joined:
                self._chunked = None
        longest = self._longest()  # room for every row's last token: decode steps never grow the cache
        self._batch = rows.reserve(longest) if self._batch is None else self._batch.merged(rows, longest)

    def _decode(self) -> None:
        rows = list(self._running)
        assert self._batch is not None and self._batch.rows == len(rows)
        logits, self._batch = self.decoder.decode([s.generated[-1] for s in rows], self._batch)
        self._observed(len(rows), decode=True)
        keep = []
        for r, seq in enumerate(rows):
            info = StepInfo(self.stats.forward_passes, len(rows), len(seq.prompt), len(seq.generated) + 1)
            if not self._advance(seq, logits[r], info):
                keep.append(r)
        with self._wake:
            self._running = [rows[r] for r in keep]
        self._batch = self._batch.selected(keep, self._longest()) if keep else None

    def _longest(self) -> int:
        """Cache columns the running rows may need at most (prompt + max_tokens, as admission budgets them)."""
        return max((seq.reserved for seq in self._running), default=0)

    def _observed(self, rows: int, *, decode: bool) -> None:
        self.stats.forward_passes += 1
        if decode:
            self.stats.decode_steps += 1
            self.stats.decode_rows += rows
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, rows)
        if self.observer is not None:
            self.observer(rows, decode)

    def _advance(self, seq: Sequence, logits: np.ndarray, info: StepInfo) -> bool:
        """Sample one token and post its response; True when the request is finished (or was ended)."""
        if seq.done:  # a response could not be sent (the sender thread ended it)
            return True
        if seq.cancelled:
            self._end(seq, "request cancelled")
            return True
        raw = logits.copy() if seq.logprobs is not None else None  # the model's own distribution, unshaped
        penalize(logits, seq.generated, seq.params)
        if len(seq.generated) < seq.params.min_tokens and self._eos_ids.size:
            logits[self._eos_ids] = -np.inf  # as transformers' min_new_tokens (the step's own array: no copy)
        token = sample(logits, seq.params, seq.rng)
        seq.generated.append(token)
        if raw is not None and token not in self.eos:
            seq.logprobs.record(raw, token)
        reason = None
        if token in self.eos:
            delta, reason = seq.text.flush(), "stop"
        else:
            delta, stopped = seq.text.push(token)
            if stopped:
                reason = "stop"
            elif len(seq.generated) >= seq.params.max_tokens:
                delta, reason = delta + seq.text.flush(), "length"
        if reason is None:
            seq.unsent += delta
            if not self._due(seq, info.batch_size):
                return False
            text, seq.unsent, seq.sent_tokens = seq.unsent, "", len(seq.generated)
            if text:
                sent = _with_logprobs(seq, info)
                self.outbox.post(seq, lambda: seq.sink.token(text, sent))
            else:  # nothing to send while text is held back (a possible stop string): still look for a cancel
                self.outbox.post(seq, _nothing)
            return False
        seq.done = True
        text, seq.unsent, final = seq.unsent + delta, "", _with_logprobs(seq, info)
        self.outbox.post(seq, lambda: seq.sink.finish(text, reason, final))
        return True

    def _due(self, seq: Sequence, rows: int) -> bool:
        """Whether `seq`'s text goes out with its newest token (sampled in a pass of `rows` rows): the first token
        at once, then every k-th, k = rows // 2 within 1..`max_stream_interval` (the request's, else the model's).
        A coalesced row is checked for a cancel when its response goes out: within k steps."""
        if seq.sent_tokens == 0:
            return True
        cap = seq.params.max_stream_interval or self.limits.max_stream_interval
        return len(seq.generated) - seq.sent_tokens >= min(cap, max(1, rows // 2))

    def _end(self, seq: Sequence, message: str) -> None:
        """End `seq` with an error, after the responses already posted for it."""
        if not seq.done:
            seq.done = True
            self.outbox.post(seq, lambda: seq.send_error(message))


def prefill_groups(seqs: list[Sequence], waste: float = 1.5) -> list[list[Sequence]]:
    """Requests admitted together, grouped for one prefill pass each: by prompt length, so that a group's padded
    size (its longest prompt × its rows) stays within `waste` × the tokens it really holds."""
    groups: list[list[Sequence]] = []
    group: list[Sequence] = []
    tokens = 0
    for seq in sorted(seqs, key=lambda s: len(s.prompt)):
        n = len(seq.prompt)
        if group and n * (len(group) + 1) > waste * (tokens + n):
            groups.append(group)
            group, tokens = [], 0
        group.append(seq)
        tokens += n
    if group:
        groups.append(group)
    return groups


def _with_logprobs(seq: Sequence, info: StepInfo) -> StepInfo:
    """`info` carrying the log-probabilities of `seq`'s tokens since its last response (when it asked for them)."""
    return info if seq.logprobs is None else replace(info, logprobs=seq.logprobs.take())


def _nothing() -> None:
    return None
