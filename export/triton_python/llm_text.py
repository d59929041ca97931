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

    def validate(self) -> SamplingParams:
        if self.max_tokens < 1:
            raise RequestError("max_tokens must be >= 1")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise RequestError(f"min_tokens must be within 0..max_tokens ({self.max_tokens})")
        if not 0 <= self.temperature <= 2:
            raise RequestError("temperature must be within 0..2")
        if not 0 < self.top_p <= 1:
            raise RequestError("top_p must be within (0, 1]")
        if len(self.stop) > 4 or any(not s for s in self.stop):
            raise RequestError("stop: at most 4 non-empty strings")
        return self


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
    """Detokenises generated ids incrementally; holds back text that may still become a stop string."""

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token: (text that is now safe to send, whether a stop string was reached)."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            return self._advance(text[: min(hits)]), True
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return "", False
        return self._advance(text[: len(text) - self._held(text)]), False

    def flush(self) -> str:
        """Everything not sent yet (at the end of a generation that did not stop on a stop string)."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return self._advance(text.removesuffix("\ufffd"))

    def _held(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def _advance(self, text: str) -> str:
        if not text.startswith(self.sent):  # detokenisation is prefix-stable for byte-level BPE; be safe anyway
            self.sent = text
            return ""
        delta = text[len(self.sent) :]
        self.sent = text
        return delta
