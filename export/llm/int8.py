"""The decoder of `tritonstack export smollm2 --decode int8`: the GGUF's blocks multiplied with int8 activations.

llama.cpp decodes its Q4_1 GGUF faster than the exact graph because it quantises each row's activations per block
of 32 to int8 and multiplies them with the 4-bit (or 8-bit) blocks by integer dot products (AVX512-VNNI here).
ONNX Runtime's `MatMulNBits` does the same with `accuracy_level` 4 (MLAS's `SQNBIT_CompInt8`: A quantised per
`block_size` to int8, int32 accumulation per block, the blocks' scales applied in fp32). This graph is the repacked
one (`export.llm.repack`, weights unchanged) with:
- int8 activations for every MatMul (`INT8_KINDS`). Not some only: a MatMul that keeps fp32 activations runs ONNX
  Runtime's 4-bit kernel for one row and another one (blocks dequantised, then a GEMM) for several, whose results
  differ in the last bits, and the int8 quantisation of the next layer's input turns such differences into
  different tokens: batched decoding would not give what single-row decoding gives (the gate refuses it). The int8
  kernel computes a row the same way whatever the other rows;
- the 4-bit matrices in blocks of `INT8_BLOCK` (16: each GGUF block of 32 cut in two with its scale, the same
  weights), so the activations are quantised per 16 values instead of 32: closer to the fp32 reference (the
  the agreement of both is in docs/LLM.md);
- the tied embedding/lm_head as the GGUF's Q8_0 blocks (`MatMulNBits` bits 8) with int8 activations: a quarter of
  the fp32 matrix's bytes, which a decode step reads whole;
- the lm_head's top-`RESCORE_TOP_K` logits of each row recomputed in fp32 from the fp32 embedding rows (the matrix
  the input `Gather` already holds): the int8 lm_head only has to rank the right token among its first
  `RESCORE_TOP_K`, and the greedy choice among them is exact. The other logits stay approximate (sampling and
  logprobs far down the distribution).

The served model runs it for every decode step, one row or several (`llm_engine.Decoder`'s `decode_path`): a row's
int8 products do not depend on the other rows of its step, so batched decoding gives what single-row decoding gives
(the gate checks it). Prompts are prefilled by the exact fp32 graph: their cache and first token are then exact,
which the agreement with the fp32 reference needs (docs/LLM.md), and prefill is compute-bound, not bound by reading
the weights as a decode step is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.llm.graph import LOGITS
from export.llm.repack import RepackReport, repack_model

INT8_KINDS = ("qkv", "o", "gate_up", "down", "lm_head")  # `export.llm.repack.weight_kind`s: every MatMul
INT8_BLOCK = 16
RESCORE_TOP_K = 16
EMBEDDING = "embed_tokens"  # the fp32 embedding initializer of `export.llm.graph` (tied with the lm_head)


def add_rescoring(model, top_k: int = RESCORE_TOP_K) -> None:
    """Make the graph's `logits` the lm_head's approximate logits with each row's top `top_k` recomputed in fp32:
    TopK → Gather of the fp32 embedding rows → MatMul with the final hidden state → ScatterElements."""
    from onnx import helper, numpy_helper

    graph = model.graph
    head = next(node for node in graph.node if LOGITS in node.output)
    approx = "rescore/approx_logits"
    head.output[list(head.output).index(LOGITS)] = approx
    hidden = head.input[0]  # [rows, hidden]: the final norm's output at each row's wanted position
    p = "rescore/"
    graph.initializer.extend([numpy_helper.from_array(np.array([top_k], dtype=np.int64), p + "k"),
                              numpy_helper.from_array(np.array([-1], dtype=np.int64), p + "last_axis")])
    graph.node.extend([
        helper.make_node("TopK", [approx, p + "k"], [p + "values", p + "ids"], name=p + "topk", axis=-1),
        helper.make_node("Gather", [EMBEDDING, p + "ids"], [p + "rows"], name=p + "rows", axis=0),
        helper.make_node("Unsqueeze", [hidden, p + "last_axis"], [p + "column"], name=p + "column"),
        helper.make_node("MatMul", [p + "rows", p + "column"], [p + "exact3d"], name=p + "exact3d"),
        helper.make_node("Squeeze", [p + "exact3d", p + "last_axis"], [p + "exact"], name=p + "exact"),
        helper.make_node("ScatterElements", [approx, p + "ids", p + "exact"], [LOGITS], name=p + "scatter", axis=1),
    ])


def build_int8(fp32_graph: Path, destination: Path, int8_kinds: tuple[str, ...] = INT8_KINDS,
               top_k: int = RESCORE_TOP_K, int8_block: int = INT8_BLOCK) -> RepackReport:
    """Write the int8 decoder (module docstring) built from the exact fp32 graph to `destination`."""
    import onnx

    model = onnx.load(str(fp32_graph))
    if not any(init.name == EMBEDDING for init in model.graph.initializer):
        raise ValueError(f"{fp32_graph} has no {EMBEDDING!r} initializer to rescore the lm_head's top logits from")
    report = repack_model(model, eight_bit=True, int8_activations=int8_kinds, int8_block=int8_block)
    add_rescoring(model, top_k)
    onnx.save(model, str(destination))
    return report


def describe(report: RepackReport, int8_block: int = INT8_BLOCK) -> str:
    """One line for the export's output."""
    return (f"{report.describe()}; int8 activations (per {int8_block} values) for every MatMul, the lm_head's top "
            f"{RESCORE_TOP_K} logits per row recomputed in fp32")
