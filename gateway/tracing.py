"""Distributed tracing with OpenTelemetry's SDK: off unless an OTLP endpoint is configured.

The standard variables configure it (fields of each process's settings class, `TracingSettings`):
`OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), `OTEL_TRACES_EXPORTER` (`otlp` | `none`),
`OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`), `OTEL_SERVICE_NAME`,
`OTEL_SDK_DISABLED`, `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_SCHEDULE_DELAY`.

`start_tracing` installs the SDK's tracer provider for the process: the configured sampler, except that a client
span with no parent (a Redis poll of the worker, a health check) is never a trace of its own; a batch span
processor with a bounded queue (when the collector is slow or down, spans are dropped, never waited for: export
runs on the processor's thread); OTLP over HTTP/protobuf; and Redis's instrumentation (a span per command, under
the request's span). Where the rest comes from:

- server spans: FastAPI's native OpenTelemetry (`fastapi_telemetry`), which reads `traceparent`/`tracestate`;
- cloud upstreams and webhooks: aiohttp's instrumentation (`client_trace_configs`), which sends `traceparent`;
- Triton: `client_span` and `sampled_headers`. Triton traces every request that carries a trace context
  whatever its own rate, so the context goes to Triton only from a sampled span;
- stages (cache, single-flight, a job's batches): `span`, a no-op context when tracing is off.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.aiohttp_client import create_trace_config
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    import aiohttp
    from fastapi.telemetry import TelemetryConfig

log = logging.getLogger("gateway.tracing")

SamplerName = Literal["always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
                      "parentbased_traceidratio"]
TRACER_NAME = "tritonstack"
_NO_SPAN: AbstractContextManager[None] = nullcontext()


class TracingSettings(BaseModel):
    """The standard OpenTelemetry variables, unprefixed, as fields of a process's settings class (a mixin)."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    otel_exporter_otlp_endpoint: str | None = Field(None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT"))
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    otel_traces_exporter: Literal["otlp", "none"] = Field("otlp", validation_alias=AliasChoices("OTEL_TRACES_EXPORTER"))
    otel_traces_sampler: SamplerName = Field("parentbased_always_on",
                                             validation_alias=AliasChoices("OTEL_TRACES_SAMPLER"))
    otel_traces_sampler_arg: float = Field(1.0, ge=0.0, le=1.0,
                                           validation_alias=AliasChoices("OTEL_TRACES_SAMPLER_ARG"))
    otel_service_name: str | None = Field(None, validation_alias=AliasChoices("OTEL_SERVICE_NAME"))
    otel_sdk_disabled: bool = Field(False, validation_alias=AliasChoices("OTEL_SDK_DISABLED"))
    otel_bsp_max_queue_size: int = Field(2048, ge=1, validation_alias=AliasChoices("OTEL_BSP_MAX_QUEUE_SIZE"))
    otel_bsp_schedule_delay: int = Field(5000, ge=1, validation_alias=AliasChoices("OTEL_BSP_SCHEDULE_DELAY"))

    @property
    def traces_endpoint(self) -> str | None:
        """Where spans go (`<endpoint>/v1/traces`), or None: tracing off."""
        if self.otel_sdk_disabled or self.otel_traces_exporter == "none":
            return None
        if self.otel_exporter_otlp_traces_endpoint:
            return self.otel_exporter_otlp_traces_endpoint
        if self.otel_exporter_otlp_endpoint:
            return self.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
        return None


class TracingEnv(BaseSettings, TracingSettings):
    """The OpenTelemetry variables alone, for a launcher with no settings class of its own (Triton's)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, validate_by_name=True, validate_by_alias=True)


class _Process:
    """The process's tracer provider once `start_tracing` installed one (OpenTelemetry's providers are global)."""

    provider: TracerProvider | None = None


_PROCESS = _Process()
_tracer = trace.get_tracer(TRACER_NAME)  # a proxy: resolves to the provider `start_tracing` installs


class NoOrphanClients(sampling.Sampler):
    """The configured sampler, except that a client span without a parent (a poll, a health check) is dropped."""

    def __init__(self, delegate: sampling.Sampler) -> None:
        self.delegate = delegate

    def should_sample(self, parent_context: otel_context.Context | None, trace_id: int, name: str,
                      kind: SpanKind | None = None, attributes: Any = None, links: Sequence[Any] | None = None,
                      trace_state: Any = None) -> sampling.SamplingResult:
        """Drop orphan client spans; ask the delegate about everything else."""
        if kind is SpanKind.CLIENT and not trace.get_current_span(parent_context).get_span_context().is_valid:
            return sampling.SamplingResult(sampling.Decision.DROP)
        return self.delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        """The SDK's description, naming the delegate."""
        return f"NoOrphanClients{{{self.delegate.get_description()}}}"


def sampler(settings: TracingSettings) -> sampling.Sampler:
    """The sampler `OTEL_TRACES_SAMPLER`/`_ARG` name, wrapped in `NoOrphanClients`."""
    ratio = settings.otel_traces_sampler_arg
    configured: dict[str, sampling.Sampler] = {
        "always_on": sampling.ALWAYS_ON, "always_off": sampling.ALWAYS_OFF,
        "traceidratio": sampling.TraceIdRatioBased(ratio),
        "parentbased_always_on": sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": sampling.ParentBased(sampling.TraceIdRatioBased(ratio)),
    }
    return NoOrphanClients(configured[settings.otel_traces_sampler])


