"""Distributed tracing end to end: a request's W3C context through the gateway, its cache and Redis, to Triton
(whose own spans join the trace), through the job queue to the worker, and to a cloud upstream on fallback.

Everything is real: Triton in its OpenTelemetry trace mode, the gateway and the worker as processes with the
standard `OTEL_*` variables, and a real OTLP/HTTP receiver (`tests/otlp_receiver.py`). The stack samples no
root span (`parentbased_traceidratio`, ratio 0), so exactly the requests sent with a sampled `traceparent` are
traced, which keeps every assertion deterministic.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from gateway.tracing import NoOrphanClients, TracingSettings, sampler
from stack.gateway import GatewayProcess, start_gateway
from stack.process import free_port
from stack.redis import RedisServer
from stack.triton import TritonOptions, TritonServer, TritonTracing, start_triton
from tests.fake_llm import FakeLLMServer, Fault
from tests.fixtures.jobs import STACK_TEST_ENV, Worker, new_queue, start_worker
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

MODEL = "minilm"
GATEWAY, WORKER, TRITON = "tritonstack-gateway", "tritonstack-worker", "triton"
UPSTREAM_KEY_ENV = "TRACED_UPSTREAM_KEY"


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    """(header, trace id, parent span id) of a fresh client context."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def otel_env(receiver: OtlpReceiver) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}


def routes(upstream: FakeLLMServer) -> dict:
    def cloud(model: str) -> dict:
        return {"kind": "openai", "base_url": upstream.url, "api_key_env": UPSTREAM_KEY_ENV, "model": model,
                "timeout_s": 5.0}

    return {"policy": {"total_timeout_s": 10.0, "backoff_base_s": 0.01},
            "deployments": {"primary": cloud("up-primary"), "secondary": cloud("up-secondary")},
            "routes": {"chat": {"deployments": ["primary", "secondary"]}}}


@dataclass
class Traced:
    receiver: OtlpReceiver
    triton: TritonServer
    gateway: GatewayProcess
    worker: Worker
    upstream: FakeLLMServer
    upstream_key: str
    log: Path

    def client(self, header: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.gateway.url}/v1", api_key="unused", max_retries=0, timeout=30,
                             default_headers={"traceparent": header})


@pytest.fixture(scope="module")
def traced(minilm_repository: Path, redis_server: RedisServer, fake_llm_server: FakeLLMServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    root = tmp_path_factory.mktemp("traced")
    receiver = OtlpReceiver().start()
    env = otel_env(receiver)
    queue, key = new_queue(), f"sk-upstream-{secrets.token_hex(8)}"
    routes_file = root / "routes.yaml"
    routes_file.write_text(yaml.safe_dump(routes(fake_llm_server)), encoding="utf-8")
    started: list = []
    try:
        triton = start_triton(TritonOptions.on_free_ports(
            minilm_repository, tracing=TritonTracing(f"{receiver.endpoint}/v1/traces", schedule_delay_ms=100)),
            root / "triton", log_path=root / "triton.log")
        started.append(triton)
        worker = start_worker(triton, redis_server, minilm_repository, queue, root,
                              stack_env={**STACK_TEST_ENV, **env})
        started.append(worker.process)
        settings = {"triton_grpc_url": triton.grpc_url, "triton_http_url": triton.http_url,
                    "redis_url": redis_server.url, "auth_disabled": True, "jobs_queue_name": queue,
                    "routes_file": routes_file, "requests_per_minute": 1_000_000,
                    "tokens_per_minute": 1_000_000_000}
        gateway = start_gateway(settings, port=free_port(), log_path=root / "gateway.log",
                                base_env={**_clean_environ(), **STACK_TEST_ENV, **env, UPSTREAM_KEY_ENV: key})
        started.append(gateway)
        yield Traced(receiver, triton, gateway, worker, fake_llm_server, key, root / "gateway.log")
    finally:
        for part in reversed(started):
            part.stop()
        receiver.stop()


def _clean_environ() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("TRITONSTACK_", "OTEL_"))}


def by_id(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.span_id: s for s in spans}


def ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    """`span`'s parent, grandparent, … within `spans` (the chain must not break before the root)."""
    index, chain = by_id(spans), []
    while span.parent_id in index:
        span = index[span.parent_id]
        chain.append(span)
    return chain


def named(spans: list[ReceivedSpan], service: str, name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.service == service and s.name == name]


def has(*wanted: tuple[str, str]):
    return lambda spans: all(named(spans, service, name) for service, name in wanted)


