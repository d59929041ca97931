"""The routes file: public chat model names → ordered deployments, validated at start with clear errors.

Layout (see `deploy/routes.example.yaml`)::

    policy: {total_timeout_s: 30, max_attempts: 4, ...}        # defaults for every route
    deployments:
      local-llama: {kind: triton, model: llama3-8b, max_in_flight: 16}
      openai-mini: {kind: openai, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY,
                    model: gpt-4o-mini, timeout_s: 30, price: {input_per_1m: 0.15, output_per_1m: 0.60}}
    routes:
      chat: {deployments: [local-llama, [openai-mini, azure-mini]], redact_pii: auto, policy: {...}}

A route's `deployments` are tried in order; a nested list is a tier of equals, ordered per request by
weighted random choice (`weight`). Secrets never appear in the file: a cloud deployment names the environment
variable holding its API key (`api_key_env`), resolved once here through `gateway.config.read_secret`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from gateway.config import read_secret

_NAME = r"^[A-Za-z0-9_.:-]{1,128}$"


class RoutesConfigError(ValueError):
    """The routes file is missing, unparsable or invalid; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    """USD per million input (prompt) and output (completion) tokens."""

    input_per_1m: float = Field(default=0.0, ge=0)
    output_per_1m: float = Field(default=0.0, ge=0)

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The price of a call."""
        return (prompt_tokens * self.input_per_1m + completion_tokens * self.output_per_1m) / 1_000_000


class BreakerPolicy(_Strict):
    """Closed → open after `failure_threshold` consecutive failures, or an error rate above `error_rate` over
    `window_s` (with at least `min_requests` calls); open → one half-open probe after `cooldown_s`."""

    failure_threshold: int = Field(default=5, ge=1)
    error_rate: float = Field(default=0.5, gt=0, le=1)
    window_s: float = Field(default=30.0, gt=0)
    min_requests: int = Field(default=20, ge=1)
    cooldown_s: float = Field(default=30.0, gt=0)


class Policy(_Strict):
    """Fallback, retry, cache and budget policy of a route (the file's `policy`, overridden per route)."""

    total_timeout_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=4, ge=1)
    retry_rounds: int = Field(default=1, ge=0)
    backoff_base_s: float = Field(default=0.1, ge=0)
    backoff_max_s: float = Field(default=2.0, ge=0)
    max_retry_after_s: float = Field(default=10.0, ge=0)
    default_max_tokens: int = Field(default=4096, ge=1)
    bytes_per_token: float = Field(default=1.0, gt=0)
    cache_ttl_s: int = Field(default=3600, ge=0)
    breaker: BreakerPolicy = BreakerPolicy()


class TritonDeployment(_Strict):
    """A chat model served by the local Triton (implemented by the local-LLM work; see backends.triton_chat)."""

    kind: Literal["triton"]
    model: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,128}$")
    timeout_s: float = Field(default=60.0, gt=0)
    max_in_flight: int | None = Field(default=None, ge=1)
    price: Price = Price()
    weight: float = Field(default=1.0, gt=0)

    @property
    def local(self) -> bool:
        """Local deployments keep prompts on the local host (no PII redaction by default)."""
        return True


