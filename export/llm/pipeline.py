"""`tritonstack export smollm2`: GGUF → ONNX decoder with an in-place KV cache (fp32, or the GGUF's 4-bit blocks)
→ generation parity → new version.

Same contract as the other pipelines (`export.steps`): options are validated and the version resolved before any
slow step, artifacts are built in a temporary directory, and the repository is written only after every parity check
passed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from export import steps
from export.errors import OptionError
from export.llm.repack import repack
from export.llm.specs import GenerationServing, text_generation
from export.steps import ExportResult, Quiet, Reporter, timed

WEIGHTS = ("mixed", "fp32", "packed")
COMMAND = "tritonstack export smollm2"
FP16_ATOL = 0.25  # the GPU graph's logits gate (fp16 weights, activations and cache; tokens must still match)


@dataclass(frozen=True)
class Smollm2Request:
    """`tritonstack export smollm2` options."""

    repository: Path = Path("model_repository")
    name: str = "smollm2"
    target: str = "cpu"
    serving: GenerationServing = field(default_factory=GenerationServing)
    # fp32 | packed (the GGUF's 4-bit blocks as MatMulNBits, see export.llm.repack) | mixed (packed for single-row
    # decode steps, fp32 for the rest: see llm_engine.Decoder)
    weights: str = "mixed"
    atol: float = 1e-2
    max_new_tokens: int = 24
    version: int | None = None
    force: bool = False
    if_missing: bool = False


def validate_smollm2(req: Smollm2Request) -> None:
    """All checks that need no model."""
    if req.target not in ("cpu", "gpu"):
        raise OptionError(f"--target {req.target!r}: expected cpu or gpu")
    steps.validate_version_policy(req.serving.version_policy)
    s = req.serving
    if min(s.max_batch_rows, s.max_kv_tokens, s.max_context, s.max_stream_interval) < 1:
        raise OptionError("--max-batch-rows, --max-kv-tokens, --max-context and --max-stream-interval must be >= 1")
    if min(s.prefix_cache_tokens, s.prefill_chunk_tokens) < 0:
        raise OptionError("--prefix-cache-tokens and --prefill-chunk-tokens must be >= 0")
    if s.max_kv_tokens < s.max_context:
        raise OptionError(
            f"--max-kv-tokens ({s.max_kv_tokens}) must be at least --max-context ({s.max_context}), "
            "or a request using the full context could never be admitted"
        )
    if req.weights not in WEIGHTS:
        raise OptionError(f"--weights {req.weights!r}: expected one of {', '.join(WEIGHTS)}")
    if req.atol <= 0 or req.max_new_tokens < 1:
        raise OptionError("--atol must be > 0 and --parity-tokens >= 1")


def _build(req: Smollm2Request, model, tokenizer, work: Path, result: ExportResult,
           reporter: Reporter) -> tuple[Path, Path | None, dict[str, Path]]:
    """The served ONNX decoder(s) and the tokenizer assets, in `work`: (main graph, single-row graph, assets)."""
    from export.llm import smollm2
    from export.llm.graph import build_decoder

    onnx_path = work / "model.onnx"
    precision = "fp16" if req.target == "gpu" else "fp32"
    with timed(reporter, result, f"build {precision} ONNX decoder (GroupQueryAttention, KV cache in place)"):
        build_decoder(model, onnx_path, precision)
        assets = smollm2.write_assets(model, tokenizer, work / "assets")
    if req.weights == "fp32" or req.target == "gpu":  # the GPU graph is fp16 throughout: no 4-bit variant
        return onnx_path, None, assets
    packed = work / "model.packed.onnx"
    with timed(reporter, result, "repack GGUF 4-bit blocks as MatMulNBits (lossless)"):
        reporter.note(repack(onnx_path, packed).describe())
    if req.weights == "packed":
        onnx_path.unlink()
        return packed, None, assets
    return onnx_path, packed, assets


def _weights(req: Smollm2Request) -> str:
    return "fp16" if req.target == "gpu" else req.weights


def _parity_place(target: str):
    """Where the parity check runs the graph: the GPU graph on CUDA when this machine can (onnxruntime-gpu and
    CuPy), else on ONNX Runtime's CPU provider, which runs the same fp16 graph."""
    from triton_models.llm_engine import HOST, Place

    if target != "gpu":
        return HOST, "CPU"
    gpu = Place("cuda", 0)
    if gpu.missing() is not None:
        return HOST, "fp16 graph on the CPU: no CUDA runtime here"
    return gpu, "CUDA"


def _check(req: Smollm2Request, model, tokenizer, graphs: tuple[Path, Path | None], assets: dict[str, Path],
           result: ExportResult, reporter: Reporter) -> None:
    """Generation parity of the served decoder and prompt builder; ParityError (nothing written) on failure."""
    from export.llm import parity as generation_parity
    from triton_models.llm_engine import Decoder, ModelInfo
    from triton_models.llm_text import PromptBuilder

    place, where = _parity_place(req.target)
    with timed(reporter, result, f"parity: greedy ONNX vs transformers generate ({where})"):
        decoder = Decoder(graphs[0], ModelInfo.load(assets["generation.json"]), single_row_path=graphs[1],
                          place=place)
        served = PromptBuilder(assets["tokenizer.json"], assets["chat_template.jinja"],
                               tokenizer.bos_token or "", tokenizer.eos_token or "")
        gpu = req.target == "gpu"
        report = generation_parity.check(model, tokenizer, decoder, served,
                                         atol=max(req.atol, FP16_ATOL) if gpu else req.atol,
                                         max_new_tokens=req.max_new_tokens,
                                         label=f"{_weights(req)} ONNX decoder with KV cache, {where}")
    steps.check(result, report, reporter, gate=generation_parity.enforce)


def export_smollm2(req: Smollm2Request, reporter: Reporter | None = None) -> ExportResult:
    """Export SmolLM2-135M-Instruct as asked; raises ExportError (nothing written) when anything fails."""
    from export.llm import smollm2

    reporter = reporter or Quiet()
    validate_smollm2(req)
    result = steps.start(req.repository, req.name, version=req.version, force=req.force, if_missing=req.if_missing,
                         command=COMMAND)
    if result.skipped_reason:
        return result
    source = smollm2.source_dir()
    with timed(reporter, result, "load SmolLM2-135M-Instruct (GGUF → fp32)"):
        tokenizer = smollm2.load_tokenizer(source)
        model = smollm2.load_model(source)
    positions = int(model.config.max_position_embeddings)
    if req.serving.max_context > positions:  # the graph's rotary tables end there
        raise OptionError(f"--max-context {req.serving.max_context} exceeds the model's {positions} positions")
    with tempfile.TemporaryDirectory(prefix=steps.TEMP_PREFIX) as tmp:
        onnx_path, single_row, assets = _build(req, model, tokenizer, Path(tmp), result, reporter)
        _check(req, model, tokenizer, (onnx_path, single_row), assets, result, reporter)
        files = text_generation(req.name, onnx_path, assets, req.serving, _weights(req), single_row, req.target)
        steps.write(req.repository, [files], result, reporter, force=req.force)
    return result
