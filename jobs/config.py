"""Worker settings: one pydantic-settings class, environment prefix `TRITONSTACK_WORKER_`.

The gateway's side of the contract (queue name, result TTL, per-key limits, chunking defaults) lives in
`GatewaySettings.jobs_*`; the queue name must be the same on both sides. Chat jobs reuse the gateway's routes
file and key budgets: the worker reads `TRITONSTACK_GATEWAY_*` too (see `gateway_settings`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from gateway.config import UrlList, parse_url_list
from gateway.jobqueue.egress import ALLOW_PRIVATE_ENV_NAMES, WebhookPolicy
from gateway.tracing import TracingSettings

if TYPE_CHECKING:
    from gateway.config import GatewaySettings

log = logging.getLogger("jobs.config")

DEFAULT_QUEUE = "tritonstack:jobs:queue"


class WorkerConfig(BaseSettings, TracingSettings):
    """Everything the arq worker reads from its environment; constructed once by `tritonstack worker`."""

    # validate_by_name: fields with an environment alias (validation_alias) still take their name as a keyword
    model_config = SettingsConfigDict(env_prefix="TRITONSTACK_WORKER_", extra="ignore", frozen=True,
                                      validate_by_name=True, validate_by_alias=True)

    # connections
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_s: float = Field(default=10.0, gt=0)
    triton_grpc_url: str = "127.0.0.1:8001"
    # several Triton servers (JSON list or comma-separated; empty = `triton_grpc_url`): the worker balances over
    # them like the gateway (gateway.backends.pool)
    triton_grpc_urls: UrlList = Field(default_factory=list)
    triton_health_interval_s: float = Field(default=1.0, gt=0)
    backend_timeout_s: float = Field(default=120.0, gt=0)
    # where `<model>/<version>/tokenizer.json` is found for token chunking (else: character windows)
    model_repository: Path | None = Path("model_repository")

    # arq
    queue_name: str = DEFAULT_QUEUE
    max_jobs: int = Field(default=4, ge=1, description="Jobs one worker runs at a time.")
    job_timeout_s: float = Field(default=3600.0, gt=0)
    max_tries: int = Field(default=5, ge=1, description="Runs of a job (crashes and transient failures).")
    keep_result_s: float = Field(default=60.0, ge=0, description="arq's own result record (ours is the job).")
    poll_delay_s: float = Field(default=0.05, gt=0, description="Queue polling interval (pickup latency).")
    retry_backoff_s: float = Field(default=1.0, gt=0, description="First retry delay after a transient failure.")

    # crash detection: a running job holds a lease it renews; an expired lease frees the job for another worker
    lease_s: float = Field(default=10.0, gt=0)
    reaper_interval_s: float = Field(default=2.0, gt=0)

    # embeddings
    batch_size: int | None = Field(default=None, ge=1, description="Chunks per Triton request (model's max).")
    batch_concurrency: int = Field(default=4, ge=1, description="Triton requests in flight per job.")
    cache_enabled: bool = True
    cache_ttl_s: int = Field(default=86_400, ge=1)
    cache_l1_size: int = Field(default=1024, ge=0)

    # chat
    chat_concurrency: int = Field(default=8, ge=1, description="Chat requests in flight per job.")

    # webhooks
    webhook_max_attempts: int = Field(default=6, ge=1)
    webhook_backoff_s: float = Field(default=1.0, gt=0, description="Delay before the 2nd attempt; doubles.")
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_allow_private: bool = Field(
        default=False, validation_alias=AliasChoices(*ALLOW_PRIVATE_ENV_NAMES),
        description="Allow webhooks to loopback/private addresses (off: SSRF guard, see "
        "gateway.jobqueue.egress). One setting for the gateway and the worker: "
        "TRITONSTACK_WEBHOOK_ALLOW_PRIVATE (the older "
        "TRITONSTACK_WORKER_WEBHOOK_ALLOW_PRIVATE still works).")

    # operations
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9500, ge=0, le=65535, description="Prometheus endpoint; 0 disables.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("triton_grpc_urls", mode="before")
    @classmethod
    def _url_list(cls, value: Any) -> Any:
        return parse_url_list(value)

    @property
    def grpc_urls(self) -> list[str]:
        """Every Triton gRPC address the worker uses."""
        return self.triton_grpc_urls or [self.triton_grpc_url]

    @property
    def webhook_policy(self) -> WebhookPolicy:
        """Where webhooks may go (the same policy the gateway applies at submission)."""
        return WebhookPolicy(self.webhook_allow_private)

    @property
    def lease_ms(self) -> int:
        """The lease in milliseconds."""
        return int(self.lease_s * 1000)


def gateway_settings() -> GatewaySettings | None:
    """The gateway's settings from `TRITONSTACK_GATEWAY_*` (routes, key budgets) for chat jobs, if valid."""
    from gateway.config import GatewaySettings

    try:
        return GatewaySettings()
    except (ValidationError, SettingsError) as exc:
        log.warning("chat jobs disabled: no valid TRITONSTACK_GATEWAY_* settings (%s)", str(exc).splitlines()[0])
        return None
