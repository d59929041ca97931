"""Numerical parity between an exported model and its reference: metrics, reports and gates.

Two kinds of check:
- embeddings (`EmbeddingParity`): per-row cosine similarity (min/mean) and max absolute difference,
  gated on the minimum cosine; used for sentence-embedding models against sentence-transformers;
- tensors (`TensorParity`): max absolute difference over all outputs, gated on an absolute tolerance;
  used for generic `torch.nn.Module` exports against PyTorch on random inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from export.errors import ParityError

# Default minimum cosine per precision (fp16 applies when an fp16 model itself is checked).
# int8: ONNX Runtime dynamic per-channel int8 loses most on 2-6-token inputs of PARITY_SENTENCES (emoji, Thai,
# "yes"), whose cosine stays well below the set's mean; a gate near the mean would refuse every int8 export, so the
# default sits below the lowest cosine the set gives (docs/EXPORT.md) with room for CPUs whose int8 kernels differ
# (VNNI vs AVX2).
DEFAULT_MIN_COSINE: dict[str, float] = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.95}


@dataclass(frozen=True)
class EmbeddingParity:
    """How close candidate embeddings are to reference embeddings, row by row."""

    label: str
    count: int
    min_cosine: float
    mean_cosine: float
    max_abs_diff: float
    worst_index: int
    worst_text: str
    token_count_mismatches: int
    gate: float

    @property
    def passed(self) -> bool:
        return self.min_cosine >= self.gate and self.token_count_mismatches == 0

    def describe(self) -> str:
        """A short multi-line report, printed by the CLI."""
        worst = self.worst_text if len(self.worst_text) <= 60 else self.worst_text[:57] + "..."
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"parity [{self.label}] on {self.count} sentences: {verdict}\n"
            f"  min cosine   {self.min_cosine:.7f}  (gate {self.gate})\n"
            f"  mean cosine  {self.mean_cosine:.7f}\n"
            f"  max abs diff {self.max_abs_diff:.3e}\n"
            f"  worst input  #{self.worst_index}: {worst!r}\n"
            f"  token-count mismatches vs reference tokenizer: {self.token_count_mismatches}"
        )


@dataclass(frozen=True)
class TensorParity:
    """Max absolute difference between exported and reference outputs over several random trials."""

    label: str
    trials: int
    max_abs_diff: float
    per_output: dict[str, float]
    atol: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.max_abs_diff)) and self.max_abs_diff <= self.atol

    def describe(self) -> str:
        """A short multi-line report, printed by the CLI."""
        verdict = "PASS" if self.passed else "FAIL"
        lines = [f"parity [{self.label}] over {self.trials} random batches: {verdict}"]
        lines += [f"  {name}: max abs diff {diff:.3e}" for name, diff in self.per_output.items()]
        lines.append(f"  overall max abs diff {self.max_abs_diff:.3e}  (atol {self.atol})")
        return "\n".join(lines)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of two [N, D] arrays (zero rows give cosine 0)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    dots = np.einsum("nd,nd->n", a64, b64)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def compare_embeddings(
    candidate: np.ndarray,
    reference: np.ndarray,
    texts: Sequence[str],
    *,
    label: str,
    gate: float,
    candidate_counts: np.ndarray | None = None,
    reference_counts: np.ndarray | None = None,
) -> EmbeddingParity:
    """Compare [N, D] embeddings row by row; token counts (if given) must match exactly."""
    if candidate.shape != reference.shape:
        raise ParityError(f"output shape {candidate.shape} differs from the reference's {reference.shape}")
    cos = cosine_rows(candidate, reference)
    worst = int(np.argmin(cos))
    mismatches = 0
    if candidate_counts is not None and reference_counts is not None:
        mismatches = int(np.sum(np.asarray(candidate_counts).reshape(-1) != np.asarray(reference_counts).reshape(-1)))
    return EmbeddingParity(
        label=label,
        count=len(texts),
        min_cosine=float(cos.min()),
        mean_cosine=float(cos.mean()),
        max_abs_diff=float(np.abs(candidate.astype(np.float64) - reference.astype(np.float64)).max()),
        worst_index=worst,
        worst_text=texts[worst],
        token_count_mismatches=mismatches,
        gate=gate,
    )


def enforce(report: EmbeddingParity | TensorParity) -> None:
    """Raise ParityError (with the report attached) when the report does not pass its gate."""
    if report.passed:
        return
    if isinstance(report, EmbeddingParity):
        if report.token_count_mismatches:
            reason = f"{report.token_count_mismatches} inputs were tokenized differently from the reference"
        else:
            reason = f"min cosine {report.min_cosine:.7f} is below the gate {report.gate}"
        hint = "lower the gate with --min-cosine if this precision loss is acceptable, or use a higher precision"
    else:
        reason = f"max abs diff {report.max_abs_diff:.3e} exceeds --atol {report.atol}"
        hint = "raise --atol if the difference is acceptable, or check the module for non-traceable control flow"
    raise ParityError(f"parity check failed for {report.label}: {reason}; nothing was written ({hint})", report)
