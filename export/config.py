"""Generate Triton `config.pbtxt` files from a typed spec, through Triton's own protobuf schema.

Building the `ModelConfig` message (instead of formatting text) means every field name and enum is checked
by protobuf as we set it; `validate` parses the rendered text back the way Triton will.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

Target = Literal["cpu", "gpu"]

NUMPY_TO_TRITON = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "bytes": "TYPE_STRING",
    "object": "TYPE_STRING",
}


# Where ONNX Runtime's TensorRT accelerator keeps the engines it builds (`trt_engine_cache_path`): a writable volume in
# NVIDIA's image as compose and Kubernetes run it (deploy/docker/triton-gpu.Dockerfile creates it), so that a restart
# loads the engines instead of building them while requests wait.
TRT_ENGINE_CACHE = "/var/cache/tritonstack/trt-engines"


class ConfigError(ValueError):
    """A generated or hand-written config does not parse with Triton's schema, or is inconsistent."""


@dataclass(frozen=True)
class Tensor:
    """One model input or output; `dims` excludes the batch dimension when the model batches."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class Batching:
    """`dynamic_batching`; `max_queue_size` > 0 makes overload a fast rejection (HTTP 503) instead of a queue."""

    enabled: bool = True
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 0
    default_timeout_us: int = 0


@dataclass(frozen=True)
class WarmupSample:
    """A warmup request: for each input, a file under `<model>/warmup/` (raw, row-major bytes).

    `dims` overrides an input's config dims for this sample; warmup needs concrete (non -1) dims.
    """

    name: str
    batch_size: int
    input_files: dict[str, str]
    count: int = 1
    dims: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass
class ModelSpec:
    """What we know about a model to serve; `render` turns it into config.pbtxt text."""

    name: str
    inputs: Sequence[Tensor]
    outputs: Sequence[Tensor]
    backend: str | None = None
    platform: str | None = None
    max_batch_size: int = 0
    batching: Batching | None = field(default_factory=Batching)
    instance_count: int = 1
    instance_kind: Literal["KIND_CPU", "KIND_GPU", "KIND_AUTO", "KIND_MODEL"] = "KIND_CPU"
    gpus: tuple[int, ...] = ()
    version_policy: str = "latest:1"
    warmup: Sequence[WarmupSample] = ()
    parameters: dict[str, str] = field(default_factory=dict)
    tensorrt_accelerator_precision: str | None = None
    # more parameters of the TensorRT accelerator, by the names Triton's onnxruntime backend takes (its README:
    # "Parameter mapping between ONNX Runtime and Triton ONNXRuntime Backend"; it refuses any other name)
    tensorrt_accelerator_parameters: dict[str, str] = field(default_factory=dict)
    decoupled: bool = False
    response_cache: bool = False
    default_model_filename: str | None = None


def parse_version_policy(text: str) -> mc.ModelVersionPolicy:
    """`latest:N`, `all` or `specific:1,2` → Triton's ModelVersionPolicy."""
    policy = mc.ModelVersionPolicy()
    kind, _, arg = text.partition(":")
    if kind == "all" and not arg:
        policy.all.SetInParent()
    elif kind == "latest" and arg.isdigit() and int(arg) > 0:
        policy.latest.num_versions = int(arg)
    elif kind == "specific" and arg and all(v.strip().isdigit() for v in arg.split(",")):
        policy.specific.versions.extend(int(v) for v in arg.split(","))
    else:
        raise ConfigError(f"version policy {text!r}: expected 'latest:N', 'all' or 'specific:V1,V2'")
    return policy


def _tensor(msg: mc.ModelInput | mc.ModelOutput, tensor: Tensor) -> None:
    msg.name = tensor.name
    msg.data_type = mc.DataType.Value(tensor.data_type)
    msg.dims.extend(tensor.dims)
    if tensor.optional and isinstance(msg, mc.ModelInput):
        msg.optional = True


def _batching(cfg: mc.ModelConfig, batching: Batching) -> None:
    db = cfg.dynamic_batching
    db.SetInParent()
    db.max_queue_delay_microseconds = batching.max_queue_delay_us
    db.preferred_batch_size.extend(batching.preferred_batch_sizes)
    if batching.max_queue_size or batching.default_timeout_us:
        qp = db.default_queue_policy
        qp.timeout_action = mc.ModelQueuePolicy.REJECT
        qp.max_queue_size = batching.max_queue_size
        qp.default_timeout_microseconds = batching.default_timeout_us