def triton_spans_under(client: ReceivedSpan, spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    """Triton's spans whose chain of parents reaches the gateway's (or worker's) client span."""
    return [s for s in spans if s.service == TRITON and client in ancestors(s, spans)]


def test_embeddings_trace_spans_gateway_cache_redis_and_triton(traced: Traced) -> None:
    header, trace_id, parent = traceparent()
    text = f"trace me {uuid.uuid4().hex}"  # a miss: the request goes to Triton
    traced.client(header).embeddings.create(model=MODEL, input=[text])

    spans = traced.receiver.wait(trace_id, lambda s: has((GATEWAY, "POST /v1/embeddings"),
                                                         (GATEWAY, "triton ModelInfer"))(s)
                                 and any(x.service == TRITON for x in s))
    (server,) = named(spans, GATEWAY, "POST /v1/embeddings")
    assert server.parent_id == parent and server.kind == ProtoSpan.SPAN_KIND_SERVER
    assert server.attributes["tritonstack.model"] == MODEL and server.attributes["tritonstack.cache"] == "miss"
    assert server.attributes["tritonstack.request_id"]
    (flight,) = named(spans, GATEWAY, "single_flight")
    assert server in ancestors(flight, spans) and flight.attributes["tritonstack.items"] == 1
    redis_spans = [s for s in spans if s.service == GATEWAY and s.attributes.get("db.system") == "redis"]
    assert redis_spans and all(server in ancestors(s, spans) for s in redis_spans)
    (client,) = named(spans, GATEWAY, "triton ModelInfer")
    # under the request's span: at low load the gateway starts a miss before the Redis lookup ends (speculation)
    assert server in ancestors(client, spans) and client.kind == ProtoSpan.SPAN_KIND_CLIENT
    assert client.attributes["tritonstack.model"] == MODEL and client.attributes["tritonstack.batch_size"] == 1
    spans = traced.receiver.wait(trace_id, lambda s: len(triton_spans_under(client, s)) >= 2)
    assert {s.name for s in triton_spans_under(client, spans)} >= {"InferRequest", "minilm"}
    assert all(text not in json.dumps(s.attributes) for s in spans)  # never the input text


def test_unsampled_context_exports_nothing_and_triton_is_not_asked(traced: Traced) -> None:
    unsampled, quiet_id, _ = traceparent(sampled=False)
    traced.client(unsampled).embeddings.create(model=MODEL, input=[f"quiet {uuid.uuid4().hex}"])
    header, trace_id, _ = traceparent()  # a barrier: its spans (Triton's too) arrive after the first request's
    traced.client(header).embeddings.create(model=MODEL, input=[f"loud {uuid.uuid4().hex}"])
    traced.receiver.wait(trace_id, lambda s: any(x.service == TRITON for x in s)
                         and has((GATEWAY, "POST /v1/embeddings"))(s))
    assert traced.receiver.trace(quiet_id) == []


def test_a_job_continues_the_submitting_request_trace_in_the_worker(traced: Traced) -> None:
    header, trace_id, _ = traceparent()
    body = {"type": "embeddings", "model": MODEL, "input": [f"job {i} {uuid.uuid4().hex}" for i in range(3)]}
    response = httpx.post(f"{traced.gateway.url}/v1/jobs", json=body, headers={"traceparent": header}, timeout=30)
    assert response.status_code == 202, response.text

    spans = traced.receiver.wait(trace_id, lambda s: has((GATEWAY, "job.submit"), (WORKER, "job embeddings"),
                                                         (WORKER, "triton ModelInfer"))(s), timeout=60)
    (server,) = named(spans, GATEWAY, "POST /v1/jobs")
    (submit,) = named(spans, GATEWAY, "job.submit")
    assert server in ancestors(submit, spans)
    (run,) = named(spans, WORKER, "job embeddings")
    assert run.kind == ProtoSpan.SPAN_KIND_CONSUMER and server in ancestors(run, spans)
    assert run.attributes["tritonstack.job.id"] == response.json()["id"]
    units = named(spans, WORKER, "job.unit")
    assert units and all(run in ancestors(u, spans) for u in units)
    client = named(spans, WORKER, "triton ModelInfer")[0]
    assert any(u in ancestors(client, spans) for u in units)
    traced.receiver.wait(trace_id, lambda s: bool(triton_spans_under(client, s)))


def test_chat_fallback_sends_the_context_to_each_cloud_upstream(traced: Traced) -> None:
    traced.upstream.state.reset(api_key=traced.upstream_key)
    traced.upstream.state.fault("up-primary", Fault(status=500), times=1)
    header, trace_id, _ = traceparent()
    reply = traced.client(header).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "trace the fallback"}])
    assert reply.choices[0].message.content

    spans = traced.receiver.wait(trace_id, lambda s: len(named(s, GATEWAY, "chat.attempt")) == 2
                                 and len([x for x in s if x.name.startswith("POST") and x.kind == 3]) == 2)
    attempts = sorted(named(spans, GATEWAY, "chat.attempt"), key=lambda s: s.attributes["tritonstack.attempt"])
    assert [a.attributes["tritonstack.deployment"] for a in attempts] == ["primary", "secondary"]
    assert attempts[0].error and attempts[0].attributes["tritonstack.outcome"] == "server_error"
    clients = [s for s in spans if s.kind == ProtoSpan.SPAN_KIND_CLIENT and s.name.startswith("POST")]
    sent = [r.headers.get("traceparent", "") for r in traced.upstream.state.requests]
    assert len(sent) == 2 and all(value.split("-")[1] == trace_id for value in sent)
    assert {value.split("-")[2] for value in sent} == {c.span_id for c in clients}  # each call's own span
    audit = [json.loads(line[line.index("{"):]) for line in traced.log.read_text().splitlines()
             if '"trace_id"' in line and trace_id in line]
    assert audit and audit[0]["deployment"] == "secondary"


