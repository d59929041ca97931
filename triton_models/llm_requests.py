"""A generation request in the scheduler (`Sequence`), where its responses go (`Sink`, `StepInfo`) and the thread
that hands them over (`Outbox`).

Responses leave through one sender thread, in order per request: handing a response to Triton is an IPC round trip
of the python backend (per row and step), and whether a request was cancelled is another; both overlap the
scheduler's next forward pass instead of delaying it (docs/LLM.md, "Batching").
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from llm_logprobs import Logprobs
from llm_text import SamplingParams, TextStream

log = logging.getLogger("tritonstack.generation")


class Sink(Protocol):
    """Where a request's responses go."""

    def token(self, text: str, info: StepInfo) -> None: ...

    def finish(self, text: str, reason: str, info: StepInfo) -> None: ...

    def fail(self, message: str) -> None: ...

    def cancelled(self) -> bool: ...


@dataclass(frozen=True)
class StepInfo:
    """What a response reports: the forward pass that produced it and the running token counts."""

    step: int
    batch_size: int
    prompt_tokens: int
    completion_tokens: int
    logprobs: str = ""  # the response's log-probability entries (JSON), when the request asked for them


@dataclass
class Sequence:
    """One request being generated."""

    prompt: list[int]
    params: SamplingParams
    sink: Sink
    text: TextStream
    rng: np.random.Generator
    generated: list[int] = field(default_factory=list)
    unsent: str = ""  # text of tokens coalesced into the next response (`Scheduler._due`)
    sent_tokens: int = 0  # tokens covered by the responses posted so far
    done: bool = False  # its final response (or error) is decided; the scheduler drops it at the next step
    cancelled: bool = False  # seen by the sender thread; the scheduler ends it at the next step
    logprobs: Logprobs | None = None  # its tokens' log-probabilities, when asked for

    def close(self, message: str) -> None:
        """End the request with an error (once); on the sender thread, or once that has stopped."""
        if not self.done:
            self.done = True
            self.send_error(message)

    def send_error(self, message: str) -> None:
        """Send the final error response (a failure to send is logged: the client is gone)."""
        try:
            self.sink.fail(message)
        except Exception:
            log.exception("sending an error response failed")

    @property
    def reserved(self) -> int:
        """Cache slots this request may need at its longest."""
        return len(self.prompt) + self.params.max_tokens


class Outbox:
    """One sender thread: every response of every request, in the order the scheduler posted them."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Sequence, Callable[[], None]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="generation-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def post(self, seq: Sequence, send: Callable[[], None]) -> None:
        """Queue `send` (one response of `seq`)."""
        self._queue.put((seq, send))

    def stop(self, timeout: float) -> None:
        """Send what is queued, then end the thread (never started: send it here)."""
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        else:
            self._run()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            seq, send = item
            try:
                send()
                if not seq.done and seq.sink.cancelled():
                    seq.cancelled = True
            except Exception as exc:  # e.g. the client went away: only this request ends
                log.exception("sending a response failed")
                seq.close(f"sending a response failed: {exc}")