class OpenAIDeployment(_Strict):
    """An OpenAI-compatible endpoint (`POST {base_url}/chat/completions`)."""

    kind: Literal["openai"]
    base_url: str = Field(pattern=r"^https?://")
    model: str = Field(min_length=1)
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    api_key: SecretStr | None = Field(default=None, exclude=True)  # resolved from api_key_env, never in the file
    timeout_s: float = Field(default=30.0, gt=0)
    max_in_flight: int | None = Field(default=None, ge=1)
    price: Price = Price()
    weight: float = Field(default=1.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secret(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError("api_key must not be written in the routes file: name the environment variable "
                             "that holds it in api_key_env")
        return data

    @field_validator("base_url")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def local(self) -> bool:
        """Cloud deployments get PII redaction by default."""
        return False


Deployment = Annotated[TritonDeployment | OpenAIDeployment, Field(discriminator="kind")]
Tier = list[str]


class Route(_Strict):
    """A public model name's deployments in order of preference (tiers), PII policy and effective policy."""

    deployments: list[str | Tier] = Field(min_length=1)
    redact_pii: Literal["auto", "on", "off"] = "auto"
    policy: Policy = Policy()

    @field_validator("redact_pii", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        """YAML reads a bare `on`/`off` as a boolean."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @property
    def tiers(self) -> list[list[str]]:
        """Deployments as tiers of equals, in order."""
        return [[entry] if isinstance(entry, str) else list(entry) for entry in self.deployments]

    @property
    def names(self) -> list[str]:
        """Every deployment name of the route, in order."""
        return [name for tier in self.tiers for name in tier]


class AuditConfig(_Strict):
    """Audit log options; prompts are never logged unless `include_prompts` (then as sent upstream)."""

    include_prompts: bool = False


class RoutesConfig(_Strict):
    """The whole routes file, cross-checked: every route names defined deployments, each once."""

    deployments: dict[Annotated[str, Field(pattern=_NAME)], Deployment] = Field(default_factory=dict)
    routes: dict[Annotated[str, Field(pattern=_NAME)], Route] = Field(default_factory=dict)
    audit: AuditConfig = AuditConfig()

    @model_validator(mode="before")
    @classmethod
    def _merge_policies(cls, data: Any) -> Any:
        """Each route's `policy` overrides the file's `policy` field by field."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        base = data.pop("policy", None) or {}
        routes = data.get("routes")
        if isinstance(base, dict) and isinstance(routes, dict):
            data["routes"] = {name: _with_policy(route, base) for name, route in routes.items()}
        return data

    @model_validator(mode="after")
    def _references(self) -> RoutesConfig:
        for name, route in self.routes.items():
            names = route.names
            if any(not tier for tier in route.tiers):
                raise ValueError(f"route '{name}': an empty tier")
            unknown = [d for d in names if d not in self.deployments]
            if unknown:
                raise ValueError(f"route '{name}': unknown deployment(s) {', '.join(unknown)} "
                                 f"(defined: {', '.join(self.deployments) or 'none'})")
            if len(set(names)) != len(names):
                raise ValueError(f"route '{name}': a deployment is listed twice")
        return self


def _with_policy(route: Any, base: dict[str, Any]) -> Any:
    if not isinstance(route, dict):
        return route
    override = route.get("policy") or {}
    if not isinstance(override, dict):
        return route
    merged = {**base, **override}
    if isinstance(base.get("breaker"), dict) and isinstance(override.get("breaker"), dict):
        merged["breaker"] = {**base["breaker"], **override["breaker"]}
    return {**route, "policy": merged}


def describe_validation_error(error: ValidationError) -> str:
    """A pydantic error as indented `field.path: message` lines, for config-file errors."""
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item.get("loc", ())) or "(top level)"
        lines.append(f"  {where}: {str(item.get('msg', 'invalid')).removeprefix('Value error, ')}")
    return "\n".join(lines)


def resolve_secrets(config: RoutesConfig, secrets: Callable[[str], str | None] = read_secret) -> RoutesConfig:
    """Fill each cloud deployment's `api_key` from its `api_key_env`; RoutesConfigError naming unset ones."""
    missing: list[str] = []
    resolved: dict[str, Any] = {}
    for name, dep in config.deployments.items():
        if isinstance(dep, OpenAIDeployment) and dep.api_key_env:
            value = secrets(dep.api_key_env)
            if value is None:
                missing.append(f"  deployments.{name}.api_key_env: environment variable {dep.api_key_env} is unset")
                continue
            dep = dep.model_copy(update={"api_key": SecretStr(value)})
        resolved[name] = dep
    if missing:
        raise RoutesConfigError("routes config: missing API keys\n" + "\n".join(missing))
    return config.model_copy(update={"deployments": resolved})


def parse_routes(data: Mapping[str, Any] | None, *, source: str = "routes config",
                 secrets: Callable[[str], str | None] = read_secret) -> RoutesConfig:
    """Validate an already-parsed routes document and resolve its secrets."""
    try:
        config = RoutesConfig.model_validate(dict(data or {}))
    except ValidationError as exc:
        raise RoutesConfigError(f"{source} is invalid:\n{describe_validation_error(exc)}") from None
    return resolve_secrets(config, secrets)


def read_yaml_mapping(path: Path, what: str, error: type[ValueError], keys: str) -> dict[str, Any] | None:
    """The YAML mapping in config file `path` (None when empty); `error` naming the file as `what` when it cannot
    be read (FileNotFoundError passes through), is not YAML, or is not a mapping (with `keys`)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not valid YAML: {exc}") from None
    if raw is not None and not isinstance(raw, dict):
        raise error(f"{what} {path} must be a mapping with {keys}")
    return raw


def load_routes(path: Path, *, secrets: Callable[[str], str | None] = read_secret) -> RoutesConfig:
    """Read, validate and resolve the routes YAML at `path` (RoutesConfigError with the reason otherwise)."""
    try:
        raw = read_yaml_mapping(path, "routes file", RoutesConfigError, "'deployments' and 'routes'")
    except FileNotFoundError as exc:
        raise RoutesConfigError(f"routes file {path} cannot be read: {exc.strerror or exc}") from None
    return parse_routes(raw, source=f"routes file {path}", secrets=secrets)
