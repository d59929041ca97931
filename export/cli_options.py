"""The typer options the `tritonstack export` commands share, declared once.

`ServingFlags` holds the serving flags of the batched exports (`minilm`, `torch`): each field's type carries its
typer option (name, bounds, help) and its default is the flag's default. `serving_flags` gives a command those
flags in place of its keyword-only `serving: ServingFlags` parameter, at that parameter's place in `--help`, and
passes them to it as one `ServingFlags`.

Nothing heavy is imported here (no torch, numpy or protobuf), so `tritonstack --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from export.serving import ServingOptions


class Target(StrEnum):
    cpu = "cpu"
    gpu = "gpu"


class Precision(StrEnum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


class Format(StrEnum):
    onnx = "onnx"
    tensorrt = "tensorrt"


class Task(StrEnum):
    """What `export hf` serves a model for (the model contract in docs/EXPORT.md)."""

    embed = "embed"
    rerank = "rerank"
    classify = "classify"


class Pooling(StrEnum):
    """`export hf --pooling`; `last` is sentence-transformers' `lasttoken`."""

    mean = "mean"
    cls = "cls"
    last = "last"


# Options shared by every export command (config knobs and repository handling).
RepositoryOpt = Annotated[Path, typer.Option("--repository", "-r", help="Triton model repository directory.")]
TargetOpt = Annotated[
    Target, typer.Option(help="cpu: python backend + ONNX Runtime (pip Triton); gpu: official Triton image.")
]
MaxBatchOpt = Annotated[int, typer.Option("--max-batch-size", min=1, help="Triton max_batch_size.")]
BatchingOpt = Annotated[
    bool, typer.Option("--dynamic-batching/--no-dynamic-batching", help="Let Triton co-batch concurrent requests.")
]
QueueDelayOpt = Annotated[
    int, typer.Option("--max-queue-delay-us", min=0, help="dynamic_batching max_queue_delay_microseconds.")
]
PreferredOpt = Annotated[
    list[int] | None, typer.Option("--preferred-batch-size", help="dynamic_batching preferred_batch_size (repeatable).")
]
QueueSizeOpt = Annotated[
    int,
    typer.Option(
        "--max-queue-size",
        min=0,
        help="Queue limit: beyond it requests are rejected at once (503). 0 = no queue policy (default: on the "
        "bundled Triton 2.51 a queue policy stalls the dynamic batcher between batches; see docs/EXPORT.md).",
    ),
]
InstancesOpt = Annotated[
    int,
    typer.Option(
        "--instances",
        min=1,
        help="instance_group count. minilm defaults to 2: one batch computes while the next forms "
        "(`tritonstack bench triton --tuning` compares); intra-op threads 0 = the cores split between them.",
    ),
]
PolicyOpt = Annotated[str, typer.Option("--version-policy", help="latest:N | all | specific:V1,V2")]
WarmupOpt = Annotated[bool, typer.Option("--warmup/--no-warmup", help="Generate model_warmup requests.")]
IntraOpt = Annotated[
    int, typer.Option("--intra-op-threads", min=0, help="ONNX Runtime intra-op threads (0 = all cores).")
]
InterOpt = Annotated[int, typer.Option("--inter-op-threads", min=0, help="ONNX Runtime inter-op threads.")]
SpinOpt = Annotated[
    bool,
    typer.Option(
        "--ort-spinning/--no-ort-spinning",
        help="Let ONNX Runtime's intra-op threads spin-wait. Off by default: on a small CPU box the spinning steals "
        "cores from Triton's frontends under load (`tritonstack bench triton --tuning` compares).",
    ),
]
VersionOpt = Annotated[int | None, typer.Option("--version", min=1, help="Version to write (default: next free).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace the version if it exists.")]
IfMissingOpt = Annotated[bool, typer.Option("--if-missing", help="Do nothing when the model already has a version.")]


@dataclasses.dataclass(frozen=True)
class ServingFlags:
    """The serving flags of `export minilm` and `export torch`, as typer parsed them."""

    max_batch_size: MaxBatchOpt = 64
    dynamic_batching: BatchingOpt = True
    max_queue_delay_us: QueueDelayOpt = 0
    preferred_batch_size: PreferredOpt = None
    max_queue_size: QueueSizeOpt = 0
    instances: InstancesOpt = 1
    version_policy: PolicyOpt = "latest:1"
    warmup: WarmupOpt = True
    intra_op_threads: IntraOpt = 0
    inter_op_threads: InterOpt = 1
    ort_spinning: SpinOpt = False

    def options(self) -> ServingOptions:
        """The request's `ServingOptions` (preferred batch sizes sorted, each once)."""
        from export.serving import ServingOptions

        knobs = dataclasses.asdict(self)
        preferred = knobs.pop("preferred_batch_size") or ()
        return ServingOptions(**knobs, preferred_batch_sizes=tuple(sorted(set(preferred))))


def _flag_parameters(**defaults: Any) -> list[inspect.Parameter]:
    """`ServingFlags`' fields as keyword-only command parameters; `defaults` overrides some fields' defaults."""
    hints = typing.get_type_hints(ServingFlags, include_extras=True)
    return [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=defaults.get(f.name, f.default),
                          annotation=hints[f.name])
        for f in dataclasses.fields(ServingFlags)
    ]


def serving_flags(**defaults: Any) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorate a command (below `@app.command()`) whose keyword-only `serving: ServingFlags` parameter stands for
    the serving flags; `defaults` overrides some flags' defaults for this command (e.g. `instances=2`)."""
    unknown = set(defaults) - {f.name for f in dataclasses.fields(ServingFlags)}
    if unknown:
        raise TypeError(f"not serving flags: {sorted(unknown)}")

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        parameters = list(signature.parameters.values())
        at = [p.name for p in parameters].index("serving")
        if parameters[at].kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(f"{command.__name__}: `serving` must be keyword-only (after `*`)")
        flags = _flag_parameters(**defaults)
        merged = [*parameters[:at], *flags, *parameters[at + 1 :]]

        @functools.wraps(command)
        def run(**kwargs: Any) -> None:
            serving = ServingFlags(**{p.name: kwargs.pop(p.name) for p in flags})
            command(**kwargs, serving=serving)

        run.__signature__ = signature.replace(parameters=merged)  # type: ignore[attr-defined]  # what typer reads
        run.__annotations__ = {p.name: p.annotation for p in merged} | {"return": signature.return_annotation}
        return run

    return decorate
