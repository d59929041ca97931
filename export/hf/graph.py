"""The transformers model of a checked directory as one ONNX graph, and the tokenizer file Triton serves with it.

Graphs (opset 17, dynamic batch and sequence axes, int64 inputs):

- embed: `input_ids`, `attention_mask` → `sentence_embedding` [batch, dim]: the encoder, the pooling (mean, CLS,
  last token, max, mean/sqrt(len) over the real tokens) and, when the model normalises, L2 normalisation;
- rerank, classify: `input_ids`, `attention_mask` (and `token_type_ids` for a rerank model that tells segments
  apart) → `logits` and `scores` [batch, num_labels], the activation (sigmoid for rerank and multi-label, softmax
  otherwise) inside the graph so every target computes it the same way.

The serving side pads token ids with 0; a graph whose model pads with another id (RoBERTa, XLM-R: 1) puts its own
pad id back under the mask first, so the model sees exactly what transformers feeds it. The tokenizer file is the
fast tokenizer transformers loads from the directory (its backend `tokenizers.Tokenizer`, the same pre- and
post-processing), saved without truncation or padding: the Triton models set their own.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

from export.errors import ExportError, ModelSourceError
from export.hf.source import HfSource

OPSET = 17
EMBEDDING_OUTPUT = "sentence_embedding"
SCORE_OUTPUTS = ("logits", "scores")


def first_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def hf_tokenizer(source: HfSource):  # -> transformers.PreTrainedTokenizerBase (imported lazily: heavy)
    """The directory's fast tokenizer, as transformers loads it (no network)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.root), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds for a broken tokenizer
        raise ModelSourceError(f"{source.directory}: transformers cannot load the tokenizer ({first_line(exc)})") \
            from None
    if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ModelSourceError(f"{source.directory}: the tokenizer has no fast (tokenizers) version, which Triton "
                               "runs: save a tokenizer.json with it")
    return tokenizer


def save_tokenizer(source: HfSource, destination: Path) -> Path:
    """The serving tokenizer.json: the fast tokenizer's backend, without truncation or padding."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(hf_tokenizer(source).backend_tokenizer.to_str())
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tokenizer.save(str(destination))
    return destination


def uses_segments(source: HfSource, model) -> bool:
    """Whether the rerank graph takes `token_type_ids` (the model embeds segments: BERT, ELECTRA, ALBERT)."""
    accepts = "token_type_ids" in inspect.signature(model.forward).parameters
    return source.task == "rerank" and accepts and int(source.config.get("type_vocab_size") or 0) > 1


def load_model(source: HfSource):  # -> torch.nn.Module
    """The transformers model the task needs (base encoder for embed, the classification head otherwise), eval mode."""
    from transformers import AutoModel, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    loader = AutoModel if source.task == "embed" else AutoModelForSequenceClassification
    try:
        return loader.from_pretrained(str(source.root), attn_implementation="eager", local_files_only=True).eval()
    except Exception as exc:  # a broken checkpoint surfaces as many exception types
        raise ModelSourceError(f"{source.directory}: transformers cannot load the {source.architecture} weights "
                               f"({first_line(exc)})") from None


def _wrapped(source: HfSource, model):  # -> torch.nn.Module
    import torch

    pad_id = source.pad_token_id
    segments = uses_segments(source, model)
    zero_segments = source.task == "embed" and "token_type_ids" in inspect.signature(model.forward).parameters

    def real_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if pad_id == 0:
            return input_ids
        return torch.where(attention_mask > 0, input_ids, torch.full_like(input_ids, pad_id))

    class Embedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            extra = {"token_type_ids": torch.zeros_like(input_ids)} if zero_segments else {}
            hidden = self.model(input_ids=real_ids(input_ids, attention_mask), attention_mask=attention_mask,
                                **extra).last_hidden_state
            pooled = pool(hidden, attention_mask, source.embedding.pooling)
            return torch.nn.functional.normalize(pooled, p=2, dim=1) if source.embedding.normalize else pooled

    class Scorer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
            extra = {"token_type_ids": token_type_ids} if segments else {}
            logits = self.model(input_ids=real_ids(input_ids, attention_mask), attention_mask=attention_mask,
                                **extra).logits.float()
            if source.labels.activation == "softmax":
                return logits, torch.softmax(logits, dim=-1)
            return logits, torch.sigmoid(logits)

    return (Embedder() if source.task == "embed" else Scorer()).eval(), segments


def pool(hidden, mask, mode: str):  # (torch.Tensor [B, T, D], torch.Tensor [B, T], str) -> torch.Tensor [B, D]
    """sentence-transformers' pooling modes over right-padded token states."""
    import torch

    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "lasttoken":  # a one-hot weighting (not a gather), so the graph's output keeps its known width
        last = (mask.sum(dim=1, keepdim=True) - 1).clamp(min=0)
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        return (hidden * (positions == last).unsqueeze(-1).to(hidden.dtype)).sum(dim=1)
    if mode == "max":
        return hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    total = (hidden * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp(min=1e-9)
    return total / (count if mode == "mean" else count.sqrt())


def export_onnx(source: HfSource, destination: Path) -> list[str]:
    """Export the task's graph to `destination`, alone in its folder (one file); returns its input names."""
    import torch

    destination.parent.mkdir(parents=True, exist_ok=True)

    module, segments = _wrapped(source, load_model(source))
    inputs = ["input_ids", "attention_mask", *(["token_type_ids"] if segments else [])]
    outputs = [EMBEDDING_OUTPUT] if source.task == "embed" else list(SCORE_OUTPUTS)
    # a padded example, so that no shortcut for an all-ones mask is traced into the graph
    ids = torch.full((2, 8), 5, dtype=torch.int64)
    mask = torch.ones(2, 8, dtype=torch.int64)
    mask[1, 5:] = 0
    example = (ids, mask, torch.zeros_like(ids)) if segments else (ids, mask)
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs} | {name: {0: "batch"} for name in outputs}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings on shape-only branches; the parity gate checks results
            torch.onnx.export(module, example, str(destination), input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    except Exception as exc:  # the tracer and the ONNX exporter raise many kinds
        raise ExportError(f"torch.onnx cannot export {source.architecture} from {source.directory} "
                          f"({first_line(exc)})") from None
    if [p.name for p in destination.parent.iterdir()] != [destination.name]:
        raise ExportError(f"{source.directory}: the graph is over 2 GB, so ONNX keeps its weights in external files, "
                          "which export hf does not package yet")
    return inputs