def test_kserve_passthrough_spans_reach_triton(traced: Traced) -> None:
    header, trace_id, _ = traceparent()
    body = {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [f"v2 {uuid.uuid4().hex}"]}]}
    response = httpx.post(f"{traced.gateway.url}/v2/models/{MODEL}/infer", json=body,
                          headers={"traceparent": header}, timeout=30)
    assert response.status_code == 200, response.text
    spans = traced.receiver.wait(trace_id, has((GATEWAY, "triton POST")))
    (client,) = named(spans, GATEWAY, "triton POST")
    traced.receiver.wait(trace_id, lambda s: bool(triton_spans_under(client, s)))


def test_requests_succeed_when_the_collector_is_down(traced: Traced, redis_server: RedisServer,
                                                     tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**_clean_environ(), "OTEL_EXPORTER_OTLP_ENDPOINT": dead, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    settings = {"triton_grpc_url": traced.triton.grpc_url, "triton_http_url": traced.triton.http_url,
                "redis_url": redis_server.url, "auth_disabled": True, "jobs_enabled": False}
    gateway = start_gateway(settings, port=free_port(), log_path=tmp_path / "gateway.log", base_env=env)
    try:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=10)
        for i in range(20):
            assert len(client.embeddings.create(model=MODEL, input=[f"dead collector {i}"]).data) == 1
    finally:
        gateway.stop()


# --- unit level ------------------------------------------------------------------------------------------------


def test_settings_read_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TracingSettings().traces_endpoint is None  # off by default
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    from gateway.tracing import TracingEnv

    assert TracingEnv().traces_endpoint == "http://collector:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://other:4318/custom")
    assert TracingEnv().traces_endpoint == "http://other:4318/custom"
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert TracingEnv().traces_endpoint is None


def test_sampler_drops_orphan_client_spans_and_keeps_the_ratio() -> None:
    from opentelemetry.sdk.trace.sampling import Decision
    from opentelemetry.trace import SpanKind

    ratio = sampler(TracingSettings(otel_traces_sampler="parentbased_traceidratio", otel_traces_sampler_arg=1.0))
    assert isinstance(ratio, NoOrphanClients)
    assert ratio.should_sample(None, 1, "GET", SpanKind.CLIENT).decision is Decision.DROP
    assert ratio.should_sample(None, 1, "POST /v1/embeddings", SpanKind.SERVER).decision is Decision.RECORD_AND_SAMPLE
    never = sampler(TracingSettings(otel_traces_sampler="parentbased_traceidratio", otel_traces_sampler_arg=0.0))
    assert never.should_sample(None, 1, "POST /v1/embeddings", SpanKind.SERVER).decision is Decision.DROP


def test_triton_trace_flags() -> None:
    argv = TritonTracing("http://c:4318/v1/traces").argv()
    assert "--trace-config=mode=opentelemetry" in argv and "--trace-config=rate=0" in argv
    assert "--trace-config=opentelemetry,url=http://c:4318/v1/traces" in argv
    assert "--trace-config=opentelemetry,resource=service.name=triton" in argv
