"""The decode mode of a generation model, from `parameters` in config.pbtxt (`tritonstack export smollm2 --decode`).

- `exact` (no `decode` parameter): greedy tokens equal transformers' (the export's parity gate);
- `int8`: the decoder multiplies int8-quantised activations with the GGUF's blocks (`export.llm.int8`); greedy
  tokens may differ from the fp32 reference within the gate the export checked and recorded
  (`decode_gate_*`: teacher-forced top-1 agreement, batched = single).

The gate holds for the int8 kernels of the CPU that ran it: ONNX Runtime picks them by the CPU's features
(AVX512-VNNI, AVX-VNNI, AVX2), and their rounding may differ. The export records which one it had
(`decode_gate_cpu`); the model logs its mode and gate at load, and warns when it runs on other kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MODES = ("exact", "int8")
GATE_PREFIX = "decode_gate_"
# ONNX Runtime's int8 MatMulNBits kernels by the CPU flag that selects them, best first
INT8_FEATURES = ("avx512_vnni", "avx_vnni", "avx2")


def cpu_int8_features(cpuinfo: str | None = None) -> str:
    """The CPU feature that selects ONNX Runtime's int8 kernels here (`INT8_FEATURES`), or "none"."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
            break
    return next((f for f in INT8_FEATURES if f in flags), "none")


@dataclass(frozen=True)
class DecodeMode:
    """The mode and the gate recorded with it."""

    mode: str = "exact"
    gate: dict[str, str] = field(default_factory=dict)  # decode_gate_* parameters, prefix removed

    @classmethod
    def from_parameters(cls, param: Callable[[str, str], str], keys: list[str]) -> DecodeMode:
        """From the model's parameters: `param(key, default)` reads one, `keys` are all their names."""
        mode = param("decode", "exact")
        if mode not in MODES:
            raise ValueError(f"parameter decode {mode!r}: expected one of {', '.join(MODES)}")
        gate = {k[len(GATE_PREFIX):]: param(k, "") for k in sorted(keys) if k.startswith(GATE_PREFIX)}
        return cls(mode, gate)

    def describe(self) -> str:
        """One line for the model's log at load."""
        if self.mode == "exact":
            return "decode exact: greedy tokens equal the fp32 reference's (the export's parity gate)"
        g = self.gate
        return (f"decode int8: int8 activations; export gate: teacher-forced top-1 agreement "
                f"{g.get('agreement', '?')} over {g.get('positions', '?')} tokens (at least "
                f"{g.get('min_agreement', '?')}), batched = single at {g.get('batched_identical', '?')} positions, "
                f"measured on {g.get('cpu', '?')} kernels")

    def warning(self, here: str) -> str | None:
        """What to log when this CPU's int8 kernels (`cpu_int8_features`) are not those the gate ran on."""
        measured = self.gate.get("cpu", "")
        if self.mode != "int8" or not measured or measured == here:
            return None
        return (f"decode int8: the export's gate ran on {measured} kernels, this CPU has {here}: greedy tokens may "
                "differ from what the gate measured (re-export here to measure them)")
