"""Security (issue 9, item 6): keys hashed, compared in constant time and never logged; admin scope on every
`/admin` route; CORS off unless origins are listed; Triton's control plane on loopback and not reachable through
the `/v2` passthrough; secrets only from the environment or secret files; webhooks refused to private addresses.

The gateways here are real (uvicorn, real Triton and Redis); the chat route goes to the fake cloud LLM.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from gateway.auth import Authenticator
from gateway.config import ApiKeyConfig, GatewaySettings, hash_api_key, read_secret
from gateway.jobqueue.egress import PublicOnlyResolver, forbidden_address, refused_target
from gateway.routing.config import RoutesConfigError, load_routes
from stack.redis import RedisServer
from stack.triton import TritonDistribution, TritonOptions, TritonServer, server_argv
from tests.envelope import assert_envelope, assert_kserve_error, auth, full_gateway
from tests.fake_llm import FakeLLMServer, Fault
from tests.fixtures.gateway import GatewayKeys, RunningGateway, settings_for

MODEL = "minilm"


@pytest.fixture
def upstream(fake_llm_server: FakeLLMServer) -> FakeLLMServer:
    """The session's fake cloud LLM (tests/fixtures/fake_llm.py)."""
    return fake_llm_server


@pytest.fixture
def gw(gateway_factory: Callable[..., RunningGateway], triton_server: TritonServer, redis_server: RedisServer,
       gateway_keys: GatewayKeys, upstream: FakeLLMServer, tmp_path: Path) -> RunningGateway:
    return full_gateway(gateway_factory, triton_server, redis_server, gateway_keys, upstream, tmp_path)


# --- keys ------------------------------------------------------------------------------------------------------------


def test_keys_are_configured_only_as_digests(gateway_keys: GatewayKeys) -> None:
    with pytest.raises(ValidationError, match="never the key itself"):
        ApiKeyConfig(name="plain", sha256=gateway_keys.user)
    settings = GatewaySettings(api_keys=gateway_keys.config())
    dumped = settings.model_dump_json()
    assert gateway_keys.user not in dumped and gateway_keys.admin not in dumped
    assert hash_api_key(gateway_keys.user) in dumped


def test_keys_compared_in_constant_time(gateway_keys: GatewayKeys, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every configured digest is compared with hmac.compare_digest, whichever key (if any) matches."""
    keys = [*gateway_keys.config(), *(ApiKeyConfig(name=f"k{i}", sha256=hash_api_key(f"sk-{i}")) for i in range(8))]
    authenticator = Authenticator(GatewaySettings(api_keys=keys))
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for presented in (gateway_keys.user, "sk-7", "sk-unknown"):
        calls.clear()
        try:
            authenticator.authenticate(f"Bearer {presented}", "127.0.0.1")
        except Exception as exc:  # the unknown key: 401
            assert type(exc).__name__ == "AuthenticationError"
        assert len(calls) == len(keys)  # no early exit on a match
        assert all(a == hash_api_key(presented) for a, _ in calls)  # digests compared, never the raw key


def test_keys_never_logged(gw: RunningGateway, gateway_keys: GatewayKeys, upstream: FakeLLMServer,
                           caplog: pytest.LogCaptureFixture) -> None:
    """Valid, invalid and admin keys, the upstream's key, through successes, refusals and upstream failures."""
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-" + "7" * 32
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hello"}]}
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        for key in (gateway_keys.user, gateway_keys.admin, wrong):
            client.post("/v1/embeddings", json={"model": MODEL, "input": "log me not"}, headers=auth(key))
            client.post("/v1/embeddings", json={"model": "nope", "input": "x"}, headers=auth(key))
            client.post("/v1/chat/completions", json=chat, headers=auth(key))
            client.get("/admin/keys", headers=auth(key))
            client.get("/v1/models", headers={"Authorization": key})  # no "Bearer": still never logged
        upstream.state.fault("up-primary", Fault(status=500))
        failed = client.post("/v1/chat/completions", json=chat, headers=auth(gateway_keys.user))
        assert failed.status_code >= 500  # the only deployment failed: 502/503 envelope, and an error logged
        metrics = client.get("/metrics").text
    upstream.state.reset(api_key=upstream.state.api_key)
    logs = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    assert caplog.records, "expected the gateway to log something (audit lines, upstream failure)"
    secrets = (gateway_keys.user, gateway_keys.admin, wrong, upstream.state.api_key)
    for secret in secrets:
        assert secret not in logs
        assert secret not in metrics
    assert hash_api_key(gateway_keys.user) not in logs


# --- scopes ----------------------------------------------------------------------------------------------------------


def _admin_operations(gw: RunningGateway) -> list[tuple[str, str]]:
    paths = httpx.get(f"{gw.url}/openapi.json").json()["paths"]
    return [(method.upper(), path) for path, ops in paths.items() if path.startswith("/admin")
            for method in ops]


def test_every_admin_route_needs_the_admin_scope(gw: RunningGateway, gateway_keys: GatewayKeys) -> None:
    operations = _admin_operations(gw)
    assert len(operations) >= 4, operations
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        for method, path in operations:
            params = {"model": MODEL} if path == "/admin/cache" else None
            assert_envelope(client.request(method, path, params=params), 401, code="invalid_api_key")
            assert_envelope(client.request(method, path, params=params, headers=auth("sk-bad")), 401)
            error = assert_envelope(client.request(method, path, params=params, headers=auth(gateway_keys.user)), 403)
            assert error["code"] == "insufficient_scope"
            admin = client.request(method, path, params=params, headers=auth(gateway_keys.admin))
            assert admin.status_code in (200, 400, 404), (method, path, admin.text)  # 400/404: not configured


# --- CORS ------------------------------------------------------------------------------------------------------------


def _preflight(gw: RunningGateway, origin: str) -> httpx.Response:
    return httpx.options(f"{gw.url}/v1/embeddings", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})


