"""Cache keys and the packed value format of cached embeddings.

Key: ``tritonstack:emb:{model}:{version}:{sha256 hex}``. The digest covers the model, the Triton
model version actually served, the normalised parameters and the input text (each field
length-prefixed, so no two field tuples collide). Model and version are percent-encoded in the
prefix so that ``:`` or glob characters in a name cannot leak into another model's SCAN pattern.

Value: 4-byte little-endian unsigned token count followed by the raw little-endian float32 vector.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np

NAMESPACE = "tritonstack:emb"
_TOKENS = struct.Struct("<I")
_LEN = struct.Struct("<Q")

Params = Mapping[str, object] | str | None
"""Request parameters that change the output: a mapping (normalised here) or a ready string."""


@dataclass(frozen=True, slots=True)
class CachedItem:
    """One cached embedding: little-endian float32 bytes plus the input's real token count."""

    vector: bytes
    tokens: int

    @classmethod
    def from_array(cls, array: object, tokens: int) -> CachedItem:
        """Build from anything numpy can view as a 1-D float vector."""
        return cls(np.ascontiguousarray(array, dtype="<f4").reshape(-1).tobytes(), int(tokens))

    def array(self) -> np.ndarray:
        """The embedding as a read-only float32 numpy view (no copy)."""
        return np.frombuffer(self.vector, dtype="<f4")

    def pack(self) -> bytes:
        """Serialise as ``<I tokens`` + vector bytes."""
        return _TOKENS.pack(self.tokens) + self.vector

    @classmethod
    def unpack(cls, raw: bytes) -> CachedItem | None:
        """Parse a packed value; None when it is malformed (treated as a miss)."""
        if len(raw) < _TOKENS.size or (len(raw) - _TOKENS.size) % 4:
            return None
        (tokens,) = _TOKENS.unpack_from(raw)
        return cls(bytes(raw[_TOKENS.size :]), tokens)


def normalize_params(params: Params) -> str:
    """Canonical string for output-affecting parameters: compact JSON with sorted keys."""
    if params is None:
        return ""
    if isinstance(params, str):
        return params
    return json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _field(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    return _LEN.pack(len(raw)) + raw


def model_prefix(model: str) -> str:
    """Prefix shared by every key of `model` (all versions, all parameters), ending with ':'."""
    return f"{NAMESPACE}:{quote(model, safe='')}:"


def make_keys(model: str, version: str | int, params: Params, texts: Sequence[str]) -> list[str]:
    """One cache key per text, in order (see module docstring for the layout)."""
    version = str(version)
    prefix = f"{model_prefix(model)}{quote(version, safe='')}:"
    base = hashlib.sha256(_field(model) + _field(version) + _field(normalize_params(params)))
    keys = []
    for text in texts:
        digest = base.copy()
        digest.update(_field(text))
        keys.append(prefix + digest.hexdigest())
    return keys
