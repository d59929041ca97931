"""Model version rollout: a real tritonserver serving two versions of the exported MiniLM, a real gateway.

Version 2 is a hard-linked copy of version 1 (same weights), so versions are told apart by Triton's own
per-version inference statistics and by the `x-tritonstack-model-version` response header. Triton starts with
version 1 only; `tritonstack model promote` (the CLI code path) loads version 2 next to it with 10% of the
traffic. Keys are deterministic, so the split is the same on every run.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as httpclient
import yaml
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from gateway.config import ApiKeyConfig, hash_api_key
from gateway.errors import InvalidRequestError
from gateway.rollout.config import RolloutConfigError, load_rollouts, parse_rollouts
from gateway.rollout.service import VERSION_HEADER, Choice, RolloutMetrics, RolloutService, parse_pin
from stack.redis import RedisServer
from stack.triton import TritonServer
from tests.fixtures.gateway import GatewayKeys, RunningGateway, settings_for, start_gateway
from tests.fixtures.servers import start_triton, two_version_repository
from tritonstack.cli import app as cli

MODEL = "minilm"
KEYS = 1000
CANARY = 0.10


def canary_key(i: int) -> str:
    """The i-th test caller's API key (deterministic: the same split on every run)."""
    return f"sk-canary-{i:04d}"


@dataclass
class Stack:
    """Triton with versions 1 and 2 in its repository, a gateway with a rollouts file, and their addresses."""

    triton: TritonServer
    gateway: RunningGateway
    rollouts_file: Path
    admin_key: str
    first_choice: dict[int, str] = field(default_factory=dict)  # key index -> version, from the split test

    def cli(self, *args: str) -> str:
        """Run `tritonstack model …` in-process; returns its output (fails the test on a non-zero exit)."""
        result = CliRunner().invoke(cli, ["model", *args, "--triton", self.triton.grpc_url,
                                          "--rollouts-file", str(self.rollouts_file)])
        assert result.exit_code == 0, result.output
        return result.output

    def stats(self) -> dict[str, int]:
        """Triton's inference count (items) per ready version of the model."""
        body = httpx.get(f"http://{self.triton.http_url}/v2/models/{MODEL}/stats", timeout=10).json()
        return {s["version"]: int(s.get("inference_count", 0)) for s in body["model_stats"]}

    def ready_versions(self) -> list[str]:
        index = httpx.post(f"http://{self.triton.http_url}/v2/repository/index", json={"ready": True}, timeout=10)
        return sorted(m["version"] for m in index.json() if m["name"] == MODEL and m.get("state") == "READY")

    def admin(self, method: str, path: str) -> httpx.Response:
        return httpx.request(method, f"{self.gateway.url}{path}", timeout=30,
                             headers={"authorization": f"Bearer {self.admin_key}"})


