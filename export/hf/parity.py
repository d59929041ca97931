"""The parity gate of `export hf`: the exported graph, run on ONNX Runtime with the serving tokenisation, against the
directory's own reference on a fixed, varied input set.

- embed: sentence-transformers when the directory is one (its modules compute the reference), else transformers'
  encoder with the pooling computed here in numpy; cosine per sentence (`export.parity.EmbeddingParity`) on the
  parity sentences (`export.encoder.sentences`), the prefix prepended to each;
- rerank: transformers' sequence-classification model on `PARITY_PAIRS` (short and long documents, non-English,
  emoji, empty strings); classify: the same on the parity sentences. `ScoreParity` compares the scores (sigmoid or
  softmax of the logits), gated on their largest absolute difference.

Both also require the token counts to equal the reference tokenizer's, truncation included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.encoder.sentences import PARITY_SENTENCES
from export.errors import ExportError, ParityError
from export.hf.graph import first_line
from export.hf.source import MULTI_LABEL, HfSource
from export.parity import EmbeddingParity, compare_embeddings

Item = str | tuple[str, str]
BATCH = 16
# Default largest score difference per precision (scores are probabilities in [0, 1]). int8 (ONNX Runtime dynamic,
# per-channel) moves scores the most on short inputs, as it moves MiniLM's embeddings (docs/EXPORT.md).
DEFAULT_MAX_SCORE_DIFF: dict[str, float] = {"fp32": 1e-4, "fp16": 1e-2, "int8": 0.1}

_QUERIES = ("What is the capital of France?", "How do I reset my password?", "¿Dónde está la biblioteca?", "")
PARITY_PAIRS: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "Paris is the capital and most populous city of France."),
    ("What is the capital of France?", "A man is riding a horse."),
    *((_QUERIES[i % len(_QUERIES)], text) for i, text in enumerate(PARITY_SENTENCES)),
    *((text, PARITY_SENTENCES[(7 * i + 3) % len(PARITY_SENTENCES)]) for i, text in enumerate(PARITY_SENTENCES[:24])),
)


@dataclass(frozen=True)
class Reference:
    """What the reference computed for each input: embeddings, or scores and logits; token counts."""

    items: tuple[Item, ...]
    values: np.ndarray
    token_counts: np.ndarray
    logits: np.ndarray | None
    label: str


@dataclass(frozen=True)
class ScoreParity:
    """How close the exported graph's scores are to the reference's, input by input."""

    label: str
    count: int
    max_abs_diff: float
    mean_abs_diff: float
    max_logit_diff: float
    worst_index: int
    worst_item: str
    decision_changes: int | None  # top label (single-label), labels above 0.5 (multi-label); None for rerank
    token_count_mismatches: int
    gate: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.max_abs_diff)) and self.max_abs_diff <= self.gate \
            and self.token_count_mismatches == 0

    def describe(self) -> str:
        """A short multi-line report, printed by the CLI."""
        worst = self.worst_item if len(self.worst_item) <= 70 else self.worst_item[:67] + "..."
        lines = [
            f"parity [{self.label}] on {self.count} inputs: {'PASS' if self.passed else 'FAIL'}",
            f"  max abs diff (scores) {self.max_abs_diff:.3e}  (gate {self.gate})",
            f"  mean abs diff         {self.mean_abs_diff:.3e}",
            f"  max abs diff (logits) {self.max_logit_diff:.3e}",
            f"  worst input  #{self.worst_index}: {worst}",
        ]
        if self.decision_changes is not None:
            lines.append(f"  predicted labels that differ: {self.decision_changes}")
        lines.append(f"  token-count mismatches vs reference tokenizer: {self.token_count_mismatches}")
        return "\n".join(lines)


def enforce_scores(report: ScoreParity) -> None:
    """ParityError (nothing is written) unless the report passed."""
    if report.passed:
        return
    if report.token_count_mismatches:
        reason = f"{report.token_count_mismatches} inputs were tokenized differently from the reference"
    else:
        reason = f"max abs score difference {report.max_abs_diff:.3e} exceeds the gate {report.gate}"
    raise ParityError(f"parity check failed for {report.label}: {reason}; nothing was written (raise "
                      "--max-score-diff if this precision loss is acceptable, or use a higher precision)", report)


def items_for(source: HfSource) -> tuple[Item, ...]:
    """The inputs the task is checked on."""
    return PARITY_PAIRS if source.task == "rerank" else PARITY_SENTENCES


def _prefix(source: HfSource) -> str:
    return source.embedding.prefix if source.embedding is not None else ""


def _accepted(source: HfSource, model, encoded) -> dict:
    """The tokenizer's tensors the model takes; segment ids only where the model embeds more than one segment (the
    graph's rule: a one-row segment table takes zeros only)."""
    import inspect

    names = set(inspect.signature(model.forward).parameters)
    if int(source.config.get("type_vocab_size") or 0) < 2:
        names.discard("token_type_ids")
    return {k: v for k, v in encoded.items() if k in names}


