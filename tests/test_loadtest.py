"""Load testing: a short headless Locust run against a real gateway, the SLO gate's exit codes, pure helpers.

Locust monkey-patches the standard library when imported, so runs go through `tritonstack loadtest` in a child
process and the in-process unit tests import Locust-based modules with the patch switched off.
"""

from __future__ import annotations

import base64
import importlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from gateway.config import GatewaySettings, hash_api_key
from loadtest.slo import RunSummary, SloError, evaluate, parse_slo, with_defaults
from stack.redis import RedisServer
from stack.triton import TritonServer
from tests.fixtures.gateway import GatewayKeys, RunningGateway, settings_for, start_gateway

CLI = Path(sys.executable).parent / "tritonstack"


@pytest.fixture(scope="module")
def load_gateway(triton_server: TritonServer, redis_server: RedisServer, gateway_keys: GatewayKeys
                 ) -> Iterator[RunningGateway]:
    """A gateway whose rate limits do not get in the way of the load."""
    gw = start_gateway(settings_for(triton_server, redis_server, gateway_keys,
                                    requests_per_minute=1_000_000, tokens_per_minute=1_000_000_000))
    try:
        yield gw
    finally:
        gw.stop()


def loadtest(gw: RunningGateway, key: str, out: Path, duration: str, slo: str | None,
             scenario: str = "embeddings_cold") -> subprocess.CompletedProcess[str]:
    """`tritonstack loadtest` with 4 users; `slo=None` leaves out `--slo`."""
    argv = [str(CLI), "loadtest", scenario, "--host", gw.url, "--users", "4", "--spawn-rate", "4",
            "--duration", duration, "--out", str(out), *(["--slo", slo] if slo is not None else [])]
    return subprocess.run(argv, env={"PATH": str(CLI.parent) + ":/usr/bin:/bin", "TRITONSTACK_API_KEY": key},
                          capture_output=True, text=True, timeout=120, check=False)


def only_run(out: Path) -> Path:
    (folder,) = out.iterdir()
    return folder


def test_headless_run_passes_reasonable_slo(load_gateway: RunningGateway, gateway_keys: GatewayKeys,
                                            tmp_path: Path) -> None:
    proc = loadtest(load_gateway, gateway_keys.user, tmp_path, "6s", "fail_ratio=0,p99_ms=5000,min_requests=20")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    folder = only_run(tmp_path)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["aggregate"]["failures"] == 0, summary["errors"]
    assert summary["aggregate"]["requests"] >= 20
    assert (folder / "report.html").stat().st_size > 0
    assert "Aggregated" in (folder / "stats_stats.csv").read_text()
    assert "SLOs met" in proc.stdout


def test_impossible_slo_fails_the_run(load_gateway: RunningGateway, gateway_keys: GatewayKeys,
                                      tmp_path: Path) -> None:
    proc = loadtest(load_gateway, gateway_keys.user, tmp_path, "2s", "p95_ms=0.001,fail_ratio=0")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "SLO missed" in proc.stdout


def test_wrong_key_is_aborted_by_watchdog_or_gate(load_gateway: RunningGateway, tmp_path: Path) -> None:
    proc = loadtest(load_gateway, "sk-wrong", tmp_path, "3s", "fail_ratio=0")
    assert proc.returncode in (1, 3), proc.stdout + proc.stderr
    assert json.loads((only_run(tmp_path) / "summary.json").read_text())["aggregate"]["failures"] > 0


# every fourth request asks for a model the gateway does not serve: about a quarter of requests fail
QUARTER_FAILS = """
import itertools

from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser

from loadtest import tasks
from loadtest.common import headers, unique_sentence

sent = itertools.count()


class QuarterFailsUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def embed(self) -> None:
        if next(sent) % 4 != 3:
            tasks.embeddings(self, [unique_sentence()], name="embeddings")
            return
        payload = {"model": "no-such-model", "input": ["x"]}
        with self.client.post("/v1/embeddings", json=payload, headers=headers(self.environment),
                              name="unknown model", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
"""


@pytest.fixture
def quarter_fails(tmp_path: Path) -> str:
    """A locustfile whose runs fail about a quarter of their requests (below the watchdog's ratio)."""
    path = tmp_path / "locustfiles" / "quarter_fails.py"
    path.parent.mkdir()
    path.write_text(QUARTER_FAILS)
    return str(path)


def fail_ratio(out: Path) -> float:
    aggregate = json.loads((only_run(out) / "summary.json").read_text())["aggregate"]
    return aggregate["failures"] / aggregate["requests"]


def test_failed_requests_fail_a_run_without_slo(load_gateway: RunningGateway, gateway_keys: GatewayKeys,
                                               quarter_fails: str, tmp_path: Path) -> None:
    proc = loadtest(load_gateway, gateway_keys.user, tmp_path / "runs", "3s", None, scenario=quarter_fails)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 0.1 < fail_ratio(tmp_path / "runs") < 0.5
    assert "SLO missed" in proc.stdout and "SLOs met" not in proc.stdout
    assert "--slo sets no fail_ratio (default 0), so the run fails" in proc.stdout
    assert "rate_limit_exceeded" not in proc.stdout  # a 404 is not blamed on the key's limit