@pytest.fixture(scope="module")
def stack(minilm_repository: Path, redis_server: RedisServer, gateway_keys: GatewayKeys,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("rollout")
    triton = start_triton(two_version_repository(minilm_repository, root / "repository"), root / "state")
    keys = gateway_keys.config() + [ApiKeyConfig(name=f"canary-{i:04d}", sha256=hash_api_key(canary_key(i)))
                                    for i in range(KEYS)]
    rollouts_file = root / "rollouts.yaml"
    settings = settings_for(triton, redis_server, gateway_keys, api_keys=keys, rollouts_file=rollouts_file,
                            rate_limit_enabled=False, jobs_enabled=False)
    gateway = start_gateway(settings)
    try:
        stack = Stack(triton, gateway, rollouts_file, gateway_keys.admin)
        stack.cli("promote", MODEL, "2", "--weight", "10", "--gateway", gateway.url, "--admin-key",
                  gateway_keys.admin, "--drain-s", "0")
        yield stack
    finally:
        gateway.stop()
        triton.stop()


async def _embed_all(gateway: RunningGateway, calls: list[tuple[int, str]], *, concurrency: int = 16,
                     headers: dict[str, str] | None = None) -> list[httpx.Response]:
    """POST /v1/embeddings for each (key index, text), `concurrency` at a time, in order of `calls`."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
        async def one(i: int, text: str) -> httpx.Response:
            async with limit:
                return await client.post("/v1/embeddings", json={"model": MODEL, "input": text},
                                         headers={"authorization": f"Bearer {canary_key(i)}", **(headers or {})})

        return await asyncio.gather(*(one(i, text) for i, text in calls))


def embed_all(gateway: RunningGateway, calls: list[tuple[int, str]], **kwargs: object) -> list[httpx.Response]:
    return asyncio.run(_embed_all(gateway, calls, **kwargs))  # type: ignore[arg-type]


def test_promote_loads_the_canary_next_to_the_stable_version(stack: Stack) -> None:
    assert stack.ready_versions() == ["1", "2"]
    rollout = load_rollouts(stack.rollouts_file).models[MODEL]
    assert rollout.stable_version == "1" and rollout.versions == {"1": 90, "2": 10}
    table = stack.admin("GET", "/admin/rollouts").json()
    assert table["models"][MODEL]["percent"] == {"1": 90.0, "2": 10.0}
    assert "stable 1; 1: 90%, 2: 10%" in stack.cli("status", MODEL)


def test_split_is_binomial_and_sticky_per_key(stack: Stack) -> None:
    before = stack.stats()
    responses = embed_all(stack.gateway, [(i, f"split sentence {i}") for i in range(KEYS)], concurrency=32,
                          headers={"cache-control": "no-store"})
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200][:3]
    served = Counter(r.headers[VERSION_HEADER] for r in responses)
    after = stack.stats()
    # what the gateway says it served is what Triton computed, version by version
    assert {v: after[v] - before.get(v, 0) for v in after} == {"1": served["1"], "2": served["2"]}
    mean, sigma = KEYS * CANARY, (KEYS * CANARY * (1 - CANARY)) ** 0.5
    assert abs(served["2"] - mean) <= 4 * sigma, served
    stack.first_choice.update({i: r.headers[VERSION_HEADER] for i, r in enumerate(responses)})

    # stickiness: 40 keys (20 per version) × 5 more requests each, other texts, same version every time
    sample = [i for i in range(KEYS) if stack.first_choice[i] == "1"][:20]
    sample += [i for i in range(KEYS) if stack.first_choice[i] == "2"][:20]
    again = embed_all(stack.gateway, [(i, f"sticky {i} {n}") for n in range(5) for i in sample])
    for (i, _), r in zip([(i, n) for n in range(5) for i in sample], again, strict=True):
        assert r.status_code == 200 and r.headers[VERSION_HEADER] == stack.first_choice[i]


def test_a_growing_canary_only_moves_callers_onto_it(stack: Stack) -> None:
    assert stack.first_choice, "runs after the split test"
    stack.rollouts_file.write_text(yaml.safe_dump({"models": {MODEL: {"stable": "1", "versions": {"1": 50, "2": 50}}}}))
    try:
        assert stack.admin("POST", "/admin/rollouts/reload").status_code == 200
        keys = list(range(0, KEYS, 5))
        responses = embed_all(stack.gateway, [(i, f"split sentence {i}") for i in keys])
        now = {i: r.headers[VERSION_HEADER] for i, r in zip(keys, responses, strict=True)}
        assert all(now[i] == "2" for i in keys if stack.first_choice[i] == "2")  # nobody moves back
        assert 0.4 < sum(v == "2" for v in now.values()) / len(now) < 0.6
    finally:
        stack.cli("promote", MODEL, "2", "--weight", "10", "--gateway", stack.gateway.url, "--admin-key",
                  stack.admin_key, "--drain-s", "0")


def test_pin_header_wins_and_a_bad_pin_is_a_400(stack: Stack) -> None:
    v1_key = next(i for i, v in stack.first_choice.items() if v == "1")
    client = openai.OpenAI(api_key=canary_key(v1_key), base_url=f"{stack.gateway.url}/v1", max_retries=0)
    before = stack.stats()
    raw = client.embeddings.with_raw_response.create(model=MODEL, input="pinned to the canary",
                                                     extra_headers={VERSION_HEADER: "2"})
    assert raw.headers[VERSION_HEADER] == "2" and len(raw.parse().data[0].embedding) == 384
    assert stack.stats()["2"] == before["2"] + 1 and stack.stats()["1"] == before["1"]
    metrics = httpx.get(f"{stack.gateway.url}/metrics", timeout=10).text
    assert 'gateway_model_version_requests_total{model="minilm",selection="pinned",version="2"} 1.0' in metrics
    for pin, code in (("7", "model_version_not_available"), ("two", "invalid_model_version")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(model=MODEL, input="x", extra_headers={VERSION_HEADER: pin})
        assert caught.value.status_code == 400 and caught.value.code == code
        assert caught.value.body["param"] == VERSION_HEADER  # type: ignore[index]


def test_unversioned_kserve_inference_follows_the_rollout_like_embeddings(stack: Stack) -> None:
    """`tritonclient` against the gateway's `/v2/models/{m}/infer` gets each caller's version from the same table."""
    assert stack.first_choice, "runs after the split test"
    callers = [i for i in range(KEYS) if stack.first_choice[i] == "1"][:6]
    callers += [i for i in range(KEYS) if stack.first_choice[i] == "2"][:6]
    url = stack.gateway.url.removeprefix("http://")
    before = stack.stats()
    for i in callers:
        client = httpclient.InferenceServerClient(url)
        text = httpclient.InferInput("text", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[f"kserve caller {i}".encode()]], dtype=np.object_))
        result = client.infer(MODEL, [text], headers={"authorization": f"Bearer {canary_key(i)}"})
        assert result.as_numpy("embedding").shape == (1, 384)
        client.close()
    after = stack.stats()
    routed = Counter(stack.first_choice[i] for i in callers)
    assert {v: after[v] - before.get(v, 0) for v in after} == {"1": routed["1"], "2": routed["2"]}

    # the response names the version; a pin header works here too; a versioned path is left as addressed
    body = {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["pinned over /v2"]}]}
    auth = {"authorization": f"Bearer {canary_key(callers[0])}"}
    routed_reply = httpx.post(f"{stack.gateway.url}/v2/models/{MODEL}/infer", json=body, headers=auth, timeout=30)
    assert routed_reply.status_code == 200 and routed_reply.headers[VERSION_HEADER] == "1"
    pinned_reply = httpx.post(f"{stack.gateway.url}/v2/models/{MODEL}/infer", json=body, timeout=30,
                              headers={**auth, VERSION_HEADER: "2"})
    assert pinned_reply.status_code == 200 and pinned_reply.headers[VERSION_HEADER] == "2"
    addressed = httpx.post(f"{stack.gateway.url}/v2/models/{MODEL}/versions/2/infer", json=body, headers=auth,
                           timeout=30)
    assert addressed.status_code == 200 and VERSION_HEADER not in addressed.headers
    assert addressed.json()["model_version"] == "2"


def test_cache_entries_never_cross_versions(stack: Stack) -> None:
    text = "one sentence cached under each version"
    calls = [(0, text)]

    def once(version: str) -> httpx.Response:
        (response,) = embed_all(stack.gateway, calls, headers={VERSION_HEADER: version})
        assert response.status_code == 200 and response.headers[VERSION_HEADER] == version
        return response

    before = stack.stats()
    assert once("1").headers["x-cache"] == "miss"
    assert once("1").headers["x-cache"] == "hit"
    assert once("2").headers["x-cache"] == "miss"  # version 1's entry is not served for version 2
    assert once("2").headers["x-cache"] == "hit"
    after = stack.stats()
    assert (after["1"] - before["1"], after["2"] - before["2"]) == (1, 1)


def test_invalid_rollouts_file_keeps_the_table_and_a_file_change_is_picked_up(stack: Stack) -> None:
    good = stack.rollouts_file.read_text()
    with pytest.raises(RolloutConfigError, match="at least one version needs a weight"):
        parse_rollouts({"models": {MODEL: {"versions": {"1": 0}}}})
    stack.rollouts_file.write_text("models: {minilm: {versions: {'1': -5}}}\n")
    refused = stack.admin("POST", "/admin/rollouts/reload")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_rollouts"
    assert stack.admin("GET", "/admin/rollouts").json()["models"][MODEL]["percent"] == {"1": 90.0, "2": 10.0}

    # no admin call: the gateway notices the file changed (checked at most once a second) and routes all to 2
    v1_key = next(i for i, v in stack.first_choice.items() if v == "1")
    stack.rollouts_file.write_text(yaml.safe_dump({"models": {MODEL: {"stable": "1", "versions": {"1": 0, "2": 1}}}}))
    try:
        deadline = time.monotonic() + 10
        while not _noticed(stack):  # requests drive the check: poll with requests, not with sleeps
            assert time.monotonic() < deadline, "the file change was not picked up within 10 s"
            embed_all(stack.gateway, [(v1_key, "file watch")])
        assert embed_all(stack.gateway, [(v1_key, "file watch")])[0].headers[VERSION_HEADER] == "2"
    finally:
        stack.rollouts_file.write_text(good)
        assert stack.admin("POST", "/admin/rollouts/reload").status_code == 200


def _noticed(stack: Stack) -> bool:
    table = stack.admin("GET", "/admin/rollouts").json()["models"][MODEL]
    return table["percent"] == {"1": 0.0, "2": 100.0}


class _Load:
    """Closed-loop requests from many keys in a background thread until stopped; records every outcome."""

    def __init__(self, gateway: RunningGateway, workers: int = 8) -> None:
        self.gateway, self.workers = gateway, workers
        self.results: list[tuple[int, str]] = []  # (status or -1 for a transport error, served version)
        self.progress = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> _Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        """Block until at least `count` requests have completed."""
        with self.progress:
            assert self.progress.wait_for(lambda: len(self.results) >= count, timeout), len(self.results)

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.gateway.url, timeout=60) as client:
            await asyncio.gather(*(self._worker(client, w) for w in range(self.workers)))

    async def _worker(self, client: httpx.AsyncClient, worker: int) -> None:
        n = worker
        while not self._stop.is_set():
            key = n % KEYS
            try:
                r = await client.post("/v1/embeddings", json={"model": MODEL, "input": f"load {n}"},
                                      headers={"authorization": f"Bearer {canary_key(key)}",
                                               "cache-control": "no-store"})
                outcome = (r.status_code, r.headers.get(VERSION_HEADER, ""))
            except httpx.HTTPError:
                outcome = (-1, "")
            with self.progress:
                self.results.append(outcome)
                self.progress.notify_all()
            n += self.workers


def test_rollback_under_load_fails_no_request(stack: Stack) -> None:
    # a second gateway that never looks at the file or the metadata again by itself: after the rollback it still
    # routes canary callers to version 2, and must recover through the retry on the unloaded version
    stale = start_gateway(stack.gateway.settings.model_copy(
        update={"model_info_ttl_s": 3600.0, "rollouts_check_interval_s": 3600.0}))
    v2_key = next(i for i, v in stack.first_choice.items() if v == "2")
    try:
        assert embed_all(stale, [(v2_key, "stale before")])[0].headers[VERSION_HEADER] == "2"
        _rollback_under_load(stack)
        # its metadata still lists version 2: a pin to it fails at Triton, and the answer is the pin's 400, not a 404
        pinned = embed_all(stale, [(0, "stale pin")], headers={VERSION_HEADER: "2"})[0]
        assert pinned.status_code == 400 and pinned.json()["error"]["code"] == "model_version_not_available"
        late = embed_all(stale, [(v2_key, "stale after")])[0]
        assert late.status_code == 200 and late.headers[VERSION_HEADER] == "1", late.text
    finally:
        stale.stop()


def _rollback_under_load(stack: Stack) -> None:
    with _Load(stack.gateway) as load:
        load.wait_for(1)
        while not any(v == "2" for _, v in load.results):  # the canary is taking traffic
            load.wait_for(len(load.results) + 1)
        output = stack.cli("rollback", MODEL, "--gateway", stack.gateway.url, "--admin-key", stack.admin_key,
                           "--drain-s", "0.5")
        done = len(load.results)
        load.wait_for(done + 100)
    failures = [r for r in load.results if r[0] != 200]
    assert not failures, f"{len(failures)} of {len(load.results)} requests failed: {failures[:5]}"
    assert "unloading 'minilm' version(s) 2" in output
    assert stack.ready_versions() == ["1"]
    assert {v for _, v in load.results[done + load.workers:]} == {"1"}
    assert load_rollouts(stack.rollouts_file).models[MODEL].versions == {"1": 100}
    pinned = embed_all(stack.gateway, [(0, "after rollback")], headers={VERSION_HEADER: "2"})[0]
    assert pinned.status_code == 400 and pinned.json()["error"]["code"] == "model_version_not_available"


def test_promote_to_100_under_load_fails_no_request(stack: Stack) -> None:
    with _Load(stack.gateway) as load:
        load.wait_for(20)
        stack.cli("promote", MODEL, "2", "--weight", "100", "--gateway", stack.gateway.url, "--admin-key",
                  stack.admin_key, "--drain-s", "0.5")
        done = len(load.results)
        load.wait_for(done + 100)
    failures = [r for r in load.results if r[0] != 200]
    assert not failures, f"{len(failures)} of {len(load.results)} requests failed: {failures[:5]}"
    assert stack.ready_versions() == ["2"]
    assert {v for _, v in load.results[done + load.workers:]} == {"2"}
    rollout = load_rollouts(stack.rollouts_file).models[MODEL]
    assert (rollout.stable_version, rollout.versions) == ("2", {"2": 100})
    result = CliRunner().invoke(cli, ["model", "rollback", MODEL, "--triton", stack.triton.grpc_url,
                                      "--rollouts-file", str(stack.rollouts_file)])
    assert result.exit_code == 1 and "no canary to roll back" in result.output


def test_promote_names_what_is_missing(stack: Stack, minilm_repository: Path) -> None:
    def fails(*args: str) -> str:
        result = CliRunner().invoke(cli, ["model", "promote", *args, "--triton", stack.triton.grpc_url,
                                          "--rollouts-file", str(stack.rollouts_file), "--no-gateway-check"])
        assert result.exit_code == 1, result.output
        return " ".join(result.output.split())

    assert "version 3 of 'minilm' is not in" in fails(MODEL, "3", "--repository", str(minilm_repository))
    assert "version(s) 3 of 'minilm' did not become ready" in fails(MODEL, "3", "--weight", "5")
    assert "model 'nope' is not in the model repository" in fails("nope", "1")
    assert stack.ready_versions() == ["2"]  # a failed promote leaves the served versions as they were


def _service(tmp_path: Path, text: str) -> RolloutService:
    path = tmp_path / "rollouts.yaml"
    path.write_text(text)
    return RolloutService(path, metrics=RolloutMetrics(CollectorRegistry()))


def test_a_caller_only_ever_moves_onto_a_growing_canary(tmp_path: Path) -> None:
    callers = [f"key:caller-{i}" for i in range(5000)]
    on_canary: set[str] = set()
    for canary in (0, 5, 50, 95, 100):
        service = _service(tmp_path, f"models: {{m: {{versions: {{1: {100 - canary}, 2: {canary}}}}}}}")
        now = {c for c in callers if service.choose("m", c, ("1", "2"), "2").version == "2"}
        assert on_canary <= now and abs(len(now) / len(callers) - canary / 100) < 0.02
        on_canary = now


def test_choice_falls_back_to_a_served_version(tmp_path: Path) -> None:
    service = _service(tmp_path, "models: {m: {stable: 1, versions: {1: 0, 2: 100}}}")
    assert service.choose("m", "ip:10.0.0.1", ("1", "2"), "2") == Choice("2", "2", "routed")
    assert service.choose("m", "ip:10.0.0.1", ("1",), "1") == Choice("1", "1", "default")  # 1 has weight 0
    # a model no rollout lists stays on the oldest ready version, named to Triton: loading 3 moved nothing
    assert service.choose("other", "ip:10.0.0.1", ("1", "3"), "3") == Choice("1", "1", "default")
    assert service.choose("other", "ip:10.0.0.1", ("3",), "3") == Choice("3", "3", "default")
    assert service.choose("m", "ip:10.0.0.1", ("1", "2"), "2", pin="1") == Choice("1", "1", "pinned")
    with pytest.raises(InvalidRequestError):
        parse_pin("02")
    with pytest.raises(RolloutConfigError, match="stable version 3 is not one of the listed versions"):
        parse_rollouts({"models": {"m": {"stable": 3, "versions": {1: 1}}}})