def start_tracing(settings: TracingSettings, service_name: str) -> TracerProvider | None:
    """Install the SDK for this process when an endpoint is configured (else None: tracing off, nothing
    installed). Once per process: later calls return the provider already installed."""
    endpoint = settings.traces_endpoint
    if endpoint is None:
        return None
    if _PROCESS.provider is not None:
        return _PROCESS.provider
    provider = TracerProvider(sampler=sampler(settings),
                              resource=Resource.create({SERVICE_NAME: settings.otel_service_name or service_name}))
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=endpoint), max_queue_size=settings.otel_bsp_max_queue_size,
        schedule_delay_millis=settings.otel_bsp_schedule_delay,
        max_export_batch_size=min(512, settings.otel_bsp_max_queue_size)))
    trace.set_tracer_provider(provider)
    RedisInstrumentor().instrument(tracer_provider=provider)
    _PROCESS.provider = provider
    log.info("tracing on: OTLP to %s, sampler %s", endpoint, provider.sampler.get_description())
    return provider


def flush(timeout_ms: int = 2000) -> None:
    """Export the spans still queued (at shutdown); the SDK shuts the provider down at exit."""
    if _PROCESS.provider is not None:
        _PROCESS.provider.force_flush(timeout_ms)


def fastapi_telemetry() -> TelemetryConfig:
    """FastAPI's native OpenTelemetry: server spans (W3C context in) when tracing is on; off otherwise."""
    if _PROCESS.provider is None:
        return {"tracing": False, "metrics": False, "logs": False}
    return {"tracing": True, "metrics": False, "logs": False, "operation_spans": False,
            "tracer_provider": _PROCESS.provider}


def client_trace_configs() -> list[aiohttp.TraceConfig]:
    """For an aiohttp session to a cloud upstream or webhook: a client span per request, `traceparent` sent."""
    if _PROCESS.provider is None:
        return []
    return [create_trace_config(tracer_provider=_PROCESS.provider)]


def span(name: str, attributes: Mapping[str, Any] | None = None, *, parent: Mapping[str, str] | None = None,
         kind: SpanKind = SpanKind.INTERNAL) -> AbstractContextManager[Span | None]:
    """A stage span under the current one, or under the context a `carrier` holds (`parent`: a queued job's);
    never prompt text or keys in `attributes`. No-op when off."""
    if _PROCESS.provider is None:
        return _NO_SPAN
    return _current(name, kind, attributes, propagate.extract(dict(parent)) if parent else None)


@contextmanager
def _current(name: str, kind: SpanKind, attributes: Mapping[str, Any] | None,
             parent: otel_context.Context | None = None) -> Iterator[Span]:
    """A current span; an exception marks it failed with its type only (messages may quote the input)."""
    with _tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes,
                                       record_exception=False, set_status_on_exception=False) as current:
        try:
            yield current
        except BaseException as exc:
            failed(current, exc)
            raise


def open_client_span(name: str, attributes: Mapping[str, Any] | None = None) -> Span | None:
    """A client span that is not made current, for a call that outlives one `with` block (a stream read by an
    async generator); the caller ends it. None when off."""
    if _PROCESS.provider is None:
        return None
    return _tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)


def annotate(attributes: Mapping[str, Any]) -> None:
    """Add attributes to the current span (the request's server span in a route) when it records."""
    if _PROCESS.provider is None:
        return
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes(attributes)


def client_span(name: str, attributes: Mapping[str, Any] | None = None) -> AbstractContextManager[Span | None]:
    """A client span for a call to Triton (name e.g. `triton ModelInfer`); no-op when off."""
    return span(name, attributes, kind=SpanKind.CLIENT)


def sampled_headers(of: Span | None = None) -> dict[str, str] | None:
    """`traceparent` (and `tracestate`) of span `of` (default: the current one) when it is sampled, for a request
    to Triton; None otherwise."""
    if _PROCESS.provider is None:
        return None
    current = of if of is not None else trace.get_current_span()
    if not current.get_span_context().trace_flags.sampled:
        return None
    headers: dict[str, str] = {}
    propagate.inject(headers, context=trace.set_span_in_context(current))
    return headers


def carrier() -> dict[str, str]:
    """The current context as W3C headers (`traceparent`, `tracestate`), for a queued job that `span(parent=…)`
    continues; empty when off or not sampled."""
    return sampled_headers() or {}


def current_trace_id() -> str | None:
    """The current trace id (32 hex characters) for logs and audit lines; None when there is none."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def end(current: Span | None, exc: BaseException | None = None) -> None:
    """End a span from `open_client_span`, failed when `exc` is given."""
    if current is not None:
        if exc is not None:
            failed(current, exc)
        current.end()


def failed(current: Span | None, exc: BaseException) -> None:
    """Mark a stage span failed (error type only: messages may quote input)."""
    if current is not None and current.is_recording():
        current.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        current.set_attribute("error.type", type(exc).__name__)
