"""The pipeline behind `tritonstack export hf`: a local Hugging Face directory → one ONNX graph (→ int8) → parity
against sentence-transformers or transformers (→ the fp16 proxy for the GPU target) → a new version.

Same contract as the other pipelines (`export.steps`): options and the directory are checked and the version resolved
before any slow step, artifacts are built in a temporary directory, and the repository is written only after every
parity gate passed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from export import steps
from export.errors import ExportError, OptionError
from export.hf import specs
from export.hf.source import HfSource, check_name, default_name, inspect_source
from export.parity import DEFAULT_MIN_COSINE
from export.repository import ModelFiles, versions
from export.serving import ServingOptions, validate_serving
from export.steps import ExportResult, Quiet, Reporter, timed

COMMAND = "tritonstack export hf"


@dataclass(frozen=True)
class HfRequest:
    """`tritonstack export hf` options; `name` defaults to the directory's name, sanitised (`default_name`)."""

    source: Path
    task: str
    model_name: str | None = None
    repository: Path = Path("model_repository")
    target: str = "cpu"
    precision: str = "fp32"
    serving: ServingOptions = field(default_factory=lambda: ServingOptions(instances=2))
    pooling: str | None = None  # embed, without sentence-transformers files: mean | cls | lasttoken
    normalize: bool | None = None
    prefix: str | None = None
    max_length: int | None = None
    min_cosine: float | None = None  # embed's gate
    max_score_diff: float | None = None  # rerank's and classify's gate
    pad_to_multiple_of: int = 16
    version: int | None = None
    force: bool = False
    if_missing: bool = False

    @property
    def name(self) -> str:
        return self.model_name or default_name(self.source)


def _model_names(req: HfRequest) -> list[str]:
    return [req.name] if req.target == "cpu" else [f"{req.name}_encoder", f"{req.name}_tokenizer", req.name]


def _existing_task(repository: Path, name: str) -> str | None:
    """The task of the model already under `name` (None when it has no version)."""
    from export.config import validate

    config = repository / name / "config.pbtxt"
    if not versions(repository, name) or not config.exists():
        return None
    cfg = validate(config.read_text(encoding="utf-8"))
    if "tritonstack_task" in cfg.parameters:
        return cfg.parameters["tritonstack_task"].string_value
    return "embed" if any(o.name == "embedding" for o in cfg.output) else "another"


def validate_hf(req: HfRequest) -> HfSource:
    """Every check that needs no model: options, name, the directory and the task; the checked source."""
    if req.precision not in DEFAULT_MIN_COSINE:
        raise OptionError(f"--precision {req.precision!r}: expected fp32, fp16 or int8")
    steps.validate_target(req.target, req.precision, "onnx")
    validate_serving(req.serving)
    if req.pad_to_multiple_of < 1:
        raise OptionError("--pad-to-multiple-of must be >= 1")
    if req.task != "embed" and req.min_cosine is not None:
        raise OptionError("--min-cosine is embed's gate: rerank and classify are gated by --max-score-diff")
    if req.task == "embed" and req.max_score_diff is not None:
        raise OptionError("--max-score-diff is the gate of rerank and classify: embed is gated by --min-cosine")
    source = inspect_source(req.source, req.task, pooling=req.pooling, normalize=req.normalize, prefix=req.prefix,
                            max_length=req.max_length)
    check_name(req.name, req.source)
    existing = _existing_task(req.repository, req.name)
    if existing not in (None, req.task) and not req.force:
        article = "an" if existing[:1] in "aeiou" else "a"
        raise OptionError(f"'{req.name}' in {req.repository} is {article} {existing} model: its config applies to "
                          f"all its versions, so a {req.task} version would break them; choose another --name (or "
                          "--force)")
    return source


def _gate(req: HfRequest, precision: str) -> float:
    from export.hf.parity import DEFAULT_MAX_SCORE_DIFF

    if req.task == "embed":
        return req.min_cosine if req.min_cosine is not None else DEFAULT_MIN_COSINE[precision]
    return req.max_score_diff if req.max_score_diff is not None else DEFAULT_MAX_SCORE_DIFF[precision]


