"""Stand-ins shared by the generation unit tests: a tokenizer with fixed pieces, KV slots whose values name their
rows, and a tiny decoder graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from triton_models.llm_engine import KVSlots, ModelInfo


class Pieces:
    """A stand-in tokenizer: token id i decodes to PIECES[i]."""

    PIECES = ("The", " capital", " is", " Par", "is", ".")

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.PIECES[i] for i in ids)


def slots(lengths: list[int], layers: int = 2) -> KVSlots:
    """Rows whose cached values name them: row r holds 100·(r + 1) + column in its first lengths[r] columns."""
    capacity = max(8, *lengths)
    cache = [np.zeros((len(lengths), 1, capacity, 1), dtype=np.float32) for _ in range(2 * layers)]
    for r, n in enumerate(lengths):
        for t in cache:
            t[r, 0, :n, 0] = 100 * (r + 1) + np.arange(n)
    return KVSlots(np.array(lengths, dtype=np.int64), cache)


def tiny_graph(directory: Path, precision: str = "fp16") -> tuple[Path, ModelInfo]:
    """A randomly initialised two-layer Llama exported by `export.llm.graph` (fp16: the GPU target's graph, without
    `query_seqlens`, so a `Decoder` of it runs unpadded as on the GPU), and its geometry."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from export.llm.graph import build_decoder

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    path = build_decoder(LlamaForCausalLM(config).eval(), directory / f"tiny.{precision}.onnx", precision)
    return path, ModelInfo(layers=2, kv_heads=2, head_dim=16, vocab=64, eos_token_ids=(), defaults={})
