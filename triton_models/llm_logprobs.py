"""Log-probabilities of the sampled tokens, in the OpenAI API's shape (`choices[].logprobs.content`).

A request that asks for them (the model's `logprobs` input: how many alternatives per token, 0..20) gets, in each
response, a JSON array with one entry per token that response covers:

    {"token": text, "logprob": float, "bytes": [int, ...], "top_logprobs": [{"token", "logprob", "bytes"}, ...]}

Log-probabilities are those of the model's own distribution (the raw logits' log-softmax, as vLLM returns by
default), before temperature, top-p, penalties or `min_tokens` shape the sampling. End-of-sequence tokens get no
entry (OpenAI shows none); tokens of a stop string do (they were generated, though their text is cut).

`bytes` are the token's raw bytes: a byte-level BPE token (GPT-2's scheme, SmolLM2's tokenizer) is mapped back
from its printable alias characters, so a token holding part of a UTF-8 character has the right bytes, and its
`token` text shows the incomplete bytes as `\\xNN` escapes.
"""

from __future__ import annotations

import json

import numpy as np
from tokenizers import Tokenizer


def _byte_aliases() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte, reversed."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    aliases = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            aliases[chr(256 + extra)] = b
            extra += 1
    return aliases


class TokenNames:
    """A token id's text and bytes as OpenAI's logprobs show them (cached per id)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        decoder = json.loads(tokenizer.to_str()).get("decoder") or {}
        self.aliases = _byte_aliases() if decoder.get("type") == "ByteLevel" else None
        self.special = {token.content for token in tokenizer.get_added_tokens_decoder().values()}
        self._cache: dict[int, dict] = {}

    def _bytes(self, token: int) -> bytes:
        if self.aliases is None:
            return self.tokenizer.decode([token], skip_special_tokens=False).encode("utf-8")
        piece = self.tokenizer.id_to_token(token) or ""
        if piece in self.special:  # added tokens are stored as text, not byte aliases
            return piece.encode("utf-8")
        return bytes(self.aliases.get(c, 0x3F) for c in piece)

    def describe(self, token: int) -> dict:
        """{"token": text, "bytes": [...]} of `token`."""
        found = self._cache.get(token)
        if found is None:
            raw = self._bytes(token)
            found = {"token": raw.decode("utf-8", errors="backslashreplace"), "bytes": list(raw)}
            self._cache[token] = found
        return found


class Logprobs:
    """A request's entries not yet sent: `record` one per sampled token, `take` them for a response."""

    def __init__(self, names: TokenNames, top: int) -> None:
        self.names = names
        self.top = top
        self.pending: list[dict] = []

    def record(self, logits: np.ndarray, token: int) -> None:
        """The entry of `token` sampled from the raw `logits` (one row, [vocab])."""
        scores = logits.astype(np.float64)
        peak = scores.max()
        normalizer = peak + np.log(np.exp(scores - peak).sum())
        entry = {**self.names.describe(token), "logprob": float(scores[token] - normalizer), "top_logprobs": []}
        if self.top:
            best = np.argpartition(-scores, self.top - 1)[: self.top]
            best = best[np.argsort(-scores[best], kind="stable")]
            entry["top_logprobs"] = [{**self.names.describe(int(i)), "logprob": float(scores[i] - normalizer)}
                                     for i in best]
        self.pending.append(entry)

    def take(self) -> str:
        """The pending entries as a JSON array (then none are pending)."""
        text, self.pending = json.dumps(self.pending, ensure_ascii=False), []
        return text
