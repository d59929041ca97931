"""Gateway settings: one pydantic-settings class, environment prefix `TRITONSTACK_GATEWAY_`.

Nested values (API keys) are given as JSON, e.g.
`TRITONSTACK_GATEWAY_API_KEYS='[{"name": "dev", "sha256": "<hex>", "scopes": ["admin"]}]'`.
Only sha256 hex digests of keys are ever configured; `hash_api_key` computes one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.jobqueue.egress import ALLOW_PRIVATE_ENV_NAMES
from gateway.tracing import TracingSettings

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?$")


def hash_api_key(key: str) -> str:
    """The sha256 hex digest under which an API key is configured."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_url_list(value: Any) -> Any:
    """A list of addresses from a JSON list (`'["a:8001", "b:8001"]'`) or a comma-separated string."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        return json.loads(text)
    return [part.strip() for part in text.split(",") if part.strip()]


# a list setting given as JSON or comma-separated in the environment
UrlList = Annotated[list[str], NoDecode]


def read_secret(env_var: str) -> str | None:
    """The secret named by `env_var`: that environment variable, else the file named by `<env_var>_FILE`
    (Docker/Kubernetes secret files), stripped. The one place secrets named in config files are read."""
    value = os.environ.get(env_var)
    if value:
        return value
    path = os.environ.get(f"{env_var}_FILE")
    if path:
        value = Path(path).read_text(encoding="utf-8").strip()
    return value if value else None


class KeyBudget(BaseModel):
    """A spending cap per key and period (UTC day or month): USD and/or tokens; None = no cap there."""

    usd: float | None = Field(default=None, gt=0)
    tokens: int | None = Field(default=None, ge=1)
    period: Literal["day", "month"] = "day"

    @model_validator(mode="after")
    def _some_cap(self) -> KeyBudget:
        if self.usd is None and self.tokens is None:
            raise ValueError("a budget needs 'usd' and/or 'tokens'")
        return self


class ApiKeyConfig(BaseModel):
    """One API key: a name (used for logs, metrics and rate-limit identity), its sha256, scopes and limits."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    sha256: str
    scopes: frozenset[str] = frozenset()
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    budget: KeyBudget | None = None

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        value = value.strip().lower()
        if not _HEX64.match(value):
            raise ValueError("sha256 must be a 64-character hex digest of the key, never the key itself")
        return value