def test_cors_is_off_by_default(gw: RunningGateway, gateway_keys: GatewayKeys) -> None:
    assert gw.settings.cors_origins == []
    preflight = _preflight(gw, "https://evil.example")
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code in (404, 405)
    simple = httpx.post(f"{gw.url}/v1/embeddings", json={"model": MODEL, "input": "hi"},
                        headers={**auth(gateway_keys.user), "Origin": "https://evil.example"})
    assert simple.status_code == 200
    assert not any(h.startswith("access-control-") for h in simple.headers)


def test_cors_is_opt_in_with_explicit_origins(
    gateway_factory: Callable[..., RunningGateway], redis_server: RedisServer, gateway_keys: GatewayKeys
) -> None:
    with pytest.raises(ValidationError, match="explicit"):
        settings_for(None, redis_server, gateway_keys, cors_origins=["*"])
    gw = gateway_factory(settings_for(None, redis_server, gateway_keys, cors_origins=["https://app.example"]))
    allowed = _preflight(gw, "https://app.example")
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-credentials" not in allowed.headers
    refused = _preflight(gw, "https://evil.example")
    assert "access-control-allow-origin" not in refused.headers
    probe = httpx.get(f"{gw.url}/healthz", headers={"Origin": "https://app.example"})
    assert "x-request-id" in probe.headers["access-control-expose-headers"]


# --- Triton's control plane ------------------------------------------------------------------------------------------


def test_launcher_binds_triton_to_loopback(tmp_path: Path) -> None:
    argv = server_argv(TritonDistribution.locate(), tmp_path, TritonOptions(repository=tmp_path))
    for flag in ("--http-address", "--grpc-address", "--metrics-address"):
        assert f"{flag}=127.0.0.1" in argv
    assert "--model-control-mode=explicit" in argv


def _external_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_running_triton_listens_on_loopback_only(triton_server: TritonServer) -> None:
    address = _external_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to probe from")
    opts = triton_server.opts
    for port in (opts.http_port, opts.grpc_port, opts.metrics_port):
        with socket.socket() as conn:
            conn.settimeout(2)
            assert conn.connect_ex((address, port)) != 0, f"Triton port {port} answers on {address}"
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v2/repository/index"), ("POST", f"/v2/repository/models/{MODEL}/load"),
    ("POST", f"/v2/repository/models/{MODEL}/unload"), ("POST", f"/v2/repository/models/{MODEL}/unload?x=1"),
    ("GET", f"/v2/models/{MODEL}/unload"), ("POST", f"/v2/models/{MODEL}/unload"), ("GET", f"/v2/models/{MODEL}/load"),
    ("POST", "/v2/logging"), ("GET", "/v2/logging"), ("POST", "/v2/trace/setting"), ("GET", "/v2/trace/setting"),
    ("POST", f"/v2/models/{MODEL}/trace/setting"), ("GET", "/v2/systemsharedmemory/status"),
    ("POST", "/v2/systemsharedmemory/region/x/register"), ("POST", "/v2/cudasharedmemory/region/x/unregister"),
    ("POST", f"/v2/models/{MODEL}/versions/1/unload"), ("POST", f"/v2/models/{MODEL}/generate"),
])
def test_passthrough_does_not_forward_triton_control(gw: RunningGateway, gateway_keys: GatewayKeys,
                                                     triton_server: TritonServer, method: str, path: str) -> None:
    resp = httpx.request(method, f"{gw.url}{path}", headers={**auth(gateway_keys.admin),
                                                             "content-type": "application/json"}, content=b"{}")
    assert_kserve_error(resp, (403, 404, 405))
    index = httpx.post(f"http://{triton_server.http_url}/v2/repository/index", json={}).json()
    assert {m["name"]: m.get("state") for m in index} == {MODEL: "READY"}


