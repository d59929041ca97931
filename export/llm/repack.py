"""Lossless repacking of GGUF-quantised weights into ONNX Runtime's `MatMulNBits` (4 and 8 bit, fp32 compute).

SmolLM2's GGUF stores every linear layer as Q4_1 (blocks of 32 along the input dimension: w = m + d·q, q in 0..15)
and the tied embedding/lm_head as Q8_0 (w = d·q, q in -127..127). transformers dequantises them to fp32, so the
exported ONNX graph multiplies by fp32 matrices whose values are still exactly those blocks. Decoding one token
reads every weight once: 540 MB in fp32, ~90 MB as blocks — on a CPU, decode speed is that memory traffic.

For each `MatMul` by a constant [K, N] matrix this module recovers the blocks from the fp32 values and checks that
they reproduce the matrix (to `tolerance` relative to the block's range); matrices that are not block-quantised
stay fp32. It then writes:
- Q8_0 → `MatMulNBits(bits=8)` with uint8 zero point 128 (q + 128), same scales: exactly the same weights —
  only with `eight_bit=True`: ONNX Runtime's 8-bit CPU kernel is far slower than the fp32 MatMul on SmolLM2's
  [576, 49152] lm_head (docs/LLM.md, `--weights`), so by default Q8_0 matrices stay fp32;
- Q4_1 → `MatMulNBits(bits=4)` with the default zero point 8 plus a per-block correction, because ONNX Runtime's
  fast CPU kernels take integer zero points only and m/d is not an integer:
      A·w = Σ_b d_b Σ_{k∈b} (q_k − 8) a_k  +  Σ_b (m_b + 8 d_b) Σ_{k∈b} a_k
  i.e. `MatMulNBits(A) + BlockSum(A) @ C` with C[b, n] = m + 8d (a [K/32, N] fp32 matrix); the block sums are
  computed once per input tensor (MatMuls that read the same tensor share them).
Activations stay fp32 (`accuracy_level` 0): the result equals the fp32 product up to summation order. Only the
int8 decode mode (`export.llm.int8`) asks for int8 activations (`accuracy_level` 4) for some matrices.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BLOCK = 32
DEFAULT_TOLERANCE = 1e-5  # max reconstruction error / block range


@dataclass
class RepackReport:
    """What was repacked: counts per kind and the weight bytes before/after."""

    q4: int = 0
    q8: int = 0
    kept: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0

    def describe(self) -> str:
        return (f"repacked {self.q4} matrices as 4-bit and {self.q8} as 8-bit blocks, {len(self.kept)} kept fp32: "
                f"{self.bytes_before / 2**20:.0f} MiB → {self.bytes_after / 2**20:.0f} MiB of weights")


@dataclass(frozen=True)
class Blocks:
    """A [K, N] matrix as blocks of BLOCK along K: packed codes [N, K/BLOCK, bytes], scales, correction."""

    bits: int
    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None = None  # uint8, 8-bit only
    correction: np.ndarray | None = None  # [K/BLOCK, N] fp32, 4-bit only

    def split(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(codes, scales) of the same weights in blocks of `block` (a divisor of BLOCK): each block's codes cut in
        pieces that keep its scale; codes are packed along K, so only their shape changes."""
        n = self.packed.shape[0]
        return (np.ascontiguousarray(self.packed.reshape(n, -1, block * self.bits // 8)),
                np.repeat(self.scales, BLOCK // block))


def _blocks(weight_kn: np.ndarray) -> np.ndarray:
    n = weight_kn.shape[1]
    return np.ascontiguousarray(weight_kn.T, dtype=np.float64).reshape(n, -1, BLOCK)


def as_q4(weight_kn: np.ndarray, tolerance: float = DEFAULT_TOLERANCE) -> Blocks | None:
    """Q4_1 blocks of a [K, N] matrix, or None when its values are not exactly such blocks."""
    b = _blocks(weight_kn)
    low, high = b.min(-1, keepdims=True), b.max(-1, keepdims=True)
    d = (high - low) / 15
    safe = np.where(d == 0, 1.0, d)
    q = np.clip(np.rint((b - low) / safe), 0, 15)
    if np.abs(q * d + low - b).max() > tolerance * max(float((high - low).max()), 1e-12):
        return None
    codes = q.astype(np.uint8)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    correction = (low[..., 0] + 8 * d[..., 0]).T.astype(np.float32)  # [K/BLOCK, N]
    return Blocks(4, np.ascontiguousarray(packed), d.reshape(-1).astype(np.float32), correction=correction)


def as_q8(weight_kn: np.ndarray, tolerance: float = DEFAULT_TOLERANCE) -> Blocks | None:
    """Q8_0 blocks of a [K, N] matrix, or None when its values are not exactly such blocks."""
    b = _blocks(weight_kn)
    amax = np.abs(b).max(-1, keepdims=True)
    d = amax / 127
    q = np.clip(np.rint(b / np.where(d == 0, 1.0, d)), -127, 127)
    if np.abs(q * d - b).max() > tolerance * max(float(amax.max()), 1e-12):
        return None
    codes = (q + 128).astype(np.uint8)
    zero_points = np.full(codes.shape[0] * codes.shape[1], 128, dtype=np.uint8)
    return Blocks(8, np.ascontiguousarray(codes), d.reshape(-1).astype(np.float32), zero_points=zero_points)


class _Rewriter:
    """Rewrites the graph's constant MatMuls in place."""

    def __init__(self, model, tolerance: float, eight_bit: bool, int8_activations: Collection[str],
                 int8_block: int) -> None:
        from onnx import numpy_helper

        self.model, self.tolerance, self.eight_bit = model, tolerance, eight_bit
        self.int8_activations, self.int8_block = int8_activations, int8_block
        self.graph = model.graph
        self.weights = {t.name: t for t in self.graph.initializer}
        self.to_array = numpy_helper.to_array
        self.from_array = numpy_helper.from_array
        self.block_sums: dict[str, str] = {}
        self.new_inits: list = []
        self.report = RepackReport()

    def _const(self, array: np.ndarray, name: str) -> str:
        self.new_inits.append(self.from_array(array, name))
        return name

    def _block_sum(self, source: str, k: int, nodes: list) -> str:
        """Σ over each block of BLOCK of the last axis of `source` (computed once per tensor)."""
        from onnx import helper

        if source not in self.block_sums:
            base = f"{source}/blocksum"
            shape = self._const(np.array([0, 0, k // BLOCK, BLOCK], dtype=np.int64), f"{base}/shape")
            axes = self._const(np.array([-1], dtype=np.int64), f"{base}/axes")
            nodes.append(helper.make_node("Reshape", [source, shape], [f"{base}/blocks"], name=f"{base}/reshape"))
            nodes.append(helper.make_node("ReduceSum", [f"{base}/blocks", axes], [base], name=f"{base}/sum",
                                          keepdims=0))
            self.block_sums[source] = base
        return self.block_sums[source]

    def rewrite(self, node, nodes: list) -> bool:
        """Append the replacement of `node` to `nodes`; False when it stays as is."""
        from onnx import helper

        if node.op_type != "MatMul" or node.input[1] not in self.weights:
            return False
        weight = self.to_array(self.weights[node.input[1]])
        if weight.ndim != 2 or weight.dtype != np.float32 or weight.shape[0] % BLOCK:
            return False
        blocks = as_q4(weight, self.tolerance) or (as_q8(weight, self.tolerance) if self.eight_bit else None)
        if blocks is None:
            self.report.kept.append(node.input[1])
            return False
        k, n = weight.shape
        name = node.input[1]
        int8 = weight_kind(name) in self.int8_activations  # ONNX Runtime's accuracy_level 4: int8 activations
        # with int8 activations the kernel quantises them per block_size: smaller 4-bit blocks, finer activations
        block = self.int8_block if int8 and blocks.bits == 4 else BLOCK
        codes, scales = blocks.split(block) if block != BLOCK else (blocks.packed, blocks.scales)
        inputs = [node.input[0], self._const(codes, f"{name}/q{blocks.bits}"), self._const(scales, f"{name}/scales")]
        if blocks.zero_points is not None:
            inputs.append(self._const(blocks.zero_points, f"{name}/zero_points"))
        product = f"{name}/nbits" if blocks.correction is not None else node.output[0]
        nodes.append(helper.make_node("MatMulNBits", inputs, [product], name=f"{name}/MatMulNBits",
                                      domain="com.microsoft", K=k, N=n, bits=blocks.bits, block_size=block,
                                      accuracy_level=4 if int8 else 0))
        if blocks.correction is not None:
            sums = self._block_sum(node.input[0], k, nodes)
            corr = self._const(blocks.correction, f"{name}/correction")
            nodes.append(helper.make_node("MatMul", [sums, corr], [f"{name}/offset"], name=f"{name}/offset"))
            nodes.append(helper.make_node("Add", [product, f"{name}/offset"], [node.output[0]], name=f"{name}/add"))
        self.report.q4 += blocks.bits == 4
        self.report.q8 += blocks.bits == 8
        self.report.bytes_before += weight.nbytes
        self.report.bytes_after += codes.nbytes + scales.nbytes
        self.report.bytes_after += 0 if blocks.correction is None else blocks.correction.nbytes
        return True


def weight_kind(name: str) -> str:
    """A decoder weight's kind (`export.llm.graph`'s names): "l3.gate_up" → "gate_up", "lm_head" → "lm_head"."""
    return name.rsplit(".", 1)[-1]


def repack_model(model, tolerance: float = DEFAULT_TOLERANCE, *, eight_bit: bool = False,
                 int8_activations: Collection[str] = (), int8_block: int = BLOCK) -> RepackReport:
    """Rewrite `model` (an onnx ModelProto) in place: its block-quantised constant MatMuls become MatMulNBits, with
    int8 activations for the weight kinds in `int8_activations` (`weight_kind`), quantised per `int8_block` values
    for the 4-bit ones (16 or 32: the weights are the same either way, `Blocks.split`)."""
    from onnx import helper

    if int8_block not in (16, BLOCK):
        raise ValueError(f"int8_block {int8_block}: expected 16 or {BLOCK}")
    rewriter = _Rewriter(model, tolerance, eight_bit, int8_activations, int8_block)
    nodes: list = []
    replaced: set[str] = set()
    for node in model.graph.node:
        if rewriter.rewrite(node, nodes):
            replaced.add(node.input[1])
        else:
            nodes.append(node)
    used = {name for node in nodes for name in node.input}
    keep = [t for t in model.graph.initializer if t.name not in replaced or t.name in used]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep + rewriter.new_inits)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return rewriter.report


def repack(source: Path, destination: Path, tolerance: float = DEFAULT_TOLERANCE, *,
           eight_bit: bool = False) -> RepackReport:
    """Write `source` with its block-quantised constant MatMuls as MatMulNBits to `destination`."""
    import onnx

    model = onnx.load(str(source))
    report = repack_model(model, tolerance, eight_bit=eight_bit)
    onnx.save(model, str(destination))
    return report
