"""Text side of generation: chat template → prompt ids, sampling, and streamed detokenisation with stop strings.

No Triton import here: the export's parity check uses `PromptBuilder` to prove that the served prompt tokens
equal transformers' `apply_chat_template`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

MAX_TOP_LOGPROBS = 20  # alternatives per token at most (the OpenAI API's limit)
TOP_P_CANDIDATES = 1024  # nucleus sampling looks at this many top tokens first (a full sort only if needed)


class RequestError(ValueError):
    """The request itself is invalid (bad JSON, unknown field type, prompt too long)."""


def _raise(message: str) -> None:
    raise RequestError(message)


class PromptBuilder:
    """The model's chat template (jinja, rendered like transformers does) and its tokenizer."""

    def __init__(self, tokenizer_file: Path, template_file: Path, bos_token: str = "", eos_token: str = "") -> None:
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
        env.globals["raise_exception"] = _raise
        self.template = env.from_string(template_file.read_text(encoding="utf-8"))
        self.special = {"bos_token": bos_token, "eos_token": eos_token}

    def render(self, messages: list[dict]) -> str:
        """The prompt text for chat `messages` (OpenAI shape; text content parts are joined)."""
        return self.template.render(messages=[_message(m) for m in messages], add_generation_prompt=True,
                                    **self.special)

    def encode(self, text: str) -> list[int]:
        """Token ids of already-templated text (special tokens in the text are recognised)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """Prompt token ids for chat messages."""
        return self.encode(self.render(messages))


def _message(message: object) -> dict:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise RequestError("each message must be an object with a string 'role'")
    content = message.get("content")
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        content = "".join(str(p) for p in parts)
    elif content is None:
        content = ""
    elif not isinstance(content, str):
        raise RequestError("message 'content' must be a string or a list of text parts")
    return {"role": message["role"], "content": content}


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings; temperature 0 means greedy."""

    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...] = ()
    min_tokens: int = 0  # end-of-sequence tokens are masked out until this many tokens exist (vLLM's `min_tokens`)
    max_stream_interval: int | None = None  # tokens one streamed response may carry at most (None: the model's)
    presence_penalty: float = 0.0  # OpenAI's: subtracted from the logit of every token generated so far
    frequency_penalty: float = 0.0  # OpenAI's: subtracted once per time a token was generated so far
    logprobs: int | None = None  # alternatives per token when the log-probabilities are wanted (`llm_logprobs`)

    def validate(self) -> SamplingParams:
        if self.max_tokens < 1:
            raise RequestError("max_tokens must be >= 1")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise RequestError(f"min_tokens must be within 0..max_tokens ({self.max_tokens})")
        if not 0 <= self.temperature <= 2:
            raise RequestError("temperature must be within 0..2")
        if not 0 < self.top_p <= 1:
            raise RequestError("top_p must be within (0, 1]")
        if self.max_stream_interval is not None and self.max_stream_interval < 1:
            raise RequestError("max_stream_interval must be >= 1")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise RequestError(f"logprobs (alternatives per token) must be within 0..{MAX_TOP_LOGPROBS}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise RequestError(f"{name} must be within -2..2")
        if len(self.stop) > 4 or any(not s for s in self.stop):
            raise RequestError("stop: at most 4 non-empty strings")
        return self


def penalize(logits: np.ndarray, generated: list[int], params: SamplingParams) -> None:
    """OpenAI's presence and frequency penalties, in place: the logit of each token generated so far loses
    `presence_penalty` + `frequency_penalty` × its count (as the OpenAI API and vLLM: the prompt's tokens do not
    count)."""
    if not generated or not (params.presence_penalty or params.frequency_penalty):
        return
    ids, counts = np.unique(np.asarray(generated, dtype=np.int64), return_counts=True)
    logits[ids] -= (counts * params.frequency_penalty + params.presence_penalty).astype(logits.dtype)


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """The next token from one row of logits: argmax, or temperature + nucleus (top-p) sampling."""
    if params.temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p >= 1:
        return int(rng.choice(probs.size, p=probs))
    top = min(TOP_P_CANDIDATES, probs.size)
    candidates = np.argpartition(probs, -top)[-top:]
    if probs[candidates].sum() < params.top_p:
        candidates = np.arange(probs.size)
    order = candidates[np.argsort(-probs[candidates], kind="stable")]
    cumulative = np.cumsum(probs[order])
    keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]
    kept = probs[keep] / probs[keep].sum()
    return int(keep[rng.choice(keep.size, p=kept)])


class TextStream:
    """Detokenises generated ids incrementally; holds back text that may still become a stop string.

    Each token decodes only a short window of ids (as vLLM does): the ids from the last point where the text was
    complete, so a token costs the same at the 2,000th token as at the first (decoding every id at every token
    made a generation quadratic). The window keeps the token before the new ones as context, so decoders that
    treat the first token specially (a stripped leading space) give the same text as decoding everything.
    """

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.text = ""  # the complete text decoded so far
        self.sent = 0  # how much of it was handed out
        self._prefix = 0  # the window: ids[_prefix:_read] decoded to the end of `text`, ids[_read:] are pending
        self._read = 0
        self._longest_stop = max((len(s) for s in stop), default=0)

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token: (text that is now safe to send, whether a stop string was reached)."""
        self.ids.append(token)
        before = len(self.text)
        new, complete = self._pending()
        if complete:
            self._commit(new)
            visible = self.text
        else:  # an incomplete UTF-8 sequence: send nothing until the next token, but a stop string counts
            visible = self.text + new.rstrip("\ufffd")
        hit = self._first_stop(visible, max(0, before - self._longest_stop + 1))  # a new stop ends in the new part
        if hit >= 0:
            self.text = visible
            return self._advance(hit), True
        if not complete:
            return "", False
        return self._advance(len(self.text) - self._held()), False

    def flush(self) -> str:
        """Everything not sent yet (at the end of a generation that did not stop on a stop string)."""
        new, _ = self._pending()
        self._commit(new.removesuffix("\ufffd"))
        return self._advance(len(self.text))

    def _pending(self) -> tuple[str, bool]:
        """The text the pending ids add, and whether it ends in a complete character."""
        if self._read == len(self.ids):
            return "", True
        known = self.tokenizer.decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        full = self.tokenizer.decode(self.ids[self._prefix :], skip_special_tokens=True)
        new = full[len(known) :]
        return new, not new.endswith("\ufffd")

    def _commit(self, new: str) -> None:
        if new:  # special tokens alone add nothing: the window stays until text appears
            self.text += new
            self._prefix, self._read = self._read, len(self.ids)

    def _first_stop(self, text: str, start: int) -> int:
        hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        return min(hits, default=-1)

    def _held(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop string."""
        text, longest = self.text, 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def _advance(self, end: int) -> str:
        """The text from what was sent up to `end` (never back: held text is never sent, so `end` ≥ sent)."""
        delta = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        return delta