def _check(req: HfRequest, source: HfSource, onnx_path: Path, tokenizer_file: Path, precision: str,
           reference, label: str, result: ExportResult, reporter: Reporter) -> dict[str, str]:
    """Run one parity gate (ParityError when it fails); embed returns its drift-reference parameters."""
    from export.encoder import drift_reference
    from export.hf import parity

    gate = _gate(req, precision)
    if req.task != "embed":
        with timed(reporter, result, f"parity: {label} vs {reference.label}"):
            report = parity.check_scores(onnx_path, tokenizer_file, source, reference, label=label, gate=gate)
        steps.check(result, report, reporter, parity.enforce_scores)
        return {}
    with timed(reporter, result, f"parity: {label} vs {reference.label}"):
        report, embeddings, counts = parity.check_embeddings(onnx_path, tokenizer_file, source, reference,
                                                             label=label, gate=gate)
    steps.check(result, report, reporter)
    # the drift reference of the model as served (the gateway's drift gauges): the parity sentences' centroid
    drift = drift_reference.DriftReference(drift_reference.centroid(embeddings), counts, drift_reference.PARITY_SET)
    return drift.parameters()


def _checks(req: HfRequest, source: HfSource, onnx_path: Path, tokenizer_file: Path, result: ExportResult,
            reporter: Reporter) -> dict[str, str]:
    from export.encoder.quantize import convert_fp16
    from export.hf import parity

    with timed(reporter, result, "reference outputs (" + ("sentence-transformers" if source.sentence_transformers
                                                         else "transformers") + ")"):
        reference = parity.reference(source)
    checked = "int8" if req.precision == "int8" else "fp32"
    drift = _check(req, source, onnx_path, tokenizer_file, checked, reference, f"{checked} ONNX on ONNX Runtime CPU",
                   result, reporter)
    if req.precision == "fp16":
        fp16 = convert_fp16(onnx_path, onnx_path.with_name("model.fp16.onnx"))
        _check(req, source, fp16, tokenizer_file, "fp16", reference,
               "float16 ONNX on ONNX Runtime CPU (TensorRT FP16 in Triton is not run here)", result, reporter)
    return drift


def _files(req: HfRequest, source: HfSource, onnx_path: Path, tokenizer_file: Path,
           drift: dict[str, str]) -> list[ModelFiles]:
    from export import onnx_io

    inputs, outputs = onnx_io.graph_tensors(onnx_path)
    if outputs[0].dims[0] < 1:
        raise ExportError(f"the exported graph's output {outputs[0].name} has no fixed width {outputs[0].dims}")
    labels = source.labels
    prefix = source.embedding.prefix if source.embedding is not None else ""
    model = specs.HfModel(
        task=req.task, onnx_file=onnx_path, tokenizer_file=tokenizer_file, max_seq_length=source.max_length,
        precision=req.precision, width=outputs[0].dims[0], prefix=prefix,
        parameters={**specs.task_parameters(req.task, labels.names if labels else (),
                                            labels.problem_type if labels else "", prefix), **drift},
    )
    if req.target == "cpu":
        return specs.cpu_files(req.name, model, req.serving)
    return specs.gpu_files(req.name, model, req.serving, inputs, outputs, pad_to_multiple_of=req.pad_to_multiple_of)


def export_hf(req: HfRequest, reporter: Reporter | None = None) -> ExportResult:
    """Export the directory's model for its task; raises ExportError (nothing written) when anything fails."""
    from export.encoder.quantize import quantize_int8
    from export.hf import graph

    reporter = reporter or Quiet()
    source = validate_hf(req)
    result = steps.start(req.repository, req.name, models=_model_names(req), version=req.version, force=req.force,
                         if_missing=req.if_missing, command=f"{COMMAND} {req.source} --task {req.task}")
    if result.skipped_reason:
        return result
    reporter.note(source.describe())
    with tempfile.TemporaryDirectory(prefix=steps.TEMP_PREFIX) as work:
        onnx_path = Path(work) / "graph" / "model.onnx"
        with timed(reporter, result, f"export ONNX (torch.onnx, opset {graph.OPSET})"):
            tokenizer_file = graph.save_tokenizer(source, Path(work) / "tokenizer.json")
            graph.export_onnx(source, onnx_path)
        if req.precision == "int8":
            with timed(reporter, result, "quantize int8 (ONNX Runtime dynamic, per-channel)"):
                onnx_path = quantize_int8(onnx_path, Path(work) / "model.int8.onnx")
        drift = _checks(req, source, onnx_path, tokenizer_file, result, reporter)
        files = _files(req, source, onnx_path, tokenizer_file, drift)
        steps.write(req.repository, files, result, reporter, force=req.force)
    return result
