"""`tritonstack export smollm2`: GGUF → ONNX decoder with an in-place KV cache (fp32, or the GGUF's 4-bit blocks)
→ generation parity → new version. `--decode int8` writes the int8-activation decoder (`export.llm.int8`) instead,
behind a gate of its own (`export.llm.agreement`).

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
DECODES = ("exact", "int8")
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
    # exact (greedy tokens equal transformers') | int8 (int8 activations, export.llm.int8; gated by agreement)
    decode: str = "exact"
    min_agreement: float = 0.98  # the int8 gate: teacher-forced top-1 agreement with the fp32 reference
    agreement_tokens: int = 128  # per agreement prompt (export.llm.agreement.PROMPTS)
    int8_block: int = 16  # activations quantised per this many values (export.llm.int8.INT8_BLOCK)
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
    if req.decode not in DECODES:
        raise OptionError(f"--decode {req.decode!r}: expected one of {', '.join(DECODES)}")
    if req.decode == "int8" and req.target != "cpu":
        raise OptionError("--decode int8 is a CPU mode (ONNX Runtime's int8 MatMulNBits kernels): use --target cpu")
    if not 0 < req.min_agreement <= 1 or req.agreement_tokens < 1:
        raise OptionError("--min-agreement must be within (0, 1] and the agreement tokens >= 1")
    if req.int8_block not in (16, 32):
        raise OptionError(f"--int8-block {req.int8_block}: expected 16 or 32")


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
    if req.decode == "int8":  # the fp32 graph prefills, the int8 one decodes (Decoder's decode_path)
        from export.llm import int8

        int8_path = work / "model.int8.onnx"
        with timed(reporter, result, "int8 decoder: GGUF blocks as MatMulNBits with int8 activations"):
            reporter.note(int8.describe(int8.build_int8(onnx_path, int8_path, int8_block=req.int8_block),
                                        req.int8_block))
        return onnx_path, int8_path, assets
    if req.weights == "fp32" or req.target == "gpu":  # the GPU graph is fp16 throughout: no 4-bit variant
        return onnx_path, None, assets
    packed = work / "model.packed.onnx"
    with timed(reporter, result, "repack GGUF 4-bit blocks as MatMulNBits (lossless)"):
        reporter.note(repack(onnx_path, packed).describe())
    if req.weights == "packed":
        onnx_path.unlink()
        return packed, None, assets
    return onnx_path, packed, assets


def _second_graph(req: Smollm2Request, path: Path | None) -> dict[str, Path | None]:
    """`llm_engine.Decoder`'s keyword for the second graph: the int8 decode graph, or the single-row 4-bit one."""
    return {"decode_path": path} if req.decode == "int8" else {"single_row_path": path}


def _weights(req: Smollm2Request) -> str:
    return "fp16" if req.target == "gpu" else "int8" if req.decode == "int8" else req.weights


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
        decoder = Decoder(graphs[0], ModelInfo.load(assets["generation.json"]), place=place,
                          **_second_graph(req, graphs[1]))
        served = PromptBuilder(assets["tokenizer.json"], assets["chat_template.jinja"],
                               tokenizer.bos_token or "", tokenizer.eos_token or "")
        gpu = req.target == "gpu"
        report = generation_parity.check(model, tokenizer, decoder, served,
                                         atol=max(req.atol, FP16_ATOL) if gpu else req.atol,
                                         max_new_tokens=req.max_new_tokens,
                                         label=f"{_weights(req)} ONNX decoder with KV cache, {where}")
    if req.decode == "int8":
        _check_int8(req, model, tokenizer, decoder, report, graphs[0], result, reporter)
        return
    steps.check(result, report, reporter, gate=generation_parity.enforce)


def _check_int8(req: Smollm2Request, model, tokenizer, decoder, parity, fp32_graph: Path, result: ExportResult,
                reporter: Reporter) -> None:
    """The int8 decoder's own gate (`export.llm.agreement`); ParityError (nothing written) on failure."""
    from export.llm import agreement
    from triton_models.llm_engine import Decoder

    with timed(reporter, result, "int8 gate: teacher-forced agreement with the fp32 reference, batched = single"):
        exact = Decoder(fp32_graph, decoder.info)  # the fp32 graph alone: the exact decoder
        gate = agreement.check(model, tokenizer, exact, decoder, parity, label="int8 ONNX decoder with KV cache, CPU",
                               tokens=req.agreement_tokens, min_agreement=req.min_agreement)
    steps.check(result, gate, reporter, gate=agreement.enforce)


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
        onnx_path, second, assets = _build(req, model, tokenizer, Path(tmp), result, reporter)
        _check(req, model, tokenizer, (onnx_path, second), assets, result, reporter)
        if req.decode == "int8":
            files = text_generation(req.name, onnx_path, assets, req.serving, _weights(req), target=req.target,
                                    decode=req.decode, decode_file=second, gate=result.reports[-1].parameters())
        else:
            files = text_generation(req.name, onnx_path, assets, req.serving, _weights(req), second, req.target)
        steps.write(req.repository, [files], result, reporter, force=req.force)
    return result
