"""Several Triton endpoints behind one gateway (`gateway.backends.pool`), on two real tritonserver processes.

Load spreads over both, from the gateway and from the worker; stopping one (SIGKILL or SIGTERM) during a steady
load fails no request (passive ejection + retry, active health checks); restarted on the same ports it is
readmitted; the pool's gRPC stream moves off a dead endpoint; with every endpoint down the gateway answers a clean
503 at once. Also: the settings' list formats and the Kubernetes overlay that lists the Triton pods.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
from prometheus_client.parser import text_string_to_metric_families

from gateway.backends.pool import TritonPool
from gateway.config import GatewaySettings
from jobs.config import WorkerConfig
from stack.process import free_port
from stack.redis import RedisServer
from stack.triton import TritonOptions, TritonServer
from tests.fixtures.gateway import GatewayKeys, RunningGateway, settings_for, start_gateway

MODEL = "minilm"
CLIENTS = 8


def executions(server: TritonServer) -> int:
    """Inference requests `server` has executed successfully for MODEL (from its statistics)."""
    client = triton_http.InferenceServerClient(server.http_url)
    try:
        stats = client.get_inference_statistics(MODEL)
    finally:
        client.close()
    return sum(int(m["inference_stats"]["success"]["count"]) for m in stats["model_stats"])


def restart(server: TritonServer, state_dir: Path) -> TritonServer:
    """A new server on `server`'s ports and repository, ready."""
    return TritonServer(server.opts, state_dir=state_dir, log_path=state_dir / "triton-restarted.log"
                        ).start_and_wait()


