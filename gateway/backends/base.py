"""The backend interface the services use; routes and services never see a transport library.

Implementations raise the gateway's typed errors (`gateway.errors`): unknown model → NotFoundError, bad input →
InvalidRequestError, unreachable or queue full → BackendUnavailableError, deadline → BackendTimeoutError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


def valid_model_name(name: str) -> bool:
    """True for names a model repository can hold: `[A-Za-z0-9_.-]{1,128}`, not `.` or `..` (no traversal)."""
    return bool(_MODEL_NAME.match(name)) and name not in {".", ".."}


@dataclass(frozen=True)
class EmbedResult:
    """Embeddings for a batch of texts, in input order."""

    vectors: np.ndarray  # float32 [n, d]
    token_counts: np.ndarray  # int32 [n]
    model_version: str  # the version Triton actually served


@dataclass(frozen=True)
class RowsResult:
    """The requested outputs of a batch of rows, in input order: each array is [n, ...] (n rows)."""

    outputs: dict[str, np.ndarray]
    model_version: str  # the version Triton actually served


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a model: name, KServe datatype and shape (without the batch dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """What the gateway needs to know about a served model; cached briefly by the backend."""

    name: str
    version: str  # the newest ready version
    versions: tuple[str, ...]
    max_batch_size: int
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()
    platform: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # the model config's `parameters` (string values)

    def output(self, name: str) -> TensorInfo | None:
        """The output called `name`, if the model has one."""
        return next((t for t in self.outputs if t.name == name), None)

    @property
    def embedding_dim(self) -> int | None:
        """The size of the `embedding` output, when the model is an embedding model with a fixed size."""
        out = self.output("embedding")
        if out is None or not out.shape or out.shape[-1] < 1:
            return None
        return out.shape[-1]


@dataclass(frozen=True)
class ModelEntry:
    """A model in the repository index that is ready to serve."""

    name: str
    version: str


@runtime_checkable
class Backend(Protocol):
    """An inference server the gateway fronts."""

    async def embed(self, model: str, texts: Sequence[str], *, version: str = "") -> EmbedResult:
        """Embed `texts` with `model` (a pinned `version`, or "" for the server's choice); splits into batches
        the model accepts."""
        ...

    async def infer_rows(self, model: str, inputs: Mapping[str, Sequence[str]], outputs: Sequence[str], *,
                         version: str = "") -> RowsResult:
        """One batch row per item: each input a list of strings (all of one length, sent as BYTES [n, 1]); the
        named outputs, split into batches the model accepts (rerank pairs, classify texts)."""
        ...

    async def model_info(self, model: str) -> ModelInfo:
        """Metadata of a ready model (NotFoundError when it is unknown or not ready)."""
        ...

    async def list_ready_models(self) -> list[ModelEntry]:
        """Every model that is ready now."""
        ...

    async def ready(self) -> bool:
        """True when the server answers and is ready."""
        ...

    def invalidate(self, model: str) -> None:
        """Forget cached metadata of `model` (a new version was observed)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