# --- secrets ---------------------------------------------------------------------------------------------------------


def test_secrets_come_from_env_or_secret_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TS_TEST_SECRET", raising=False)
    monkeypatch.delenv("TS_TEST_SECRET_FILE", raising=False)
    assert read_secret("TS_TEST_SECRET") is None
    secret_file = tmp_path / "secret"
    secret_file.write_text("sk-from-file\n", encoding="utf-8")
    monkeypatch.setenv("TS_TEST_SECRET_FILE", str(secret_file))
    assert read_secret("TS_TEST_SECRET") == "sk-from-file"
    monkeypatch.setenv("TS_TEST_SECRET", "sk-from-env")
    assert read_secret("TS_TEST_SECRET") == "sk-from-env"  # the variable wins over the file


def test_routes_file_refuses_inline_upstream_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("deployments:\n  p: {kind: openai, base_url: 'http://127.0.0.1:9/v1', model: m, "
                      "api_key: sk-inline-secret}\nroutes:\n  chat: {deployments: [p]}\n", encoding="utf-8")
    with pytest.raises(RoutesConfigError, match="api_key must not be written in the routes file") as info:
        load_routes(routes)
    assert "sk-inline-secret" not in str(info.value)
    key_file = tmp_path / "upstream-key"
    key_file.write_text("sk-upstream-from-file", encoding="utf-8")
    monkeypatch.delenv("TS_TEST_UPSTREAM_KEY", raising=False)
    monkeypatch.setenv("TS_TEST_UPSTREAM_KEY_FILE", str(key_file))
    routes.write_text("deployments:\n  p: {kind: openai, base_url: 'http://127.0.0.1:9/v1', model: m, "
                      "api_key_env: TS_TEST_UPSTREAM_KEY}\nroutes:\n  chat: {deployments: [p]}\n", encoding="utf-8")
    deployment = load_routes(routes).deployments["p"]
    assert deployment.api_key.get_secret_value() == "sk-upstream-from-file"  # type: ignore[union-attr]
    assert "sk-upstream-from-file" not in repr(deployment)


# --- webhook SSRF ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:6379/", "http://localhost/hook", "http://api.localhost/x", "http://[::1]/", "http://0.0.0.0/",
    "http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/", "http://192.168.0.1/", "http://172.16.0.1/",
    "http://100.64.0.1/", "http://[::ffff:127.0.0.1]/", "http://[fe80::1]/", "https://224.0.0.1/",
])
def test_webhooks_to_private_addresses_are_refused(gw: RunningGateway, gateway_keys: GatewayKeys, url: str) -> None:
    body = {"type": "embeddings", "model": MODEL, "input": ["hi"], "webhook": {"url": url}}
    resp = httpx.post(f"{gw.url}/v1/jobs", json=body, headers=auth(gateway_keys.user))
    assert_envelope(resp, 400, param="webhook.url", code="webhook_url_not_allowed")


def test_webhooks_to_public_addresses_are_accepted(gw: RunningGateway, gateway_keys: GatewayKeys) -> None:
    body = {"type": "embeddings", "model": MODEL, "input": ["hi"],
            "webhook": {"url": "https://hooks.example.com/tritonstack"}}
    resp = httpx.post(f"{gw.url}/v1/jobs", json=body, headers=auth(gateway_keys.user))
    assert resp.status_code == 202, resp.text  # queued on the fixture's private queue (no worker consumes it)
    httpx.delete(f"{gw.url}/v1/jobs/{resp.json()['id']}", headers=auth(gateway_keys.user))


async def test_worker_resolver_drops_private_addresses() -> None:
    """The worker's webhook client resolves names to public addresses only (loopback names fail to connect)."""
    resolver = PublicOnlyResolver()
    try:
        with pytest.raises(OSError, match="private or reserved"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()
    assert refused_target("http://8.8.8.8/") is None and refused_target("https://example.com/") is None
    assert forbidden_address(ipaddress.ip_address("::ffff:10.0.0.1"))
