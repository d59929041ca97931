"""The rollouts file: public model name → Triton versions with weights, validated with clear errors.

Layout (YAML; JSON is valid YAML too)::

    models:
      minilm:
        stable: "1"                # the version a rollback returns to (default: the lowest version listed)
        versions: {"1": 90, "2": 10}   # weights, any non-negative numbers; at least one > 0

A model that is not listed goes to its oldest ready version (`gateway.rollout.service.default_choice`). The file
is written by `tritonstack model promote|rollback|load` (atomically: temp file + rename) and read by the gateway,
which reloads it when it changes (see `gateway.rollout.service`). No FastAPI here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.routing.config import describe_validation_error, read_yaml_mapping

_MODEL = r"^[A-Za-z0-9_.\-]{1,128}$"
_VERSION = r"^[1-9][0-9]{0,18}$"


class RolloutConfigError(ValueError):
    """The rollouts file is unreadable or invalid; the message says where and why."""


def version_key(version: str) -> int:
    """Numeric order of Triton version names ("10" after "9")."""
    return int(version)


class ModelRollout(BaseModel):
    """One public model's versions and weights, and the stable version a rollback returns to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    versions: dict[Annotated[str, Field(pattern=_VERSION)], Annotated[float, Field(ge=0)]] = Field(min_length=1)
    stable: str | None = None

    @field_validator("versions", mode="before")
    @classmethod
    def _string_keys(cls, value: Any) -> Any:
        """YAML reads `1: 90` with an integer key; versions are names (strings)."""
        if isinstance(value, Mapping):
            return {str(k): v for k, v in value.items()}
        return value

    @field_validator("stable", mode="before")
    @classmethod
    def _string_stable(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _consistent(self) -> ModelRollout:
        if sum(self.versions.values()) <= 0:
            raise ValueError("at least one version needs a weight above 0")
        if self.stable is not None and self.stable not in self.versions:
            raise ValueError(f"stable version {self.stable} is not one of the listed versions "
                             f"({', '.join(self.ordered)})")
        return self

    @property
    def ordered(self) -> list[str]:
        """Versions in numeric order (the order their weight ranges are laid out in)."""
        return sorted(self.versions, key=version_key)

    @property
    def stable_version(self) -> str:
        """`stable`, or the lowest listed version."""
        return self.stable if self.stable is not None else self.ordered[0]

    @property
    def canaries(self) -> list[str]:
        """Versions other than the stable one that receive traffic."""
        return [v for v in self.ordered if v != self.stable_version and self.versions[v] > 0]

    def shares(self) -> dict[str, float]:
        """Each version's share of traffic in percent."""
        total = sum(self.versions.values())
        return {v: round(100.0 * self.versions[v] / total, 4) for v in self.ordered}


class RolloutsConfig(BaseModel):
    """The whole rollouts file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: dict[Annotated[str, Field(pattern=_MODEL)], ModelRollout] = Field(default_factory=dict)



def parse_rollouts(data: Mapping[str, Any] | None, *, source: str = "rollouts config") -> RolloutsConfig:
    """Validate an already-parsed rollouts document."""
    try:
        return RolloutsConfig.model_validate(dict(data or {}))
    except ValidationError as exc:
        raise RolloutConfigError(f"{source} is invalid:\n{describe_validation_error(exc)}") from None


def load_rollouts(path: Path, *, missing_ok: bool = True) -> RolloutsConfig:
    """Read and validate the rollouts file; a missing file is an empty config when `missing_ok`."""
    try:
        raw = read_yaml_mapping(path, "rollouts file", RolloutConfigError, "'models'")
    except FileNotFoundError:
        if missing_ok:
            return RolloutsConfig()
        raise RolloutConfigError(f"rollouts file {path} does not exist") from None
    return parse_rollouts(raw, source=f"rollouts file {path}")


def render_rollouts(config: RolloutsConfig) -> str:
    """The YAML text of `config` (versions in numeric order, weights as plain numbers)."""
    models: dict[str, Any] = {}
    for name, rollout in sorted(config.models.items()):
        weights = {v: _number(rollout.versions[v]) for v in rollout.ordered}
        models[name] = {"stable": rollout.stable_version, "versions": weights}
    header = "# model version rollouts: written by `tritonstack model promote|rollback|load` (docs/deploy.md)\n"
    return header + yaml.safe_dump({"models": models}, sort_keys=False)


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def write_rollouts(path: Path, config: RolloutsConfig) -> None:
    """Replace the rollouts file atomically (readers see the old or the new file, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(render_rollouts(config))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