def test_fail_ratio_slo_allows_failed_requests(load_gateway: RunningGateway, gateway_keys: GatewayKeys,
                                               quarter_fails: str, tmp_path: Path) -> None:
    proc = loadtest(load_gateway, gateway_keys.user, tmp_path / "runs", "3s", "fail_ratio=0.5",
                    scenario=quarter_fails)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fail_ratio(tmp_path / "runs") > 0.1
    assert "SLOs met" in proc.stdout and "sets no fail_ratio" not in proc.stdout


StartGateway = Callable[[GatewaySettings], RunningGateway]


def test_key_limit_refusals_are_named_with_the_fix(triton_server: TritonServer, redis_server: RedisServer,
                                                   gateway_keys: GatewayKeys, gateway_factory: StartGateway,
                                                   tmp_path: Path) -> None:
    gw = gateway_factory(settings_for(triton_server, redis_server, gateway_keys, requests_per_minute=20))
    proc = loadtest(gw, gateway_keys.user, tmp_path, "5s", None)
    assert proc.returncode == 3, proc.stdout + proc.stderr  # the watchdog stops a run its key cannot make
    summary = json.loads((only_run(tmp_path) / "summary.json").read_text())
    requests, limited = summary["aggregate"]["requests"], summary["rate_limited"]
    assert limited > summary["aggregate"]["failures"] / 2
    (line,) = [line for line in proc.stdout.splitlines() if "by the gateway's per-key rate limit" in line]
    assert line.startswith(f"{100 * limited / requests:.0f} % of requests were refused with 429 rate_limit_exceeded")
    assert "requests_per_minute" in line and "TRITONSTACK_GATEWAY_API_KEYS" in line and "tritonstack up" in line


def test_up_gives_its_development_key_load_test_limits(tmp_path: Path) -> None:
    from gateway.ratelimit.policy import key_limits
    from stack.gateway import gateway_env
    from stack.up import StackOptions, gateway_settings

    env = gateway_env(gateway_settings(StackOptions(repository=tmp_path, state_dir=tmp_path), "ts-dev-test"))
    settings = GatewaySettings(api_keys=json.loads(env["TRITONSTACK_GATEWAY_API_KEYS"]))
    (dev_key,) = settings.api_keys
    assert dev_key.sha256 == hash_api_key("ts-dev-test") and dev_key.scopes == {"admin"}
    default, overrides = key_limits(settings)
    assert (default.requests_per_min, default.tokens_per_min) == (600, 1_000_000)  # other keys keep the default
    # a local load test runs Triton flat out: the development key must not be what limits it
    dev = overrides["key:dev"]
    assert dev.requests_per_min >= 100 * default.requests_per_min
    assert dev.tokens_per_min >= 100 * default.tokens_per_min


# --- slo.py ---------------------------------------------------------------------------------------------


def summary(**overrides: float) -> RunSummary:
    values = {"requests": 1000, "failures": 5, "rps": 100.0, "p50_ms": 10.0, "p95_ms": 40.0, "p99_ms": 90.0}
    values.update(overrides)
    return RunSummary(**values)  # type: ignore[arg-type]


def test_parse_slo() -> None:
    assert parse_slo("p95_ms=200, p99_ms=500,fail_ratio=0.01,min_rps=50") == {
        "p95_ms": 200.0, "p99_ms": 500.0, "fail_ratio": 0.01, "min_rps": 50.0}
    assert parse_slo("") == {}
    for bad in ("p95=1", "p95_ms", "p95_ms=fast", "fail_ratio=2", "min_rps=-1"):
        with pytest.raises(SloError):
            parse_slo(bad)


def test_evaluate_passes_and_misses() -> None:
    assert evaluate(summary(), parse_slo("p95_ms=40,p99_ms=100,fail_ratio=0.005,min_rps=100")).passed
    verdict = evaluate(summary(), parse_slo("p95_ms=39,fail_ratio=0.001,min_rps=101,p99_ms=100"))
    assert [c.key for c in verdict.checks if not c.passed] == ["p95_ms", "fail_ratio", "min_rps"]
    assert not verdict.passed


def test_evaluate_empty_or_aborted_run_fails() -> None:
    assert not evaluate(summary(requests=0, failures=0), {}).passed
    assert not evaluate(RunSummary(10, 0, 1.0, 1.0, 1.0, 1.0, aborted=True), {}).passed


def test_default_gate_allows_no_failed_request() -> None:
    assert with_defaults({}) == {"fail_ratio": 0.0}
    assert not evaluate(summary(), with_defaults({"p95_ms": 100})).passed
    assert evaluate(summary(failures=0), with_defaults({})).passed
    assert evaluate(summary(), with_defaults({"fail_ratio": 0.01})).passed


def test_summary_from_json() -> None:
    data = {"aggregate": {"requests": 10, "failures": 1, "rps": 5.0, "p50_ms": 1, "p95_ms": 2, "p99_ms": 3},
            "custom": {}, "aborted": False}
    assert RunSummary.from_json(data).fail_ratio == pytest.approx(0.1)


