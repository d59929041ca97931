"""Build a TensorRT plan (`model.plan`) from the exported ONNX graph, and run it for the parity check.

Follows NVIDIA's documented Python API (TensorRT 10.x; TensorRT 11 differences handled below):
logger → builder → network → ONNX parser → builder config (workspace pool, optimization profile, timing
cache, precision) → `build_serialized_network` → plan bytes. The profile covers batch 1..max_batch_size
and sequence 1..max_seq_length for every [batch, sequence] input.

Precision:
- fp32: no flag.
- fp16: `BuilderFlag.FP16` (TensorRT 10). TensorRT 11 removed that flag ("strong typing"); there the ONNX is
  first converted to float16 (float32 I/O kept) and the network is created STRONGLY_TYPED.
- int8: `BuilderFlag.INT8` + `FP16` with an entropy calibrator fed from the parity sentences, on a fixed
  calibration profile (TensorRT 10; implicit quantization is deprecated since 10.1 and removed in 11,
  where this raises TensorRTBuildError).

A plan only runs on the TensorRT version and GPU model it was built with ("compatible only with the version of
TensorRT used to build them"): the export builds with the TensorRT of the Triton image that serves it
(`TENSORRT_RELEASE`, NVIDIA's tritonserver:24.12 in deploy/docker/triton-gpu.Dockerfile), refuses any other, and
records the version in the configs (`tensorrt_version`), which the tokenizer step checks against the server's at
load. This module needs `tensorrt` and a CUDA GPU; without them `require_tensorrt` raises TensorRTUnavailableError
saying which is missing. Not exercised on this project's CPU-only CI: keep it exact to NVIDIA's documentation.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export.errors import TensorRTBuildError, TensorRTUnavailableError

if TYPE_CHECKING:
    from export.config import Tensor

# NVIDIA's Triton image that serves the plans (deploy/docker/triton-gpu.Dockerfile) and the TensorRT it ships
TRITON_RELEASE = "24.12"
TENSORRT_RELEASE = "10.7"  # Triton 24.12: TensorRT 10.7.0
TENSORRT_PIP = "tensorrt-cu12==10.7.*"


def tensorrt_mismatch(found: str) -> str | None:
    """Why a `tensorrt` module of version `found` must not build plans for the image (None when it may)."""
    if ".".join(found.split(".")[:2]) == TENSORRT_RELEASE:
        return None
    return (f"the installed `tensorrt` is {found}, but NVIDIA's Triton {TRITON_RELEASE} image serves plans with "
            f"TensorRT {TENSORRT_RELEASE} and a plan only loads on the TensorRT that built it: "
            f"pip install '{TENSORRT_PIP}'")


TRT_TO_TRITON = {
    "FLOAT": "TYPE_FP32",
    "HALF": "TYPE_FP16",
    "BF16": "TYPE_BF16",
    "INT8": "TYPE_INT8",
    "UINT8": "TYPE_UINT8",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "BOOL": "TYPE_BOOL",
}


@dataclass(frozen=True)
class PlanSettings:
    """What the engine is built for."""

    max_batch_size: int
    max_seq_length: int
    precision: str  # fp32 | fp16 | int8
    timing_cache: Path
    opt_batch_size: int | None = None
    opt_seq_length: int = 128
    workspace_bytes: int = 1 << 30
    calibration_batch_size: int = 8


def require_tensorrt():  # -> the tensorrt module
    """Import `tensorrt` and check for a CUDA GPU; raise TensorRTUnavailableError naming what is missing."""
    missing: list[str] = []
    trt = None
    try:
        import tensorrt as trt
    except ImportError as exc:
        missing.append(
            f"the `tensorrt` Python module is not installed ({exc}); install the TensorRT of the Triton image "
            f"that will serve the plan ({TENSORRT_RELEASE} for Triton {TRITON_RELEASE}): pip install '{TENSORRT_PIP}'"
        )
    if trt is not None and (mismatch := tensorrt_mismatch(str(trt.__version__))):
        missing.append(mismatch)
    try:
        import torch

        has_gpu = bool(torch.cuda.is_available())
    except ImportError:
        has_gpu = False
    if not has_gpu:
        missing.append(
            "no CUDA GPU is visible (torch.cuda.is_available() is False); "
            "a plan must be built on the GPU model that will serve it"
        )
    if missing:
        raise TensorRTUnavailableError(
            "--format tensorrt needs TensorRT and a CUDA GPU: "
            + "; ".join(missing)
            + ". Alternative: --target gpu --format onnx, where Triton's onnxruntime backend applies TensorRT itself."
        )
    return trt


def _has_flag(trt, name: str) -> bool:
    return hasattr(trt.BuilderFlag, name)


def _network(trt, builder, logger, onnx_path: Path, strongly_typed: bool):
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10 on
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTBuildError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    return network, parser  # the parser owns weights the network refers to: keep it alive until the build


def _input_names(network) -> list[str]:
    return [network.get_input(i).name for i in range(network.num_inputs)]


def _profile(builder, network, settings: PlanSettings):
    opt_batch = settings.opt_batch_size or settings.max_batch_size
    opt_seq = min(settings.opt_seq_length, settings.max_seq_length)
    profile = builder.create_optimization_profile()
    for name in _input_names(network):
        profile.set_shape(name, (1, 1), (opt_batch, opt_seq), (settings.max_batch_size, settings.max_seq_length))
    return profile


def _calibrator(trt, network, batches: Sequence[dict[str, np.ndarray]]):
    import torch

    dtypes = {network.get_input(i).name: trt.nptype(network.get_input(i).dtype) for i in range(network.num_inputs)}

    class Calibrator(trt.IInt8EntropyCalibrator2):
        """Feeds fixed-shape batches of real token ids; keeps the device buffers alive between calls."""

        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.pending = iter(batches)
            self.device: dict[str, torch.Tensor] = {}

        def get_batch_size(self) -> int:
            return int(next(iter(batches[0].values())).shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self.pending, None)
            if batch is None:
                return None
            self.device = {n: torch.from_numpy(batch[n].astype(dtypes[n])).cuda() for n in names}
            return [int(self.device[n].data_ptr()) for n in names]

        def read_calibration_cache(self) -> bytes | None:
            return None

        def write_calibration_cache(self, cache) -> None:
            return None

    return Calibrator()


def _set_precision(trt, builder, network, config, settings: PlanSettings, calibration) -> None:
    if settings.precision == "fp16" and _has_flag(trt, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)
    elif settings.precision == "int8":
        if not _has_flag(trt, "INT8"):
            raise TensorRTBuildError(
                f"TensorRT {trt.__version__} removed implicit INT8 quantization (BuilderFlag.INT8 and calibrators); "
                "an int8 plan needs an ONNX with explicit Q/DQ nodes, which this exporter does not produce: "
                "use --precision fp16, or --format onnx --precision int8"
            )
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)  # layers without int8 kernels fall back to fp16, not fp32
        shape = (settings.calibration_batch_size, settings.max_seq_length)
        profile = builder.create_optimization_profile()
        for name in _input_names(network):
            profile.set_shape(name, shape, shape, shape)
        config.set_calibration_profile(profile)
        config.int8_calibrator = calibration(network)


def _load_timing_cache(config, path: Path) -> None:
    data = path.read_bytes() if path.exists() else b""
    config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False)


def _save_timing_cache(config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(memoryview(config.get_timing_cache().serialize()))


def calibration_batches(token_ids: Sequence[Sequence[int]], batch_size: int, width: int) -> list[dict[str, np.ndarray]]:
    """Fixed-shape [batch_size, width] int64 batches (input_ids, attention_mask) for the INT8 calibrator."""
    from export.encoder.minilm import pad_batch

    full = len(token_ids) - len(token_ids) % batch_size
    batches = []
    for start in range(0, full, batch_size):
        ids, mask = pad_batch([list(t)[:width] for t in token_ids[start : start + batch_size]], width)
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    settings: PlanSettings,
    calibration: Sequence[dict[str, np.ndarray]] = (),
) -> Path:
    """Build and serialize the engine to `plan_path`; the timing cache file is read and updated."""
    trt = require_tensorrt()
    strongly_typed = settings.precision == "fp16" and not _has_flag(trt, "FP16")
    if strongly_typed:  # TensorRT >= 11: precision comes from the graph's types
        from export.encoder.quantize import convert_fp16

        onnx_path = convert_fp16(onnx_path, Path(tempfile.mkdtemp()) / "model.fp16.onnx")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, parser = _network(trt, builder, logger, onnx_path, strongly_typed)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    config.add_optimization_profile(_profile(builder, network, settings))
    _load_timing_cache(config, settings.timing_cache)
    _set_precision(trt, builder, network, config, settings, lambda net: _calibrator(trt, net, calibration))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError("TensorRT failed to build the engine (see the TensorRT log above)")
    _save_timing_cache(config, settings.timing_cache)
    with open(plan_path, "wb") as handle:
        handle.write(memoryview(serialized))
    del parser
    return plan_path


def _engine(trt, plan_path: Path):
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise TensorRTBuildError(f"TensorRT could not deserialize {plan_path}")
    return runtime, engine


def plan_io(plan_path: Path) -> tuple[list[Tensor], list[Tensor]]:
    """(inputs, outputs) of a plan as Triton tensors, batch axis left out, dtypes as the engine has them."""
    from export.config import Tensor

    trt = require_tensorrt()
    _, engine = _engine(trt, plan_path)
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = engine.get_tensor_dtype(name).name
        if dtype not in TRT_TO_TRITON:
            raise TensorRTBuildError(f"plan tensor {name!r} has type {dtype}, which Triton cannot serve")
        tensor = Tensor(name, TRT_TO_TRITON[dtype], tuple(engine.get_tensor_shape(name))[1:])
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(tensor)
    return inputs, outputs


def plan_runner(plan_path: Path, output_name: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """`run(input_ids, attention_mask)` on the plan (CUDA), for the parity check."""
    import torch

    trt = require_tensorrt()
    runtime, engine = _engine(trt, plan_path)
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        buffers: dict[str, torch.Tensor] = {}
        for name in inputs:
            array = np.ascontiguousarray(feeds[name].astype(trt.nptype(engine.get_tensor_dtype(name))))
            buffers[name] = torch.from_numpy(array).cuda()
            context.set_input_shape(name, tuple(array.shape))
            context.set_tensor_address(name, int(buffers[name].data_ptr()))
        for name in names:
            if name not in buffers:
                shape = tuple(context.get_tensor_shape(name))
                host = np.empty(shape, dtype=trt.nptype(engine.get_tensor_dtype(name)))
                buffers[name] = torch.from_numpy(host).cuda()
                context.set_tensor_address(name, int(buffers[name].data_ptr()))
        stream = torch.cuda.Stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise TensorRTBuildError("TensorRT execution failed during the parity check")
        stream.synchronize()
        return buffers[output_name].float().cpu().numpy()

    run.keepalive = (runtime, engine, context)  # type: ignore[attr-defined]
    return run
