"""The pipeline behind `tritonstack export minilm`: all-MiniLM-L6-v2 → ONNX (→ int8, → TensorRT) → parity against
sentence-transformers → drift reference → new version.

Same contract as the other pipelines (`export.steps`): options are validated and the version resolved before any
slow step, artifacts are built in a temporary directory, and the repository is written only after every parity
gate passed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from export import steps
from export.encoder import drift_reference, specs
from export.errors import OptionError
from export.parity import DEFAULT_MIN_COSINE
from export.repository import ModelFiles
from export.serving import ServingOptions, validate_serving
from export.steps import ExportResult, Quiet, Reporter, timed

if TYPE_CHECKING:
    from export.config import Tensor

COMMAND = "tritonstack export minilm"


@dataclass(frozen=True)
class MinilmRequest:
    """`tritonstack export minilm` options."""

    repository: Path = Path("model_repository")
    name: str = "minilm"
    target: str = "cpu"
    precision: str = "fp32"
    format: str = "onnx"
    serving: ServingOptions = field(default_factory=ServingOptions)
    min_cosine: float | None = None
    version: int | None = None
    force: bool = False
    if_missing: bool = False
    pad_to_multiple_of: int = 16
    timing_cache: Path = Path(".tritonstack/tensorrt.timing.cache")
    drift_reference: Path | None = None  # texts for the drift centroid; None = the parity sentences


def _model_names(req: MinilmRequest) -> list[str]:
    if req.target == "cpu":
        return [req.name]
    return [f"{req.name}_encoder", f"{req.name}_tokenizer", req.name]


def _gate(req_min: float | None, precision: str) -> float:
    return req_min if req_min is not None else DEFAULT_MIN_COSINE[precision]


def validate_minilm(req: MinilmRequest) -> None:
    """All checks that need no model: options, precision/target/format, TensorRT availability."""
    if req.precision not in DEFAULT_MIN_COSINE or req.format not in ("onnx", "tensorrt"):
        raise OptionError(f"--precision {req.precision!r} / --format {req.format!r}: see --help for choices")
    steps.validate_target(req.target, req.precision, req.format)
    validate_serving(req.serving)
    if req.pad_to_multiple_of < 1:
        raise OptionError("--pad-to-multiple-of must be >= 1")
    drift_reference.reference_texts(req.drift_reference)  # a missing or too short file fails before any work
    if req.format == "tensorrt":
        from export.encoder.tensorrt import require_tensorrt

        require_tensorrt()


def _minilm_checks(req: MinilmRequest, onnx_path: Path, source: Path, result: ExportResult, reporter: Reporter) -> None:
    from export.encoder import minilm
    from export.encoder.quantize import convert_fp16
    from export.encoder.sentences import PARITY_SENTENCES

    checked = "int8" if req.precision == "int8" else "fp32"
    with timed(reporter, result, f"parity: {checked} ONNX vs sentence-transformers"):
        report = minilm.check_parity(
            minilm.ort_runner(onnx_path),
            source,
            PARITY_SENTENCES,
            label=f"{checked} ONNX on ONNX Runtime CPU",
            gate=_gate(req.min_cosine, checked),
        )
    steps.check(result, report, reporter)
    if req.precision == "fp16" and req.format == "onnx":
        with timed(reporter, result, "parity: float16 ONNX (proxy for TensorRT FP16)"):
            fp16 = convert_fp16(onnx_path, onnx_path.with_name("model.fp16.onnx"))
            report = minilm.check_parity(
                minilm.ort_runner(fp16),
                source,
                PARITY_SENTENCES,
                label="float16 ONNX on ONNX Runtime CPU (TensorRT FP16 in Triton is not run here)",
                gate=_gate(req.min_cosine, "fp16"),
            )
        steps.check(result, report, reporter)


def _build_plan(req: MinilmRequest, onnx_path: Path, source: Path, result: ExportResult,
                reporter: Reporter) -> tuple[Path, str, list[Tensor], list[Tensor]]:
    """The plan, the TensorRT version that built it, and its inputs and outputs."""
    from export.encoder import minilm, tensorrt
    from export.encoder.sentences import PARITY_SENTENCES

    max_len = minilm.max_seq_length(source)
    settings = tensorrt.PlanSettings(req.serving.max_batch_size, max_len, req.precision, req.timing_cache)
    token_ids = minilm.tokenize(source / "tokenizer.json", PARITY_SENTENCES, max_len)
    calibration = tensorrt.calibration_batches(token_ids, settings.calibration_batch_size, max_len)
    plan = onnx_path.with_name("model.plan")
    with timed(reporter, result, f"build TensorRT plan ({req.precision})"):
        tensorrt.build_plan(onnx_path, plan, settings, calibration if req.precision == "int8" else ())
    with timed(reporter, result, "parity: TensorRT plan vs sentence-transformers"):
        report = minilm.check_parity(
            tensorrt.plan_runner(plan, minilm.OUTPUT_NAME),
            source,
            PARITY_SENTENCES,
            label=f"TensorRT {req.precision} plan",
            gate=_gate(req.min_cosine, req.precision),
            batch_size=min(minilm.ORT_BATCH, req.serving.max_batch_size),
        )
    steps.check(result, report, reporter)
    return plan, str(tensorrt.require_tensorrt().__version__), *tensorrt.plan_io(plan)


def _drift_parameters(req: MinilmRequest, onnx_path: Path, source: Path, result: ExportResult,
                      reporter: Reporter) -> dict[str, str]:
    """The drift reference (export/encoder/drift_reference.py) of the model as served (int8 weights for int8)."""
    from export.encoder import minilm

    texts, label = drift_reference.reference_texts(req.drift_reference)
    with timed(reporter, result, f"drift reference: centroid of {len(texts)} texts ({label})"):
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
    plan, tensorrt_version = None, None
    if req.format == "tensorrt":
        plan, tensorrt_version, inputs, outputs = _build_plan(req, onnx_path, source, result, reporter)
    else:
        inputs, outputs = onnx_io.graph_tensors(onnx_path)
    assert result.version is not None
    return specs.text_embedding_gpu(
        req.name, model, req.serving, inputs, outputs, version=result.version, plan_file=plan,
        tensorrt_version=tensorrt_version, pad_to_multiple_of=req.pad_to_multiple_of
    )


def export_minilm(req: MinilmRequest, reporter: Reporter | None = None) -> ExportResult:
    """Export all-MiniLM-L6-v2 as asked; raises ExportError (nothing written) when anything fails."""
    from export.encoder import minilm
    from export.encoder.quantize import quantize_int8

    reporter = reporter or Quiet()
    validate_minilm(req)
    result = steps.start(req.repository, req.name, models=_model_names(req), version=req.version, force=req.force,
                         if_missing=req.if_missing, command=COMMAND)
    if result.skipped_reason:
        return result
    source = minilm.model_dir()
    with tempfile.TemporaryDirectory(prefix=steps.TEMP_PREFIX) as work:
        onnx_path = Path(work) / "model.onnx"
        with timed(reporter, result, "export ONNX (torch.onnx, opset 17)"):
            minilm.export_onnx(source, onnx_path)
        if req.precision == "int8":
            with timed(reporter, result, "quantize int8 (ONNX Runtime dynamic, per-channel)"):
                onnx_path = quantize_int8(onnx_path, Path(work) / "model.int8.onnx")
        _minilm_checks(req, onnx_path, source, result, reporter)
        files = _minilm_files(req, onnx_path, source, result, reporter)
        steps.write(req.repository, files, result, reporter, force=req.force)
    return result