def _hf_batches(source: HfSource, model, items: Sequence[Item]):  # -> Iterator[(outputs, attention_mask)]
    import torch

    from export.hf.graph import hf_tokenizer

    tokenizer = hf_tokenizer(source)
    prefix = _prefix(source)
    for start in range(0, len(items), BATCH):
        batch = items[start : start + BATCH]
        if source.task == "rerank":
            args = ([q for q, _ in batch], [d for _, d in batch])
        else:
            args = ([prefix + t for t in batch],)
        encoded = tokenizer(*args, padding=True, truncation=True, max_length=source.max_length, return_tensors="pt")
        with torch.no_grad():
            yield model(**_accepted(source, model, encoded)), encoded["attention_mask"].numpy()


def numpy_pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """The pooling modes of sentence-transformers, in float64 numpy (the transformers reference)."""
    hidden = hidden.astype(np.float64)
    weights = mask[..., None].astype(np.float64)
    lengths = mask.sum(axis=1)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "lasttoken":
        return hidden[np.arange(len(hidden)), np.maximum(lengths - 1, 0)]
    if mode == "max":
        return np.where(weights > 0, hidden, -np.inf).max(axis=1)
    total = (hidden * weights).sum(axis=1)
    count = np.maximum(lengths, 1e-9)[:, None]
    return total / (count if mode == "mean" else np.sqrt(count))


def _st_reference(source: HfSource, texts: Sequence[str]) -> Reference:
    import logging

    from sentence_transformers import SentenceTransformer

    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    model = SentenceTransformer(str(source.directory), device="cpu", local_files_only=True)
    prefix = _prefix(source) or None
    values = model.encode(list(texts), prompt=prefix, batch_size=32, show_progress_bar=False, convert_to_numpy=True)
    counts = model.preprocess([(prefix or "") + t for t in texts])["attention_mask"].sum(dim=1).numpy()
    return Reference(tuple(texts), np.asarray(values, dtype=np.float32), counts, None, "sentence-transformers")


def _hf_reference(source: HfSource, items: Sequence[Item]) -> Reference:
    from transformers import AutoModel, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    loader = AutoModel if source.task == "embed" else AutoModelForSequenceClassification
    model = loader.from_pretrained(str(source.root), local_files_only=True).eval()
    values, logits, counts = [], [], []
    for output, mask in _hf_batches(source, model, items):
        counts.append(mask.sum(axis=1))
        if source.task == "embed":
            pooled = numpy_pool(output.last_hidden_state.float().numpy(), mask, source.embedding.pooling)
            if source.embedding.normalize:
                pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            values.append(pooled)
            continue
        row = output.logits.double().numpy()
        logits.append(row)
        if source.labels.activation == "softmax":
            exp = np.exp(row - row.max(axis=1, keepdims=True))
            values.append(exp / exp.sum(axis=1, keepdims=True))
        else:
            values.append(1.0 / (1.0 + np.exp(-row)))
    return Reference(tuple(items), np.concatenate(values).astype(np.float32), np.concatenate(counts),
                     np.concatenate(logits) if logits else None, "transformers")


