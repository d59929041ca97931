"""Steps every export pipeline shares (`export.encoder`, `export.llm`, `export.module`): validate → export → check →
write.

Options are validated (and the target version resolved) before any slow step, so a bad flag or an existing version
fails before any model is loaded. Artifacts are built in a temporary directory; the repository is touched only after
every parity gate passed, so a refused export writes nothing. This module holds the pieces of that contract: the
progress reporter, the result, per-step timing, `--if-missing`, the version to write, the parity gate and the
option checks more than one family makes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from export.config import ConfigError, parse_version_policy
from export.errors import OptionError
from export.parity import enforce
from export.repository import ModelFiles, resolve_version, stale_code, versions, write_version

TEMP_PREFIX = "tritonstack-export-"  # the temporary directory an export builds its artifacts in


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


class ParityReport(Protocol):
    """What a parity check returns (`export.parity`, `export.llm.parity`): a verdict and a printable report."""

    @property
    def passed(self) -> bool: ...

    def describe(self) -> str: ...


@dataclass
class ExportResult:
    """What an export did: the version written (None when skipped), reports, per-step seconds."""

    version: int | None
    paths: list[Path] = field(default_factory=list)
    reports: list[ParityReport] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    skipped_reason: str | None = None


@contextlib.contextmanager
def timed(reporter: Reporter, result: ExportResult, description: str) -> Iterator[None]:
    """Run the block as one reported step and record its seconds in `result.timings[description]`."""
    start = time.perf_counter()
    with reporter.step(description):
        yield
    result.timings[description] = time.perf_counter() - start


def skip_if_present(repository: Path, name: str, command: str) -> ExportResult | None:
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


def start(repository: Path, name: str, *, models: Sequence[str] = (), version: int | None, force: bool,
          if_missing: bool, command: str) -> ExportResult:
    """The result of an export about to run: skipped (`skipped_reason` set) under `--if-missing` when `name` (the
    model clients call) has a version, else carrying the version to write for every model in `models` (default:
    `name` alone); VersionExistsError when that version is taken."""
    if if_missing and (skipped := skip_if_present(repository, name, command)):
        return skipped
    return ExportResult(version=resolve_version(repository, list(models) or [name], version, force))


def check(result: ExportResult, report: ParityReport, reporter: Reporter,
          gate: Callable[..., None] = enforce) -> None:
    """Record and show a parity report, then apply its gate (ParityError when it failed: nothing is written)."""
    result.reports.append(report)
    reporter.note(report.describe())
    gate(report)


def write(repository: Path, files: Sequence[ModelFiles], result: ExportResult, reporter: Reporter,
          *, force: bool) -> None:
    """The last step: write `result.version` of every model and record the paths written."""
    assert result.version is not None, "a skipped export writes nothing"
    with timed(reporter, result, f"write version {result.version} to {repository}"):
        result.paths = write_version(repository, files, result.version, force=force)


def validate_version_policy(text: str) -> None:
    """`--version-policy`: OptionError unless it is `latest:N`, `all` or `specific:V1,V2`."""
    try:
        parse_version_policy(text)
    except ConfigError as exc:
        raise OptionError(f"--version-policy: {exc}") from exc


def validate_target(target: str, precision: str, fmt: str) -> None:
    """`--target`, `--precision` and `--format` of an ONNX Runtime (or TensorRT) export, checked together."""
    if target not in ("cpu", "gpu"):
        raise OptionError(f"--target {target!r}: expected cpu or gpu")
    if precision == "fp16" and target != "gpu":
        raise OptionError(
            "--precision fp16 needs --target gpu: the CPU target runs ONNX Runtime on CPU, which has no fast "
            "fp16 kernels (use fp32, or int8 for speed); on GPU, TensorRT applies FP16"
        )
    if fmt == "tensorrt" and target != "gpu":
        raise OptionError("--format tensorrt needs --target gpu (the pip-installed Triton has only the python backend)")
