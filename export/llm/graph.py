"""The ONNX decoder of a Llama-architecture causal LM, built node by node from its weights (SmolLM2 first).

One graph runs every step, prefill and decode, with the KV cache updated in place:

    inputs   input_ids              int64 [batch, sequence]     new tokens, right-padded to the longest row
             seqlens_k              int32 [batch]               per row: tokens in the cache after this step − 1
             query_seqlens          int32 [batch]               per row: its real new tokens (the rest is padding)
             total_sequence_length  int32 []                    max(sequence, max over rows of seqlens_k + 1)
             logits_index           int64 [batch]               per row: the flat index (row · sequence + column)
                                                                of the position whose logits are wanted
             past.{i}.key/value     fp32  [batch, kv_heads, capacity, head_dim]   the cache buffers
    outputs  logits                 fp32  [batch, vocab]
             present.{i}.key/value  fp32  [batch, kv_heads, capacity, head_dim]   the same buffers, when bound so

Attention is ONNX Runtime's `GroupQueryAttention` (com.microsoft): rotary embeddings inside (positions from
`seqlens_k`), grouped key/value heads without copies, and — when `present` is bound to the memory of `past`
(`llm_engine.Decoder`) — new keys and values written into the buffer at each row's own length, so a decode step
never copies the cache (the traced graph concatenated past and new keys: 12% of a batch-8 step). Each row attends to
columns [0, seqlens_k + 1) of its slot only, so rows of different lengths share a step without masks, and with
`query_seqlens` (right-padded chunks) rows with different cached prefixes and different numbers of new tokens share
a prefill pass: only a row's real tokens enter its cache, at positions continuing its own.

Per layer: RMSNorm (fused with the residual add), one QKV MatMul, GroupQueryAttention, output MatMul, RMSNorm,
one gate-and-up MatMul, SiLU, down MatMul — about 10 nodes, against ~100 in the graph the TorchScript tracer wrote.
Every weight is a MatMul by a constant [in, out] matrix, so `export.llm.repack` turns the same graph into the 4-bit one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17
IR_VERSION = 10  # enough for opset 17; onnx's default here (14) is refused by older onnxruntime (1.23: max 11)
INPUT_IDS, SEQLENS, QUERY_SEQLENS, TOTAL, LOGITS_INDEX, LOGITS = (
    "input_ids", "seqlens_k", "query_seqlens", "total_sequence_length", "logits_index", "logits")


@dataclass(frozen=True)
class LlamaShape:
    """What the graph needs from the model config."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    eps: float
    max_positions: int

    @classmethod
    def of(cls, model: Any) -> LlamaShape:
        cfg = model.config
        act = getattr(cfg, "hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"the graph builder supports Llama-style SiLU MLPs, not hidden_act={act!r}")
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, head_dim,
                   cfg.hidden_size, cfg.vocab_size, float(cfg.rms_norm_eps), int(cfg.max_position_embeddings))


class _Graph:
    """Nodes and initializers under construction."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.initializers: list = []

    def const(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs: Any) -> list[str]:
        from onnx import helper

        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=outputs[0], domain=domain, **attrs))
        return outputs


def _weights(model: Any) -> dict[str, np.ndarray]:
    return {name: t.detach().float().numpy() for name, t in model.state_dict().items()}


def _rotary_tables(model: Any, shape: LlamaShape) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [max_positions, head_dim / 2] from the model's own rotary module (its scaling, its fp32 math)."""
    import torch

    positions = torch.arange(shape.max_positions)[None]
    with torch.no_grad():
        cos, sin = model.model.rotary_emb(torch.zeros(1, dtype=torch.float32), positions)
    half = shape.head_dim // 2
    return cos[0, :, :half].numpy(), sin[0, :, :half].numpy()


