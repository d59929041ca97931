"""Schema fuzzing (issue 9, item 5): schemathesis generates requests for every operation in the gateway's own
`/openapi.json` and sends them to a real gateway (real Triton, real Redis, chat routed to a fake cloud LLM).

Every generated case is sent twice: with a valid key (user and admin keys alternate) and without a valid one (a
wrong key and no key alternate), so each operation is fuzzed with and without auth; a case naming a `model` is
sent a third time with a valid key and the model replaced by a served one (`minilm`, or `chat` for chat), so that
fuzzed inputs get past the model lookup into the services, Redis and Triton. Positive (schema-valid) and
negative (schema-violating) generation; negative only where the schema has a body, query or header to violate
(for a free-form string path parameter there is nothing a negative case could be). Derandomized: the same
cases every run.

Checks on every response: no 5xx, and every error body is the OpenAI envelope — except under `/v2`, where every
error (the gateway's own refusals and Triton's, relayed) has the KServe v2 shape `{"error": "<message>"}` that
`tritonclient` parses (see docs/RELIABILITY.md §5).

Nothing is excluded: `DELETE /admin/cache` only empties the embedding cache (a later request misses),
`POST /admin/rollouts/reload` re-reads the (absent) rollout file, jobs go to a private queue that no worker
consumes, and streamed chat answers are read to the end.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.strategies import SearchStrategy
from schemathesis import GenerationMode

from gateway.app import create_app
from gateway.config import GatewaySettings
from stack.redis import RedisServer
from stack.triton import TritonServer
from tests.envelope import envelope_problem, full_gateway
from tests.fake_llm import FakeLLMServer
from tests.fixtures.gateway import GatewayKeys, RunningGateway

EXAMPLES = 50  # per (operation, generation mode); operations without inputs have a single case
MIN_CASES = 1000  # generated cases (each sent twice)
BUDGET_S = 120.0


@schemathesis.serializer("application/x-ndjson")
def _jsonl(_: schemathesis.SerializationContext, value: Any) -> bytes:
    """JSONL job uploads: the schema says "a string"; negative mode may draw any JSON value."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")  # lone surrogates → invalid UTF-8 on the wire: fine
    return json.dumps(value, default=str).encode()


@pytest.fixture
def upstream(fake_llm_server: FakeLLMServer) -> FakeLLMServer:
    """The session's fake cloud LLM (tests/fixtures/fake_llm.py)."""
    return fake_llm_server


@pytest.fixture
def fuzz_gateway(
    gateway_factory: Callable[..., RunningGateway], triton_server: TritonServer, redis_server: RedisServer,
    gateway_keys: GatewayKeys, upstream: FakeLLMServer, tmp_path: Path,
) -> RunningGateway:
    return full_gateway(gateway_factory, triton_server, redis_server, gateway_keys, upstream, tmp_path)


def _modes(operation: schemathesis.APIOperation) -> tuple[GenerationMode, ...]:
    """Positive always; negative where the schema has a body, query or header to violate."""
    violable = any(len(part) for part in (operation.query, operation.headers, operation.body))
    return (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if violable else (GenerationMode.POSITIVE,)


def _content_type(response: schemathesis.Response) -> str:
    values = {k.lower(): v for k, v in response.headers.items()}.get("content-type") or [""]
    return values[0]


def _fuzz(strategy: SearchStrategy[schemathesis.Case], send: Callable[[schemathesis.Case], None]) -> None:
    """Send `EXAMPLES` derandomized cases drawn from `strategy` (no shrinking: `send` records, never raises)."""

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        send(case)

    run()


def _with_real_model(case: schemathesis.Case) -> bool:
    """Point a case's `model` (body, path or query) at a served model; False when it names none."""
    target = "chat" if case.operation.path.startswith("/v1/chat") else "minilm"
    changed = False
    for container in (case.body, case.path_parameters, case.query):
        if isinstance(container, dict) and "model" in container and container["model"] != target:
            container["model"] = target
            changed = True
    return changed


class Recorder:
    """Sends each case with and without a valid key and records what came back."""

    def __init__(self, base_url: str, keys: GatewayKeys) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.valid = [{"Authorization": f"Bearer {keys.user}"}, {"Authorization": f"Bearer {keys.admin}"}]
        self.invalid = [{"Authorization": "Bearer sk-not-a-key"}, {}]
        self.turn = count()
        self.cases: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []

    def __call__(self, case: schemathesis.Case) -> None:
        turn = next(self.turn)
        self.cases[case.operation.label] += 1
        for auth in (self.valid[turn % 2], self.invalid[turn % 2]):
            self._send(case, auth)
        if _with_real_model(case):  # past the model lookup, into the services and Triton
            self._send(case, self.valid[turn % 2])

    def _send(self, case: schemathesis.Case, auth: dict[str, str]) -> None:
        response = case.call(base_url=self.base_url, session=self.session, headers=auth, timeout=30)
        status = response.status_code
        self.statuses[status] += 1
        if status < 400:
            return
        problem = f"{status} {response.content[:300]!r}" if status >= 500 else envelope_problem(
            status, _content_type(response), response.content, kserve=case.operation.path.startswith("/v2"))
        if problem is not None:
            self.failures.append(f"{case.operation.label}: {problem}\n  {case.as_curl_command(auth)}")


def test_openapi_fuzz_no_5xx_and_envelopes(fuzz_gateway: RunningGateway, gateway_keys: GatewayKeys) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_gateway.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [op.label for op in operations]
    record = Recorder(fuzz_gateway.url, gateway_keys)
    started = time.monotonic()
    for operation in operations:
        for mode in _modes(operation):
            _fuzz(operation.as_strategy(generation_mode=mode), record)
    elapsed = time.monotonic() - started
    total = sum(record.cases.values())
    print(f"\nfuzz: {total} generated cases ({sum(record.statuses.values())} requests) over {len(operations)} "
          f"operations in {elapsed:.1f}s; statuses {dict(sorted(record.statuses.items()))}; "
          f"cases per operation {dict(record.cases)}")
    assert not record.failures, f"{len(record.failures)} bad responses:\n" + "\n".join(record.failures[:30])
    assert total >= MIN_CASES, record.cases
    assert set(record.cases) == {op.label for op in operations}
    assert elapsed < BUDGET_S


def test_openapi_request_schemas_have_no_dangling_refs() -> None:
    """Regression: request bodies pasted from pydantic pointed at `#/$defs/...`, which do not exist in an OpenAPI
    document (the fuzzer, and any client generator, saw an empty chat and jobs body schema)."""
    spec = create_app(GatewaySettings(auth_disabled=True)).openapi()
    refs = set(re.findall(r'"\$ref":\s*"([^"]+)"', json.dumps(spec)))
    components = set(spec.get("components", {}).get("schemas", {}))
    assert refs, "expected component references in the schema"
    for ref in refs:
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in components, ref
    chat = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert chat["properties"]["messages"]["items"]["properties"]["role"]["enum"]