def reference(source: HfSource) -> Reference:
    """The reference outputs on the task's parity inputs (ExportError, one line, when the reference fails)."""
    items = items_for(source)
    try:
        if source.sentence_transformers:
            return _st_reference(source, items)  # type: ignore[arg-type]  # embed: texts
        return _hf_reference(source, items)
    except ExportError:
        raise
    except Exception as exc:  # transformers and sentence-transformers raise many kinds
        library = "sentence-transformers" if source.sentence_transformers else "transformers"
        raise ExportError(f"{source.directory}: the {library} reference failed on the parity inputs "
                          f"({first_line(exc)}), so the export cannot be checked") from None


def candidate(onnx_path: Path, tokenizer_file: Path, source: HfSource, items: Sequence[Item]
              ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The graph's outputs on ONNX Runtime with the serving tokenisation (length-sorted, 0-padded batches), and the
    token counts."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_truncation(max_length=source.max_length, strategy="longest_first")
    tokenizer.no_padding()
    prefix = _prefix(source)
    encodings = tokenizer.encode_batch([i if isinstance(i, tuple) else prefix + i for i in items],
                                       add_special_tokens=True)
    lengths = np.array([len(e.ids) for e in encodings])
    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        outputs: dict[str, np.ndarray] = {}
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), BATCH):
            idx = order[start : start + BATCH]
            width = int(lengths[idx].max())
            feeds = {n: np.zeros((len(idx), width), dtype=np.int64) for n in names}
            for row, i in enumerate(idx):
                n = lengths[i]
                feeds["input_ids"][row, :n] = encodings[i].ids
                feeds["attention_mask"][row, :n] = 1
                if "token_type_ids" in feeds:
                    feeds["token_type_ids"][row, :n] = encodings[i].type_ids
            for output, value in zip(session.get_outputs(), session.run(None, feeds), strict=True):
                if output.name not in outputs:
                    outputs[output.name] = np.empty((len(items), *value.shape[1:]), dtype=np.float32)
                outputs[output.name][idx] = value
    except Exception as exc:  # ONNX Runtime raises its own exception types
        raise ExportError(f"ONNX Runtime cannot run the exported graph {onnx_path.name} ({first_line(exc)})") \
            from None
    return outputs, lengths


def check_embeddings(onnx_path: Path, tokenizer_file: Path, source: HfSource, ref: Reference, *, label: str,
                     gate: float) -> tuple[EmbeddingParity, np.ndarray, np.ndarray]:
    """(report, the graph's embeddings, token counts) of the parity sentences."""
    outputs, counts = candidate(onnx_path, tokenizer_file, source, ref.items)
    embeddings = next(iter(outputs.values()))
    report = compare_embeddings(embeddings, ref.values, list(ref.items), label=f"{label} vs {ref.label}", gate=gate,
                                candidate_counts=counts, reference_counts=ref.token_counts)
    return report, embeddings, counts


def _show(item: Item) -> str:
    return f"{item[0]!r} / {item[1]!r}" if isinstance(item, tuple) else repr(item)


def _decision_changes(source: HfSource, got: np.ndarray, want: np.ndarray) -> int | None:
    if source.task == "rerank":
        return None
    if source.labels.problem_type == MULTI_LABEL:
        return int(np.any((got > 0.5) != (want > 0.5), axis=1).sum())
    return int((got.argmax(axis=1) != want.argmax(axis=1)).sum())


def check_scores(onnx_path: Path, tokenizer_file: Path, source: HfSource, ref: Reference, *, label: str,
                 gate: float) -> ScoreParity:
    """Scores and logits of the graph against the reference's."""
    outputs, counts = candidate(onnx_path, tokenizer_file, source, ref.items)
    scores, logits = outputs["scores"], outputs["logits"]
    if scores.shape != ref.values.shape:
        raise ParityError(f"output shape {scores.shape} differs from the reference's {ref.values.shape}")
    diff = np.abs(scores.astype(np.float64) - ref.values.astype(np.float64))
    per_item = diff.max(axis=1)
    worst = int(np.argmax(per_item))
    assert ref.logits is not None
    return ScoreParity(
        label=f"{label} vs {ref.label}",
        count=len(ref.items),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        max_logit_diff=float(np.abs(logits.astype(np.float64) - ref.logits).max()),
        worst_index=worst,
        worst_item=_show(ref.items[worst]),
        decision_changes=_decision_changes(source, scores, ref.values),
        token_count_mismatches=int(np.sum(counts != ref.token_counts)),
        gate=gate,
    )