def _warmup(cfg: mc.ModelConfig, spec: ModelSpec) -> None:
    by_name = {t.name: t for t in spec.inputs}
    for sample in spec.warmup:
        w = cfg.model_warmup.add(name=sample.name, batch_size=sample.batch_size, count=sample.count)
        for input_name, filename in sample.input_files.items():
            if input_name not in by_name:
                raise ConfigError(f"warmup {sample.name!r} names unknown input {input_name!r}")
            tensor = by_name[input_name]
            dims = sample.dims.get(input_name, tensor.dims)
            if any(d < 0 for d in dims):
                raise ConfigError(f"warmup {sample.name!r}: input {input_name!r} needs concrete dims, got {dims}")
            w.inputs[input_name].data_type = mc.DataType.Value(tensor.data_type)
            w.inputs[input_name].dims.extend(dims)
            w.inputs[input_name].input_data_file = filename


def build(spec: ModelSpec) -> mc.ModelConfig:
    """The ModelConfig message for `spec`; raises ConfigError on inconsistent settings."""
    if bool(spec.backend) == bool(spec.platform):
        raise ConfigError(f"{spec.name}: set exactly one of backend or platform")
    if spec.batching and spec.batching.enabled and spec.max_batch_size < 1:
        raise ConfigError(f"{spec.name}: dynamic batching needs max_batch_size >= 1")
    if any(p > spec.max_batch_size for p in (spec.batching.preferred_batch_sizes if spec.batching else ())):
        raise ConfigError(f"{spec.name}: preferred batch sizes must not exceed max_batch_size")
    cfg = mc.ModelConfig(name=spec.name, max_batch_size=spec.max_batch_size)
    if spec.backend:
        cfg.backend = spec.backend
    if spec.platform:
        cfg.platform = spec.platform
    if spec.default_model_filename:
        cfg.default_model_filename = spec.default_model_filename
    cfg.version_policy.CopyFrom(parse_version_policy(spec.version_policy))
    for tensor in spec.inputs:
        _tensor(cfg.input.add(), tensor)
    for tensor in spec.outputs:
        _tensor(cfg.output.add(), tensor)
    if spec.batching and spec.batching.enabled:
        _batching(cfg, spec.batching)
    if spec.platform != "ensemble":
        group = cfg.instance_group.add(
            count=spec.instance_count, kind=mc.ModelInstanceGroup.Kind.Value(spec.instance_kind)
        )
        group.gpus.extend(spec.gpus)
    for key, value in sorted(spec.parameters.items()):
        cfg.parameters[key].string_value = str(value)
    if spec.tensorrt_accelerator_precision:
        acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        acc.parameters["precision_mode"] = spec.tensorrt_accelerator_precision
        acc.parameters["max_workspace_size_bytes"] = str(1 << 30)
        acc.parameters["trt_engine_cache_enable"] = "1"
        acc.parameters["trt_engine_cache_path"] = TRT_ENGINE_CACHE
        for key, value in spec.tensorrt_accelerator_parameters.items():
            acc.parameters[key] = value
    if spec.decoupled:
        cfg.model_transaction_policy.decoupled = True
    if spec.response_cache:
        cfg.response_cache.enable = True
    _warmup(cfg, spec)
    return cfg


def render(cfg: mc.ModelConfig) -> str:
    """config.pbtxt text for a ModelConfig message."""
    return text_format.MessageToString(cfg)


def validate(text: str) -> mc.ModelConfig:
    """Parse config.pbtxt text with Triton's schema, as the server does; raise ConfigError if it fails."""
    cfg = mc.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as exc:
        raise ConfigError(f"config does not parse with Triton's ModelConfig schema: {exc}") from exc
    if not cfg.name:
        raise ConfigError("config has no model name")
    return cfg


def render_spec(spec: ModelSpec) -> str:
    """Build, render and re-validate: the text that goes into config.pbtxt."""
    text = render(build(spec))
    validate(text)
    return text


def add_ensemble_steps(cfg: mc.ModelConfig, steps: Sequence[tuple[str, dict[str, str], dict[str, str]]],
                       version: int = -1) -> None:
    """Append `ensemble_scheduling` steps: (model, {step input: ensemble tensor}, {step output: ensemble tensor}),
    each on `version` of its model (-1: the newest version Triton has loaded)."""
    for model, input_map, output_map in steps:
        step = cfg.ensemble_scheduling.step.add(model_name=model, model_version=version)
        for key, value in input_map.items():
            step.input_map[key] = value
        for key, value in output_map.items():
            step.output_map[key] = value
