"""The drift reference an embedding export records for the gateway: a centroid and token-length statistics.

At export the model embeds a reference sentence set (by default the parity sentences; `--drift-reference FILE`
for a sample of real traffic, one text per line) with the serving tokenisation. What is recorded:

- `drift_reference_centroid`: the L2-normalised mean of those (already normalised) embeddings, as base64 of
  little-endian float32 — 384 floats → 2,048 characters;
- `drift_reference_tokens_mean`, `…_p50`, `…_p95`: the token counts per text (after truncation), as Triton's
  `token_count` output reports them;
- `drift_reference_items` and `drift_reference_set` (what the set was).

They go into the model's `config.pbtxt` as `parameters` (string values), so the gateway reads them with the model
config over Triton's API (`GetModelConfig`) — no filesystem access, and Kubernetes replicas see what the server
loaded. `parameters` is model-level, so a reference describes the latest export of the model, not one version.
The gateway side is `gateway/embeddings/drift.py`; the key names below are the contract between the two.

Deterministic: embeddings in a fixed order, summed in float64, rounded to float32, so the centroid does not depend
on ONNX Runtime's thread count and the committed config does not churn on re-export (docs/deploy.md, "Drift:
method").
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.errors import OptionError

CENTROID = "drift_reference_centroid"
TOKENS_MEAN = "drift_reference_tokens_mean"
TOKENS_P50 = "drift_reference_tokens_p50"
TOKENS_P95 = "drift_reference_tokens_p95"
ITEMS = "drift_reference_items"
SET = "drift_reference_set"
PARITY_SET = "parity_sentences"
MIN_ITEMS = 8


@dataclass(frozen=True)
class DriftReference:
    """A reference centroid (unit norm, float32) and token-length statistics of the reference set."""

    centroid: np.ndarray
    token_counts: np.ndarray
    label: str

    def parameters(self) -> dict[str, str]:
        """The config.pbtxt `parameters` (string values) that carry this reference."""
        counts = self.token_counts.astype(np.float64)
        return {
            CENTROID: encode_vector(self.centroid),
            TOKENS_MEAN: f"{counts.mean():.3f}",
            TOKENS_P50: f"{np.percentile(counts, 50):.1f}",
            TOKENS_P95: f"{np.percentile(counts, 95):.1f}",
            ITEMS: str(len(counts)),
            SET: self.label,
        }


def encode_vector(vector: np.ndarray) -> str:
    """base64 of the little-endian float32 bytes of a 1-D vector."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").reshape(-1).tobytes()).decode("ascii")


def decode_vector(text: str) -> np.ndarray:
    """The inverse of `encode_vector`."""
    return np.frombuffer(base64.b64decode(text, validate=True), dtype="<f4")


def centroid(embeddings: np.ndarray) -> np.ndarray:
    """The L2-normalised mean of `embeddings` ([n, d]), summed in float64, returned as float32."""
    mean = np.asarray(embeddings, dtype=np.float64).mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("the reference embeddings average to a zero vector: no direction to compare with")
    return (mean / norm).astype(np.float32)


def reference_texts(path: Path | None) -> tuple[list[str], str]:
    """(texts, label): the lines of `path` (blank lines skipped), or the parity sentences when `path` is None."""
    if path is None:
        from export.encoder.sentences import PARITY_SENTENCES

        return list(PARITY_SENTENCES), PARITY_SET
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise OptionError(f"--drift-reference {path}: cannot read it ({exc.strerror or exc})") from exc
    texts = [line for line in lines if line.strip()]
    if len(texts) < MIN_ITEMS:
        raise OptionError(f"--drift-reference {path}: {len(texts)} non-empty lines; give at least {MIN_ITEMS} "
                          "(a few hundred representative texts make a stable centroid)")
    return texts, f"file:{path.name}"


def compute(run, tokenizer_file: Path, max_length: int, texts: Sequence[str], label: str) -> DriftReference:
    """Embed `texts` through `run(input_ids, attention_mask)` with the serving tokenisation; the reference."""
    from export.encoder import minilm

    token_ids = minilm.tokenize(tokenizer_file, texts, max_length)
    embeddings = minilm.embed_with(run, token_ids)
    counts = np.array([len(t) for t in token_ids], dtype=np.int64)
    return DriftReference(centroid(embeddings), counts, label)