# --- shapes.py and response validation (Locust imported without its monkey patch) --------------------


@pytest.fixture
def unpatched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCUST_SKIP_MONKEY_PATCH", "1")


def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


def test_shapes(unpatched: None) -> None:
    shapes = _module("loadtest.shapes")
    p = shapes.ShapeParams(users=10, spawn_rate=2, duration=40, steps=4, base=0.2)
    assert [shapes.target("step", t, p)[0] for t in (0, 10, 20, 39)] == [3, 5, 8, 10]
    assert [shapes.target("spike", t, p)[0] for t in (0, 16, 23, 24)] == [2, 10, 10, 2]
    assert shapes.target("spike", 16, p)[1] >= 10  # the spike arrives at once
    assert shapes.target("soak", 39, p) == (10, 2)
    assert shapes.target("soak", 40, p) is None


def test_response_validation(unpatched: None) -> None:
    tasks = _module("loadtest.tasks")
    vec = [0.0] * 384
    good = {"object": "list", "data": [{"index": i, "embedding": vec} for i in range(2)],
            "usage": {"prompt_tokens": 7, "total_tokens": 7}}
    tasks.check_embeddings(good, 2, 384)
    b64 = {**good, "data": [{"index": 0, "embedding": base64.b64encode(bytes(384 * 4)).decode()}]}
    tasks.check_embeddings(b64, 1, 384)
    swapped = {**good, "data": list(reversed(good["data"]))}
    short = {**good, "data": [{"index": 0, "embedding": vec[:10]}, good["data"][1]]}
    no_usage = {**good, "usage": {"prompt_tokens": 0, "total_tokens": 0}}
    for bad in (swapped, short, no_usage, {**good, "data": good["data"][:1]}):
        with pytest.raises(tasks.InvalidAnswerError):
            tasks.check_embeddings(bad, 2, 384)


def test_parse_sse(unpatched: None) -> None:
    tasks = _module("loadtest.tasks")
    lines = ['data: {"choices":[{"delta":{"content":"Hi"}}]}', "", 'data: {"usage":{"completion_tokens":1}}',
             "data: [DONE]"]
    chunks, done = tasks.parse_sse(lines)
    assert done and len(chunks) == 2
    assert tasks.parse_sse(lines[:2]) == ([{"choices": [{"delta": {"content": "Hi"}}]}], False)


# --- bench plots ------------------------------------------------------------------------------------------


def test_plots_from_saved_series(tmp_path: Path) -> None:
    from loadtest.bench import plots
    from loadtest.wrk import WrkResult

    def result(c: int, rps: float) -> WrkResult:
        return WrkResult(connections=c, requests=int(rps * 5), duration_s=5.0, errors=0, non2xx=0,
                         p50_ms=c * 1.0, p95_ms=c * 2.0, p99_ms=c * 3.0)

    runs = {"a": {c: [result(c, 100.0 * c), result(c, 300.0 * c)] for c in (1, 8, 32)}}
    series = plots.from_wrk_runs(runs)
    assert [p["rps"] for p in series["a"]] == [200.0, 1600.0, 6400.0]
    plots.save_series(tmp_path, "one", series)
    (tmp_path / "unrelated.json").write_text("[1, 2]")
    assert list(plots.load_all(tmp_path)) == ["one: a"]
    paths = plots.draw(tmp_path)
    assert [p.name for p in paths] == ["throughput.png", "latency.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


# --- the CLI layer without running Locust ---------------------------------------------------------------


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tritonstack.cli import app

    runner = CliRunner()
    for args in (["embeddings_cold", "--slo", "p95=1"], ["no_such_scenario"], ["mix", "--duration", "soon"],
                 ["mix", "--shape", "wave"]):
        result = runner.invoke(app, ["loadtest", *args, "--out", str(tmp_path)])
        assert result.exit_code == 2, (args, result.output)
    assert not list(tmp_path.iterdir())


def test_locust_command_line(tmp_path: Path) -> None:
    from loadtest.run import LoadTestOptions, duration_seconds, locust_argv, run_folder, scenario_names

    assert {"embeddings_cold", "embeddings_hot", "embeddings_batches", "chat", "jobs", "mix"} <= set(scenario_names())
    assert [duration_seconds(t) for t in ("90", "90s", "2m", "1h30m")] == [90, 90, 120, 5400]
    opts = LoadTestOptions("embeddings-hot", "http://h:1", 3, 1.5, "1m", tmp_path, api_key="sk-secret", shape="spike")
    argv = locust_argv(opts, tmp_path)
    assert argv[argv.index("-f") + 1].endswith("scenarios/embeddings_hot.py," + str(Path("loadtest/shapes.py")
                                                                                    .resolve()))
    assert argv[argv.index("-t") + 1] == "60s" and argv[-2:] == ["--shape", "spike"]
    assert "sk-secret" not in " ".join(argv)
    assert run_folder(tmp_path, "mix") != run_folder(tmp_path, "mix")
