"""A real OTLP/HTTP trace receiver on loopback for the tracing tests: decodes `ExportTraceServiceRequest`
(OpenTelemetry's own protobuf types) from the gateway's and the worker's SDK and from Triton's C++ exporter."""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from stack.process import free_port


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver decoded it (ids as hex)."""

    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    error: bool


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


def from_json(body: bytes) -> ExportTraceServiceRequest:
    """OTLP/HTTP's JSON encoding (Triton's C++ exporter sends it): ids are hex there, base64 in protobuf's JSON."""
    data = json.loads(body)
    for resource_spans in data.get("resourceSpans", []):
        for scope in resource_spans.get("scopeSpans", []):
            for span in scope.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    return json_format.ParseDict(data, ExportTraceServiceRequest(), ignore_unknown_fields=True)


def decode(body: bytes, content_type: str) -> list[ReceivedSpan]:
    """The spans of one export request (protobuf, or JSON)."""
    is_json = content_type.startswith("application/json")
    request = from_json(body) if is_json else ExportTraceServiceRequest.FromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope in resource_spans.scope_spans:
            for span in scope.spans:
                spans.append(ReceivedSpan(
                    service=str(resource.get("service.name", "")), name=span.name, kind=span.kind,
                    trace_id=span.trace_id.hex(), span_id=span.span_id.hex(), parent_id=span.parent_span_id.hex(),
                    attributes={a.key: _value(a.value) for a in span.attributes},
                    error=span.status.code == span.status.STATUS_CODE_ERROR))
    return spans


class OtlpReceiver:
    """Collects every span posted to `http://127.0.0.1:<port>/v1/traces`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.spans: list[ReceivedSpan] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                received = decode(body, self.headers.get("content-type", "")) if self.path == "/v1/traces" else []
                with receiver._changed:
                    receiver.spans.extend(received)
                    receiver._changed.notify_all()
                proto = not self.headers.get("content-type", "").startswith("application/json")
                reply = ExportTraceServiceResponse().SerializeToString() if proto else b"{}"
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("content-type", "application/x-protobuf" if proto else "application/json")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    @property
    def endpoint(self) -> str:
        """`OTEL_EXPORTER_OTLP_ENDPOINT` (the SDK adds /v1/traces)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        """Every span received so far in trace `trace_id`."""
        with self._changed:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait(self, trace_id: str, until: Callable[[list[ReceivedSpan]], bool], timeout: float = 20.0
             ) -> list[ReceivedSpan]:
        """The trace's spans once `until(spans)` holds (AssertionError with what arrived after `timeout`)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                spans = [s for s in self.spans if s.trace_id == trace_id]
                if until(spans):
                    return spans
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"trace {trace_id} incomplete after {timeout}s: "
                                         f"{sorted((s.service, s.name) for s in spans)}")
                self._changed.wait(left)
