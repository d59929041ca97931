"""The export pipelines behind `tritonstack export minilm|torch`: validate → export → check → write.

Options are validated (and the target version resolved) before any slow step, so a bad flag or an
existing version fails in milliseconds. Artifacts are built in a temporary directory; the repository is
touched only after every parity gate passed, so a refused export writes nothing.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from export.config import ConfigError, parse_version_policy
from export.encoder import drift_reference, specs
from export.errors import OptionError
from export.parity import DEFAULT_MIN_COSINE, EmbeddingParity, TensorParity, enforce
from export.repository import ModelFiles, resolve_version, stale_code, versions, write_version


class Reporter(Protocol):
    """Where progress goes (the CLI shows it with rich; tests may pass `Quiet`)."""

    def step(self, description: str) -> contextlib.AbstractContextManager[None]: ...

    def note(self, text: str) -> None: ...


class Quiet:
    """A Reporter that shows nothing."""

    def step(self, description: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def note(self, text: str) -> None:
        return None


@dataclass
class ExportResult:
    """What an export did: the version written (None when skipped), reports, per-step seconds."""

    version: int | None
    paths: list[Path] = field(default_factory=list)
    reports: list[EmbeddingParity | TensorParity] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    skipped_reason: str | None = None


@dataclass(frozen=True)
class MinilmRequest:
    """`tritonstack export minilm` options."""

    repository: Path = Path("model_repository")
    name: str = "minilm"
    target: str = "cpu"
    precision: str = "fp32"
    format: str = "onnx"
    serving: specs.ServingOptions = field(default_factory=specs.ServingOptions)
    min_cosine: float | None = None
    version: int | None = None
    force: bool = False
    if_missing: bool = False
    pad_to_multiple_of: int = 16
    timing_cache: Path = Path(".tritonstack/tensorrt.timing.cache")
    drift_reference: Path | None = None  # texts for the drift centroid; None = the parity sentences


@dataclass(frozen=True)
class TorchRequest:
    """`tritonstack export torch` options."""

    factory: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    name: str
    repository: Path = Path("model_repository")
    target: str = "cpu"
    precision: str = "fp32"
    serving: specs.ServingOptions = field(default_factory=specs.ServingOptions)
    atol: float = 1e-4
    version: int | None = None
    force: bool = False
    if_missing: bool = False


@contextlib.contextmanager
def _timed(reporter: Reporter, result: ExportResult, description: str) -> Iterator[None]:
    start = time.perf_counter()
    with reporter.step(description):
        yield
    result.timings[description] = time.perf_counter() - start


def validate_serving(opts: specs.ServingOptions) -> None:
    """Reject inconsistent config knobs before any slow work."""
    try:
        parse_version_policy(opts.version_policy)
    except ConfigError as exc:
        raise OptionError(f"--version-policy: {exc}") from exc
    if opts.max_batch_size < 1 or opts.instances < 1:
        raise OptionError("--max-batch-size and --instances must be >= 1")
    if any(p < 1 or p > opts.max_batch_size for p in opts.preferred_batch_sizes):
        raise OptionError(f"--preferred-batch-size values must be within 1..--max-batch-size ({opts.max_batch_size})")
    if opts.max_queue_delay_us < 0 or opts.max_queue_size < 0:
        raise OptionError("--max-queue-delay-us and --max-queue-size must be >= 0")


def _validate_target(target: str, precision: str, fmt: str) -> None:
    if target not in ("cpu", "gpu"):
        raise OptionError(f"--target {target!r}: expected cpu or gpu")
    if precision == "fp16" and target != "gpu":
        raise OptionError(
            "--precision fp16 needs --target gpu: the CPU target runs ONNX Runtime on CPU, which has no fast "
            "fp16 kernels (use fp32, or int8 for speed); on GPU, TensorRT applies FP16"
        )
    if fmt == "tensorrt" and target != "gpu":
        raise OptionError("--format tensorrt needs --target gpu (the pip-installed Triton has only the python backend)")


def _model_names(req: MinilmRequest) -> list[str]:
    if req.target == "cpu":
        return [req.name]
    return [f"{req.name}_encoder", f"{req.name}_tokenizer", req.name]


def _skip_if_present(repository: Path, name: str, command: str) -> ExportResult | None:
    """`--if-missing`: the result that skips the export when `name` has a version; it says so when the newest
    version's python model code is not this tritonstack's (`command` writes a new version with it)."""
    present = versions(repository, name)
    if not present:
        return None
    reason = f"{name} already has version(s) {', '.join(map(str, present))} in {repository}: nothing to do"
    if stale := stale_code(repository / name / str(max(present))):
        reason += (f"; but version {max(present)}'s model code ({', '.join(stale)}) is not this tritonstack's "
                   f"(an older export): `{command}` writes a new version with the current code")
    return ExportResult(version=None, skipped_reason=reason)


def _gate(req_min: float | None, precision: str) -> float:
    return req_min if req_min is not None else DEFAULT_MIN_COSINE[precision]


def validate_minilm(req: MinilmRequest) -> None:
    """All checks that need no model: options, precision/target/format, TensorRT availability."""
    if req.precision not in DEFAULT_MIN_COSINE or req.format not in ("onnx", "tensorrt"):
        raise OptionError(f"--precision {req.precision!r} / --format {req.format!r}: see --help for choices")
    _validate_target(req.target, req.precision, req.format)
    validate_serving(req.serving)
    if req.pad_to_multiple_of < 1:
        raise OptionError("--pad-to-multiple-of must be >= 1")
    drift_reference.reference_texts(req.drift_reference)  # a missing or too short file fails before any work
    if req.format == "tensorrt":
        from export.encoder.tensorrt import require_tensorrt

        require_tensorrt()


def _check(result: ExportResult, report: EmbeddingParity | TensorParity, reporter: Reporter) -> None:
    result.reports.append(report)
    reporter.note(report.describe())
    enforce(report)


def _minilm_checks(req: MinilmRequest, onnx_path: Path, source: Path, result: ExportResult, reporter: Reporter) -> None:
    from export.encoder import minilm
    from export.encoder.quantize import convert_fp16
    from export.encoder.sentences import PARITY_SENTENCES

    checked = "int8" if req.precision == "int8" else "fp32"
    with _timed(reporter, result, f"parity: {checked} ONNX vs sentence-transformers"):
        report = minilm.check_parity(
            minilm.ort_runner(onnx_path),
            source,
            PARITY_SENTENCES,
            label=f"{checked} ONNX on ONNX Runtime CPU",
            gate=_gate(req.min_cosine, checked),
        )
    _check(result, report, reporter)
    if req.precision == "fp16" and req.format == "onnx":
        with _timed(reporter, result, "parity: float16 ONNX (proxy for TensorRT FP16)"):
            fp16 = convert_fp16(onnx_path, onnx_path.with_name("model.fp16.onnx"))
            report = minilm.check_parity(
                minilm.ort_runner(fp16),
                source,
                PARITY_SENTENCES,
                label="float16 ONNX on ONNX Runtime CPU (TensorRT FP16 in Triton is not run here)",
                gate=_gate(req.min_cosine, "fp16"),
            )
        _check(result, report, reporter)


def _build_plan(req: MinilmRequest, onnx_path: Path, source: Path, result: ExportResult, reporter: Reporter):
    from export.encoder import minilm, tensorrt
    from export.encoder.sentences import PARITY_SENTENCES

    max_len = minilm.max_seq_length(source)
    settings = tensorrt.PlanSettings(req.serving.max_batch_size, max_len, req.precision, req.timing_cache)
    token_ids = minilm.tokenize(source / "tokenizer.json", PARITY_SENTENCES, max_len)
    calibration = tensorrt.calibration_batches(token_ids, settings.calibration_batch_size, max_len)
    plan = onnx_path.with_name("model.plan")
    with _timed(reporter, result, f"build TensorRT plan ({req.precision})"):
        tensorrt.build_plan(onnx_path, plan, settings, calibration if req.precision == "int8" else ())
    with _timed(reporter, result, "parity: TensorRT plan vs sentence-transformers"):
        report = minilm.check_parity(
            tensorrt.plan_runner(plan, minilm.OUTPUT_NAME),
            source,
            PARITY_SENTENCES,
            label=f"TensorRT {req.precision} plan",
            gate=_gate(req.min_cosine, req.precision),
            batch_size=min(minilm.ORT_BATCH, req.serving.max_batch_size),
        )
    _check(result, report, reporter)
    return plan, *tensorrt.plan_io(plan)


def _drift_parameters(req: MinilmRequest, onnx_path: Path, source: Path, result: ExportResult,
                      reporter: Reporter) -> dict[str, str]:
    """The drift reference (export/encoder/drift_reference.py) of the model as served (int8 weights for int8)."""
    from export.encoder import minilm

    texts, label = drift_reference.reference_texts(req.drift_reference)
    with _timed(reporter, result, f"drift reference: centroid of {len(texts)} texts ({label})"):
        reference = drift_reference.compute(
            minilm.ort_runner(onnx_path), source / "tokenizer.json", minilm.max_seq_length(source), texts, label
        )
    return reference.parameters()


def _minilm_files(
    req: MinilmRequest, onnx_path: Path, source: Path, result: ExportResult, reporter: Reporter
) -> list[ModelFiles]:
    from export import onnx_io
    from export.encoder import minilm

    model = specs.EmbeddingModel(
        onnx_file=onnx_path,
        tokenizer_file=source / "tokenizer.json",
        max_seq_length=minilm.max_seq_length(source),
        dim=minilm.EMBEDDING_DIM,
        precision=req.precision,
        extra_parameters=_drift_parameters(req, onnx_path, source, result, reporter),
    )
    if req.target == "cpu":
        return [specs.text_embedding_cpu(req.name, model, req.serving)]
    plan = None
    if req.format == "tensorrt":
        plan, inputs, outputs = _build_plan(req, onnx_path, source, result, reporter)
    else:
        inputs, outputs = onnx_io.graph_tensors(onnx_path)
    return specs.text_embedding_gpu(
        req.name, model, req.serving, inputs, outputs, plan_file=plan, pad_to_multiple_of=req.pad_to_multiple_of
    )


def export_minilm(req: MinilmRequest, reporter: Reporter | None = None) -> ExportResult:
    """Export all-MiniLM-L6-v2 as asked; raises ExportError (nothing written) when anything fails."""
    from export.encoder import minilm
    from export.encoder.quantize import quantize_int8

    reporter = reporter or Quiet()
    validate_minilm(req)
    if req.if_missing and (skipped := _skip_if_present(req.repository, req.name, "tritonstack export minilm")):
        return skipped
    names = _model_names(req)
    version = resolve_version(req.repository, names, req.version, req.force)
    result = ExportResult(version=version)
    source = minilm.model_dir()
    with tempfile.TemporaryDirectory(prefix="tritonstack-export-") as work:
        onnx_path = Path(work) / "model.onnx"
        with _timed(reporter, result, "export ONNX (torch.onnx, opset 17)"):
            minilm.export_onnx(source, onnx_path)
        if req.precision == "int8":
            with _timed(reporter, result, "quantize int8 (ONNX Runtime dynamic, per-channel)"):
                onnx_path = quantize_int8(onnx_path, Path(work) / "model.int8.onnx")
        _minilm_checks(req, onnx_path, source, result, reporter)
        files = _minilm_files(req, onnx_path, source, result, reporter)
        with _timed(reporter, result, f"write version {version} to {req.repository}"):
            result.paths = write_version(req.repository, files, version, force=req.force)
    return result


def validate_torch(req: TorchRequest) -> None:
    """All checks that need no model."""
    if req.precision not in ("fp32", "fp16"):
        raise OptionError("--precision for `export torch` is fp32 or fp16 (fp16 with --target gpu)")
    _validate_target(req.target, req.precision, "onnx")
    validate_serving(req.serving)
    if not req.inputs or not req.outputs:
        raise OptionError("give at least one --input NAME:DTYPE:SHAPE and one --output NAME")
    if req.atol <= 0:
        raise OptionError("--atol must be > 0")


def export_torch(req: TorchRequest, reporter: Reporter | None = None) -> ExportResult:
    """Export a `module:factory` torch module as asked; raises ExportError (nothing written) on failure."""
    from export import onnx_io
    from export.module import loader as generic

    reporter = reporter or Quiet()
    validate_torch(req)
    input_specs = [generic.InputSpec.parse(text) for text in req.inputs]
    if req.if_missing and (skipped := _skip_if_present(req.repository, req.name, "tritonstack export torch")):
        return skipped
    version = resolve_version(req.repository, [req.name], req.version, req.force)
    result = ExportResult(version=version)
    with _timed(reporter, result, f"build {req.factory}"):
        module = generic.load_module(req.factory)
    with tempfile.TemporaryDirectory(prefix="tritonstack-export-") as work:
        onnx_path = Path(work) / "model.onnx"
        with _timed(reporter, result, "export ONNX (torch.onnx, opset 17)"):
            generic.export_onnx(module, input_specs, req.outputs, onnx_path)
        with _timed(reporter, result, "parity: ONNX vs PyTorch on random inputs"):
            report = generic.check_parity(
                module, onnx_path, input_specs, req.outputs, atol=req.atol, max_batch_size=req.serving.max_batch_size
            )
        _check(result, report, reporter)
        inputs, outputs = onnx_io.graph_tensors(onnx_path)
        files = specs.generic_onnx(
            req.name, onnx_path, inputs, outputs, req.serving, target=req.target, precision=req.precision
        )
        with _timed(reporter, result, f"write version {version} to {req.repository}"):
            result.paths = write_version(req.repository, [files], version, force=req.force)
    return result
