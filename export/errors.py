"""Typed errors of the export pipeline. Every message says what is missing or wrong and how to fix it.

The CLI turns any `ExportError` into a one-paragraph message and a non-zero exit code.
"""

from __future__ import annotations


class ExportError(Exception):
    """Base class: an export could not be done as asked; nothing was written to the repository."""


class OptionError(ExportError):
    """An invalid combination of options (e.g. `--target cpu --precision fp16`)."""


class ModelSourceError(ExportError):
    """The model to export (a package, a file, a `module:factory`) could not be loaded."""


class ParityError(ExportError):
    """The exported model's outputs differ from the reference by more than the gate allows."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class TensorRTUnavailableError(ExportError):
    """`--format tensorrt` needs the `tensorrt` Python module and a CUDA GPU; one of them is missing."""


class TensorRTBuildError(ExportError):
    """TensorRT could not parse the ONNX graph or build an engine from it."""


class VersionExistsError(ExportError):
    """The requested model version already exists and `--force` was not given."""