def gauge(gw: RunningGateway, name: str, endpoint: str) -> float | None:
    """The value of gauge `name` for `endpoint` on the gateway's /metrics."""
    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("endpoint") == endpoint:
                return sample.value
    return None


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` until true, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Load:
    """Outcome of a steady concurrent load: requests served, failures with their bodies."""

    ok: int = 0
    failures: list[str] = field(default_factory=list)
    waiters: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)

    def served_one(self) -> None:
        """Count a success; wake whoever waits for this many."""
        self.ok += 1
        for target, waiter in self.waiters:
            if self.ok >= target and not waiter.done():
                waiter.set_result(None)

    async def served(self, count: int, what: str, within_s: float = 30) -> None:
        """Return once `count` requests were served (AssertionError after `within_s`)."""
        if self.ok >= count:
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append((count, waiter))
        try:
            async with asyncio.timeout(within_s):
                await waiter
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what} ({self.ok}/{count} served)") from None


async def steady_load(gw: RunningGateway, key: str, stop: asyncio.Event, load: Load) -> None:
    """CLIENTS clients, each sending unique uncached embedding requests back to back until `stop` is set."""
    headers = {"Authorization": f"Bearer {key}", "Cache-Control": "no-store"}

    async def client(c: httpx.AsyncClient, n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            body = {"model": MODEL, "input": f"client {n} request {i} {uuid.uuid4().hex}"}
            try:
                r = await c.post("/v1/embeddings", json=body, headers=headers)
            except httpx.HTTPError as exc:
                load.failures.append(repr(exc))
                continue
            if r.status_code == 200:
                load.served_one()
            else:
                load.failures.append(f"{r.status_code} {r.text[:200]}")

    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
        await asyncio.gather(*(client(c, n) for n in range(CLIENTS)))


@pytest.fixture(scope="module")
def tritons(minilm_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[TritonServer]]:
    """Two tritonservers on the session's repository (the list's entries are replaced when a test restarts one)."""
    servers = []
    for i in range(2):  # started together, waited for together: model loading overlaps
        state = tmp_path_factory.mktemp(f"pool-triton-{i}")
        opts = TritonOptions(repository=minilm_repository, http_port=free_port(), grpc_port=free_port(),
                             metrics_port=free_port())
        servers.append(TritonServer(opts, state_dir=state, log_path=state / "triton.log").start())
    try:
        for server in servers:
            server.wait_ready(server.ready, timeout=180, interval=0.1)
        yield servers
    finally:
        for server in servers:
            server.signal(signal.SIGKILL)  # no graceful shutdown to wait for: the module is done with them
            server.stop()


@pytest.fixture(scope="module")
def pooled_gateway(tritons: list[TritonServer], redis_server: RedisServer, gateway_keys: GatewayKeys
                   ) -> Iterator[RunningGateway]:
    """A gateway over both Tritons, health-checking every 0.2 s, no rate limits in the way."""
    settings = settings_for(
        tritons[0], redis_server, gateway_keys, rate_limit_enabled=False,
        triton_grpc_urls=[t.grpc_url for t in tritons], triton_http_urls=[t.http_url for t in tritons],
        triton_health_interval_s=0.2, triton_health_timeout_s=0.5,
    )
    gw = start_gateway(settings)
    try:
        yield gw
    finally:
        gw.stop()


def test_url_lists_parse_from_json_or_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITONSTACK_GATEWAY_AUTH_DISABLED", "true")
    monkeypatch.setenv("TRITONSTACK_GATEWAY_TRITON_GRPC_URLS", "a:8001, b:8001")
    monkeypatch.setenv("TRITONSTACK_GATEWAY_TRITON_HTTP_URLS", '["a:8000", "b:8000"]')
    settings = GatewaySettings()
    assert settings.grpc_urls == ["a:8001", "b:8001"]
    assert settings.http_urls == ["a:8000", "b:8000"]
    monkeypatch.setenv("TRITONSTACK_WORKER_TRITON_GRPC_URLS", '["a:8001","b:8001"]')
    assert WorkerConfig().grpc_urls == ["a:8001", "b:8001"]
    monkeypatch.delenv("TRITONSTACK_GATEWAY_TRITON_GRPC_URLS")
    monkeypatch.delenv("TRITONSTACK_GATEWAY_TRITON_HTTP_URLS")
    single = GatewaySettings(triton_grpc_url="t:1", triton_http_url="t:2")
    assert (single.grpc_urls, single.http_urls) == (["t:1"], ["t:2"])
    moved = single.model_copy(update={"triton_grpc_url": "u:1"})  # how tests point a gateway elsewhere
    assert moved.grpc_urls == ["u:1"]
    with pytest.raises(ValueError, match="one HTTP address per gRPC address"):
        GatewaySettings(triton_grpc_urls=["a:1", "b:1"])


def test_load_spreads_over_both_tritons(
    tritons: list[TritonServer], pooled_gateway: RunningGateway, gateway_keys: GatewayKeys
) -> None:
    before = [executions(t) for t in tritons]
    headers = {"Authorization": f"Bearer {gateway_keys.user}", "Cache-Control": "no-store"}

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=pooled_gateway.url, timeout=60) as c:
            calls = [c.post("/v1/embeddings", headers=headers,
                            json={"model": MODEL, "input": f"spread {i} {uuid.uuid4().hex}"}) for i in range(100)]
            return [r.status_code for r in await asyncio.gather(*calls)]

    assert asyncio.run(burst()) == [200] * 100
    grown = [executions(t) - b for t, b in zip(tritons, before, strict=True)]
    assert all(g > 0 for g in grown), f"executions per Triton: {grown}"


def test_worker_spreads_a_job_over_both_tritons(
    tritons: list[TritonServer], redis_server: RedisServer, minilm_repository: Path, gateway_keys: GatewayKeys,
    tmp_path: Path,
) -> None:
    from tests.fixtures.jobs import jobs_gateway, new_queue, start_worker
    from tests.test_jobs import embeddings_job, finished, sentences, submit, wait_job

    queue = new_queue()
    worker = start_worker(tritons[0], redis_server, minilm_repository, queue, tmp_path, CACHE_ENABLED="false",
                          TRITON_GRPC_URLS=",".join(t.grpc_url for t in tritons))
    gw = jobs_gateway(tritons[0], redis_server, gateway_keys, queue)
    try:
        before = [executions(t) for t in tritons]
        headers = {"Authorization": f"Bearer {gateway_keys.user}"}
        response = submit(gw, headers, embeddings_job(sentences(600, uuid.uuid4().hex[:8])))
        assert response.status_code == 202, response.text
        job, _ = wait_job(gw, headers, response.json()["id"], finished)
        assert job["status"] == "succeeded", job
        grown = [executions(t) - b for t, b in zip(tritons, before, strict=True)]
        assert all(g > 0 for g in grown), f"executions per Triton: {grown}"
    finally:
        gw.stop()
        worker.process.stop()


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_stopped_triton_fails_no_request_and_is_readmitted_after_restart(
    tritons: list[TritonServer], pooled_gateway: RunningGateway, gateway_keys: GatewayKeys,
    tmp_path: Path, how: str,
) -> None:
    """SIGKILL: the process group dies at once. SIGTERM: Triton's graceful shutdown, what Kubernetes sends a pod
    first (rolling update, drain)."""
    victim = tritons[1]
    load = Load()

    async def scenario() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(steady_load(pooled_gateway, gateway_keys.user, stop, load))
        try:
            await load.served(40, "a steady load before the kill")
            if how == "SIGKILL":
                victim.signal(signal.SIGKILL)  # the whole process group: server and python-backend stubs
            else:
                await asyncio.to_thread(victim.stop)  # SIGTERM, waits for the exit; the load runs meanwhile
            killed_at = load.ok
            await load.served(killed_at + 80, "requests served after the kill")
        finally:
            stop.set()
            await runner

    asyncio.run(scenario())
    victim.stop()
    assert load.failures == [], load.failures[:5]
    assert load.ok >= 120

    wait_for(lambda: gauge(pooled_gateway, "gateway_triton_endpoint_healthy", victim.grpc_url) == 0, 10,
             "the killed endpoint's healthy gauge to drop")
    assert httpx.get(f"{pooled_gateway.url}/readyz", timeout=10).status_code == 200
    auth = {"Authorization": f"Bearer {gateway_keys.user}"}
    for _ in range(4):  # the KServe passthrough keeps answering from the live Triton
        assert httpx.get(f"{pooled_gateway.url}/v2/models/{MODEL}", headers=auth, timeout=10).status_code == 200

    tritons[1] = revived = restart(victim, tmp_path)
    wait_for(lambda: gauge(pooled_gateway, "gateway_triton_endpoint_healthy", revived.grpc_url) == 1, 10,
             "the restarted endpoint to be readmitted")
    before = executions(revived)
    headers = {**auth, "Cache-Control": "no-store"}

    def revived_serves() -> bool:
        body = {"model": MODEL, "input": [f"readmitted {uuid.uuid4().hex}" for _ in range(4)]}
        assert httpx.post(f"{pooled_gateway.url}/v1/embeddings", json=body, headers=headers,
                          timeout=30).status_code == 200
        return executions(revived) > before

    wait_for(revived_serves, 10, "the restarted Triton to execute requests again")


def test_stream_infer_moves_to_a_live_endpoint_before_the_first_response(tritons: list[TritonServer]) -> None:
    """The pool's gRPC stream (chat's path) on a dead and a live endpoint: every call answers, the dead one is
    ejected by the failed call itself (no health-check task here)."""

    async def scenario() -> list[int]:
        pool = TritonPool([f"127.0.0.1:{free_port()}", tritons[0].grpc_url], timeout_s=30, model_info_ttl_s=1)
        try:
            sizes = []
            for i in range(2):  # round robin: one of the two calls starts on the dead endpoint
                text = np.array([[f"stream {i}".encode()]], dtype=np.object_)
                async for outputs in pool.stream_infer(MODEL, {"text": text}, timeout_s=30):
                    sizes.append(int(outputs["embedding"].shape[-1]))
            assert [ep.healthy for ep in pool.endpoints] == [False, True]
            return sizes
        finally:
            await pool.close()

    assert asyncio.run(scenario()) == [384, 384]


def test_every_endpoint_down_is_a_prompt_503(
    redis_server: RedisServer, gateway_keys: GatewayKeys, gateway_factory: Callable[..., RunningGateway]
) -> None:
    dead = [f"127.0.0.1:{free_port()}" for _ in range(4)]
    gw = gateway_factory(settings_for(None, redis_server, gateway_keys, triton_grpc_urls=dead[:2],
                                      triton_http_urls=dead[2:], triton_health_interval_s=0.2))
    auth = {"Authorization": f"Bearer {gateway_keys.user}", "Cache-Control": "no-store"}
    started = time.monotonic()
    r = httpx.post(f"{gw.url}/v1/embeddings", json={"model": MODEL, "input": "nobody home"}, headers=auth,
                   timeout=30)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "backend_unavailable"
    assert r.headers["retry-after"].isdigit()
    passthrough = httpx.get(f"{gw.url}/v2/models/{MODEL}", headers=auth, timeout=30)
    assert passthrough.status_code == 503
    assert time.monotonic() - started < 10
    wait_for(lambda: httpx.get(f"{gw.url}/readyz", timeout=10).status_code == 503, 10, "/readyz to report 503")


def test_k8s_gpu_pool_overlay_lists_every_triton_pod() -> None:
    """overlays/gpu-pool builds, validates, and gives gateway and worker one address per StatefulSet pod."""
    import shutil
    import subprocess

    import yaml

    from tests.test_deploy import K8S, _by_kind, _k8s_validate

    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed (it carries kustomize; Debian's kubernetes-client)")
    done = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / "gpu-pool")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    _k8s_validate(docs, "overlays/gpu-pool")
    assert "triton" not in _by_kind(docs, "Deployment")
    triton = _by_kind(docs, "StatefulSet")["triton"]
    headless = _by_kind(docs, "Service")[triton["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert {p["name"] for p in headless["spec"]["ports"]} >= {"http", "grpc"}

    def env(name: str) -> dict[str, str]:
        container = _by_kind(docs, "Deployment")[name]["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e["value"] for e in container["env"] if "value" in e}

    gateway = GatewaySettings(auth_disabled=True,
                              triton_grpc_urls=env("gateway")["TRITONSTACK_GATEWAY_TRITON_GRPC_URLS"],
                              triton_http_urls=env("gateway")["TRITONSTACK_GATEWAY_TRITON_HTTP_URLS"])
    worker = WorkerConfig(triton_grpc_urls=env("worker")["TRITONSTACK_WORKER_TRITON_GRPC_URLS"])
    pods = [f"triton-{i}.{headless['metadata']['name']}" for i in range(3)]
    assert gateway.grpc_urls == [f"{p}:8001" for p in pods] == worker.grpc_urls
    assert gateway.http_urls == [f"{p}:8000" for p in pods]