class GatewaySettings(BaseSettings, TracingSettings):
    """Everything the gateway reads from its environment; constructed once and passed to `create_app`."""

    # validate_by_name: fields with an environment alias (validation_alias) still take their name as a keyword
    model_config = SettingsConfigDict(env_prefix="TRITONSTACK_GATEWAY_", extra="ignore", frozen=True,
                                      validate_by_name=True, validate_by_alias=True)

    # backends
    triton_grpc_url: str = "127.0.0.1:8001"
    triton_http_url: str = "127.0.0.1:8000"
    # several Triton servers (gateway.backends.pool): one gRPC and one HTTP address each, same order; empty = the
    # single URLs above. JSON list or comma-separated.
    triton_grpc_urls: UrlList = Field(default_factory=list)
    triton_http_urls: UrlList = Field(default_factory=list)
    triton_health_interval_s: float = Field(default=1.0, gt=0)
    triton_health_timeout_s: float = Field(default=1.0, gt=0)
    backend_timeout_s: float = Field(default=30.0, gt=0)
    model_info_ttl_s: float = Field(default=2.0, ge=0)
    passthrough_max_connections: int = Field(default=256, ge=1)
    # concurrent embedding calls share Triton requests, at most this many in flight per model version (0 = off)
    embed_coalesce_in_flight: int = Field(default=4, ge=0)

    # redis (shared state: cache, rate limits)
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_ms: int = Field(default=50, ge=1)
    redis_max_connections: int = Field(default=64, ge=1)

    # cache
    cache_enabled: bool = True
    cache_ttl_s: int = Field(default=86_400, ge=1)
    cache_l1_size: int = Field(default=10_000, ge=0)

    # rate limits (per key; keys may override; anonymous callers are limited per client IP)
    rate_limit_enabled: bool = True
    requests_per_minute: int = Field(default=600, ge=1)
    tokens_per_minute: int = Field(default=1_000_000, ge=1)
    rate_limit_fail_open: bool = True
    # a busy key leases requests for this long (gateway.ratelimit.lease: ≤ 1 % of its budget); 0 = every request
    # is checked in Redis
    rate_limit_lease_ms: int = Field(default=100, ge=0, le=1000)

    # auth
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    auth_disabled: bool = False

    # admission and request policy
    max_in_flight: int = Field(default=512, ge=1)
    overload_retry_after_s: int = Field(default=1, ge=1, le=60)
    max_body_bytes: int = Field(default=8 << 20, ge=1024)
    max_input_items: int = Field(default=2048, ge=1)
    max_input_chars: int = Field(default=32_768, ge=1)

    # chat completions: routes YAML (public model -> deployments); None = no chat routes
    routes_file: Path | None = None

    # model version rollouts: public model -> Triton versions with weights (gateway.rollout); None = Triton's
    # version policy for every model. Re-read when it changes (checked at most every rollouts_check_interval_s)
    rollouts_file: Path | None = None
    rollouts_check_interval_s: float = Field(default=1.0, gt=0)

    # background jobs (/v1/jobs; the worker's settings are jobs.config.WorkerConfig: same queue name)
    jobs_enabled: bool = True
    jobs_queue_name: str = "tritonstack:jobs:queue"
    jobs_redis_timeout_ms: int = Field(default=5000, ge=1)
    jobs_result_ttl_s: int = Field(default=86_400, ge=1)
    jobs_idempotency_ttl_s: int = Field(default=86_400, ge=1)
    jobs_max_items: int = Field(default=100_000, ge=1)
    jobs_max_document_chars: int = Field(default=1_000_000, ge=1)
    jobs_max_active_per_key: int = Field(default=10, ge=1)
    jobs_max_pending_items_per_key: int = Field(default=500_000, ge=1)
    jobs_chunk_tokens: int = Field(default=254, ge=8)
    jobs_chunk_overlap: int = Field(default=32, ge=0)
    jobs_metrics_interval_s: float = Field(default=5.0, gt=0)
    # webhooks to loopback/private addresses (off: SSRF guard, gateway.jobqueue.egress); one setting for the
    # gateway and the worker: TRITONSTACK_WEBHOOK_ALLOW_PRIVATE (the older
    # TRITONSTACK_GATEWAY_JOBS_WEBHOOK_ALLOW_PRIVATE still works)
    jobs_webhook_allow_private: bool = Field(default=False, validation_alias=AliasChoices(*ALLOW_PRIVATE_ENV_NAMES))

    # browsers: CORS is off unless origins are listed explicitly (e.g. '["https://app.example.com"]'); no "*"
    cors_origins: list[str] = Field(default_factory=list)

    # operations
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    expose_metrics: bool = True

    @field_validator("triton_grpc_urls", "triton_http_urls", mode="before")
    @classmethod
    def _url_list(cls, value: Any) -> Any:
        return parse_url_list(value)

    @model_validator(mode="after")
    def _triton_endpoints(self) -> GatewaySettings:
        grpc, http = self.grpc_urls, self.http_urls
        if len(http) != len(grpc):
            raise ValueError("triton_http_urls needs one HTTP address per gRPC address in triton_grpc_urls "
                             f"(same order): got {len(http)} for {len(grpc)}")
        if len(set(grpc)) != len(grpc):
            raise ValueError("triton_grpc_urls lists an address twice")
        return self

    @property
    def grpc_urls(self) -> list[str]:
        """Every Triton gRPC address: `triton_grpc_urls`, else `[triton_grpc_url]`."""
        return list(self.triton_grpc_urls) or [self.triton_grpc_url]

    @property
    def http_urls(self) -> list[str]:
        """The HTTP address of each of `grpc_urls`, same order: `triton_http_urls`, else `[triton_http_url]`
        (only with a single gRPC address)."""
        if self.triton_http_urls:
            return list(self.triton_http_urls)
        return [self.triton_http_url] if len(self.grpc_urls) == 1 else []

    @field_validator("cors_origins")
    @classmethod
    def _explicit_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not _ORIGIN.match(origin):
                raise ValueError(f"CORS origins must be explicit scheme://host[:port] values, got {origin!r}")
        return value

    @model_validator(mode="after")
    def _auth_is_explicit(self) -> GatewaySettings:
        if not self.api_keys and not self.auth_disabled:
            raise ValueError(
                "no API keys configured: set TRITONSTACK_GATEWAY_API_KEYS (sha256 hashes) "
                "or TRITONSTACK_GATEWAY_AUTH_DISABLED=true for local use"
            )
        names = [k.name for k in self.api_keys]
        if len(names) != len(set(names)):
            raise ValueError("API key names must be unique")
        return self

    def api_key(self, name: str) -> ApiKeyConfig | None:
        """The configured key called `name`, if any."""
        return next((k for k in self.api_keys if k.name == name), None)