def _layer(g: _Graph, w: dict[str, np.ndarray], shape: LlamaShape, i: int, x: str, residual: str | None,
           padded: bool = True) -> tuple[str, str]:
    """Layer `i` on the residual stream: (the MLP's output, the residual it is added to by the next norm)."""
    p = f"model.layers.{i}."
    eps = shape.eps
    norm_in = g.const(f"l{i}.input_norm", w[p + "input_layernorm.weight"])
    if residual is None:  # first layer: nothing to add yet
        (h,) = g.op("SimplifiedLayerNormalization", [x, norm_in], [f"l{i}.h"], axis=-1, epsilon=eps)
        residual = x
    else:
        h, _, _, residual = g.op("SkipSimplifiedLayerNormalization", [x, residual, norm_in],
                                 [f"l{i}.h", "", "", f"l{i}.residual"], domain="com.microsoft", epsilon=eps)
    qkv_w = np.concatenate([w[p + f"self_attn.{n}_proj.weight"] for n in "qkv"], axis=0).T
    (qkv,) = g.op("MatMul", [h, g.const(f"l{i}.qkv", qkv_w)], [f"l{i}.qkv_out"])
    per_row = [*[""] * 7, QUERY_SEQLENS] if padded else []  # CUDA's GroupQueryAttention reads no query_seqlens
    att, _, _ = g.op("GroupQueryAttention",
                  [qkv, "", "", f"past.{i}.key", f"past.{i}.value", SEQLENS, TOTAL, "cos_cache", "sin_cache",
                   *per_row],
                  [f"l{i}.attention", f"present.{i}.key", f"present.{i}.value"], domain="com.microsoft",
                  num_heads=shape.heads, kv_num_heads=shape.kv_heads, do_rotary=1)
    (out,) = g.op("MatMul", [att, g.const(f"l{i}.o", w[p + "self_attn.o_proj.weight"].T)], [f"l{i}.o_out"])
    norm_post = g.const(f"l{i}.post_norm", w[p + "post_attention_layernorm.weight"])
    h, _, _, residual = g.op("SkipSimplifiedLayerNormalization", [out, residual, norm_post],
                             [f"l{i}.h2", "", "", f"l{i}.residual2"], domain="com.microsoft", epsilon=eps)
    # gate and up as one [hidden, 2·intermediate] MatMul: one weight stream and one thread-pool pass, not two
    gate_up_w = np.concatenate([w[p + f"mlp.{n}_proj.weight"] for n in ("gate", "up")], axis=0).T
    (gate_up,) = g.op("MatMul", [h, g.const(f"l{i}.gate_up", gate_up_w)], [f"l{i}.gate_up_out"])
    gate, up = g.op("Split", [gate_up], [f"l{i}.gate_out", f"l{i}.up_out"], axis=-1)  # opset 17: equal halves
    (sig,) = g.op("Sigmoid", [gate], [f"l{i}.sigmoid"])
    (silu,) = g.op("Mul", [gate, sig], [f"l{i}.silu"])
    (act,) = g.op("Mul", [silu, up], [f"l{i}.act"])
    (down,) = g.op("MatMul", [act, g.const(f"l{i}.down", w[p + "mlp.down_proj.weight"].T)], [f"l{i}.down_out"])
    return down, residual


def build_decoder(model: Any, destination: Path, precision: str = "fp32") -> Path:
    """Write the decoder graph of `model` (a transformers Llama-architecture causal LM, fp32) to `destination`.

    `precision` "fp16" writes the GPU graph: weights, activations and cache in fp16 (CUDA's GroupQueryAttention
    takes fp16/bf16 only), logits still fp32, and no `query_seqlens` input (CUDA's kernel has none: a pass must not
    pad rows, `llm_engine.Decoder.padded`)."""
    import onnx
    from onnx import TensorProto, helper

    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision {precision!r}: expected fp32 or fp16")
    padded = precision == "fp32"

    shape = LlamaShape.of(model)
    w = _weights(model)
    g = _Graph()
    cos, sin = _rotary_tables(model, shape)
    g.const("cos_cache", cos)
    g.const("sin_cache", sin)
    embed = w["model.embed_tokens.weight"]
    (x,) = g.op("Gather", [g.const("embed_tokens", embed), INPUT_IDS], ["embedded"])
    residual = None
    for i in range(shape.layers):
        x, residual = _layer(g, w, shape, i, x, residual, padded)
    final_norm = g.const("final_norm", w["model.norm.weight"])
    final, _, _, _ = g.op("SkipSimplifiedLayerNormalization", [x, residual, final_norm], ["normed", "", "", ""],
                          domain="com.microsoft", epsilon=shape.eps)
    (flat,) = g.op("Reshape", [final, g.const("flat_shape", np.array([-1, shape.hidden], dtype=np.int64))],
                   ["normed_flat"])
    (picked,) = g.op("Gather", [flat, LOGITS_INDEX], ["picked"], axis=0)
    head = w.get("lm_head.weight", embed)  # tied embeddings: the lm_head is the embedding matrix
    g.op("MatMul", [picked, g.const("lm_head", head.T)], [LOGITS])

    cache = ["batch", shape.kv_heads, "capacity", shape.head_dim]
    inputs = [helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["batch", "sequence"]),
              helper.make_tensor_value_info(SEQLENS, TensorProto.INT32, ["batch"]),
              *([helper.make_tensor_value_info(QUERY_SEQLENS, TensorProto.INT32, ["batch"])] if padded else []),
              helper.make_tensor_value_info(TOTAL, TensorProto.INT32, []),
              helper.make_tensor_value_info(LOGITS_INDEX, TensorProto.INT64, ["batch"])]
    outputs = [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", shape.vocab])]
    for i in range(shape.layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past.{i}.{kind}", TensorProto.FLOAT, cache))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, cache))
    graph = helper.make_graph(g.nodes, "decoder", inputs, outputs, g.initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                         helper.make_opsetid("com.microsoft", 1)])
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx_model = convert_float_to_float16(onnx_model, keep_io_types=[LOGITS], disable_shape_infer=True)
    onnx_model.ir_version = IR_VERSION
    onnx.save(onnx_model, str(destination))
    return destination
