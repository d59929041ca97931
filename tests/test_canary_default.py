"""Safe canaries by default, on a real tritonserver, gateways and Redis: loading a version moves no traffic;
`tritonstack model load|unload` serve and retire versions; `tritonstack model promote` refuses a rollouts file that
no running gateway reads, and moves traffic through the one that does.

Triton starts with version 1 of the exported MiniLM serving and version 2 in its repository (a hard-linked copy,
same weights), so versions are told apart by the `x-tritonstack-model-version` response header and Triton's own
per-version statistics. The tests share one stack and run in file order, like an operator's walkthrough:
load 2 → (refused promotes) → promote 5 → rollback → promote 100; then a model exported after Triton started.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from export.cli import next_step
from export.config import render, validate
from gateway.config import ApiKeyConfig, hash_api_key
from gateway.rollout.config import RolloutsConfig, load_rollouts
from gateway.rollout.service import VERSION_HEADER
from stack.process import free_port
from stack.redis import RedisServer
from stack.triton import TritonServer
from stack.up import ROLLOUTS_ENV, StackOptions, ensure_rollouts_file, gateway_settings, rollouts_path
from tests.fixtures.gateway import GatewayKeys, RunningGateway, settings_for, start_gateway
from tests.fixtures.servers import start_triton, two_version_repository
from tritonstack.cli import app as cli
from tritonstack.model_cli import DEFAULT_ROLLOUTS_FILE
from tritonstack.model_load import load
from tritonstack.rollout import RolloutError, RolloutPlan

MODEL = "minilm"
KEYS = 200


def caller_key(i: int) -> str:
    """The i-th test caller's API key (deterministic: the same split on every run)."""
    return f"sk-default-{i:04d}"


@dataclass
class Stack:
    """Triton (version 1 serving, 2 in the repository); `reader` reads `rollouts_file`, `plain` reads none."""

    repository: Path
    triton: TritonServer
    reader: RunningGateway
    plain: RunningGateway
    rollouts_file: Path
    admin_key: str

    def cli(self, *args: str, exit_code: int = 0) -> str:
        """`tritonstack model …` in-process against this stack's Triton; its output, whitespace-normalised."""
        result = CliRunner().invoke(cli, ["model", *args, "--triton", self.triton.grpc_url])
        assert result.exit_code == exit_code, result.output
        return " ".join(result.output.split())

    def promote(self, *args: str, exit_code: int = 0) -> str:
        return self.cli("promote", MODEL, *args, "--drain-s", "0", exit_code=exit_code)

    def through_reader(self) -> tuple[str, ...]:
        """Options that point a rollout at the rollouts file the `reader` gateway reads."""
        return ("--rollouts-file", str(self.rollouts_file), "--gateway", self.reader.url, "--admin-key",
                self.admin_key)

    def stats(self) -> dict[str, int]:
        """Triton's inference count per loaded version of the model."""
        body = httpx.get(f"http://{self.triton.http_url}/v2/models/{MODEL}/stats", timeout=10).json()
        return {s["version"]: int(s.get("inference_count", 0)) for s in body["model_stats"]}

    def ready_versions(self, model: str = MODEL) -> list[str]:
        index = httpx.post(f"http://{self.triton.http_url}/v2/repository/index", json={"ready": True}, timeout=10)
        return sorted(m["version"] for m in index.json() if m["name"] == model and m.get("state") == "READY")


@pytest.fixture(scope="module")
def stack(minilm_repository: Path, redis_server: RedisServer, gateway_keys: GatewayKeys,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("canary")
    repository = two_version_repository(minilm_repository, root / "repository")
    triton = start_triton(repository, root / "state")
    keys = gateway_keys.config() + [ApiKeyConfig(name=f"caller-{i:04d}", sha256=hash_api_key(caller_key(i)))
                                    for i in range(KEYS)]
    rollouts_file = root / "rollouts.yaml"
    settings = settings_for(triton, redis_server, gateway_keys, api_keys=keys, rate_limit_enabled=False,
                            jobs_enabled=False)
    gateways: list[RunningGateway] = []
    try:
        gateways.append(start_gateway(settings.model_copy(update={"rollouts_file": rollouts_file})))
        gateways.append(start_gateway(settings))
        yield Stack(repository, triton, gateways[0], gateways[1], rollouts_file, gateway_keys.admin)
    finally:
        for gateway in gateways:
            gateway.stop()
        triton.stop()


def embed(gateway: RunningGateway, callers: range, text: str, model: str = MODEL,
          headers: dict[str, str] | None = None) -> list[httpx.Response]:
    """One POST /v1/embeddings per caller (no cache: every request reaches Triton)."""
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        return [client.post("/v1/embeddings", json={"model": model, "input": f"{text} {i}"},
                            headers={"authorization": f"Bearer {caller_key(i)}", "cache-control": "no-store",
                                     **(headers or {})})
                for i in callers]


def served(responses: list[httpx.Response]) -> Counter[str]:
    """How many responses each version served (all must be 200)."""
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200][:3]
    return Counter(r.headers[VERSION_HEADER] for r in responses)


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {v: after[v] - before.get(v, 0) for v in after}


# --- unit level ------------------------------------------------------------------------------------------------


def test_up_gives_its_gateway_the_rollouts_file_the_cli_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.delenv(ROLLOUTS_ENV, raising=False)
    opts = StackOptions(repository=tmp_path / "repository", state_dir=tmp_path / "state")
    expected = str((tmp_path / "state" / "rollouts.yaml").resolve())
    assert gateway_settings(opts, "ts-dev-key")["rollouts_file"] == expected
    ensure_rollouts_file(opts)
    assert load_rollouts(rollouts_path(opts), missing_ok=False) == RolloutsConfig()
    # `tritonstack model …` defaults to the file of `tritonstack up`'s default state directory
    assert rollouts_path(StackOptions(repository=Path("model_repository"), state_dir=Path(".tritonstack"))) \
        == DEFAULT_ROLLOUTS_FILE
    monkeypatch.setenv(ROLLOUTS_ENV, str(tmp_path / "elsewhere.yaml"))  # the operator's setting wins
    assert "rollouts_file" not in gateway_settings(opts, "ts-dev-key")


def test_export_names_the_command_that_serves_the_new_version(tmp_path: Path) -> None:
    (tmp_path / MODEL / "1").mkdir(parents=True)
    assert "`tritonstack up`" in next_step(tmp_path, MODEL, 1)
    (tmp_path / MODEL / "2").mkdir()
    hint = next_step(tmp_path, MODEL, 2)
    assert "`tritonstack model load minilm --version 2`" in hint and "traffic stays" in hint
    assert "`tritonstack model promote minilm 2 --weight 5`" in hint
    assert "--weight 100" in next_step(tmp_path, MODEL, 2, generation=True)


class _GenerationTriton:
    """A Triton serving version 1 of a decoupled (generation) model; records loads."""

    url = "fake:8001"

    def __init__(self) -> None:
        self.loads: list[set[str]] = []

    def ready_versions(self, model: str) -> list[str]:
        return ["1"]

    def decoupled(self, model: str) -> bool:
        return True

    def serve(self, model: str, versions: set[str]) -> None:
        self.loads.append(set(versions))


def test_load_refuses_to_move_chat_traffic_to_a_newer_generation_version(tmp_path: Path) -> None:
    triton = _GenerationTriton()
    plan = RolloutPlan([triton], tmp_path / "rollouts.yaml", say=lambda _: None)  # type: ignore[list-item]
    with pytest.raises(RolloutError, match=r"promote smollm2 2 --weight 100"):
        load(plan, "smollm2", "2")
    assert triton.loads == [] and not (tmp_path / "rollouts.yaml").exists()


# --- real stack, in order ----------------------------------------------------------------------------------------


def test_model_load_serves_the_new_version_and_traffic_stays(stack: Stack) -> None:
    assert stack.ready_versions() == ["1"]
    assert set(served(embed(stack.reader, range(5), "before the load"))) == {"1"}
    output = stack.cli("load", MODEL, "--repository", str(stack.repository), "--rollouts-file",
                       str(stack.rollouts_file))
    assert "traffic stays on version 1" in output, output
    assert stack.ready_versions() == ["1", "2"]
    rollout = load_rollouts(stack.rollouts_file).models[MODEL]  # the serving version, recorded
    assert (rollout.stable_version, rollout.versions) == ("1", {"1": 100})

    before = stack.stats()
    assert served(embed(stack.reader, range(KEYS), "after the load")) == {"1": KEYS}
    assert delta(before, stack.stats()) == {"1": KEYS, "2": 0}
    pinned = embed(stack.reader, range(1), "pinned", headers={VERSION_HEADER: "2"})
    assert served(pinned) == {"2": 1}  # version 2 answers: it is loaded, it just takes no traffic
    refused = stack.cli("unload", MODEL, "--version", "1", "--rollouts-file", str(stack.rollouts_file),
                        exit_code=1)
    assert "version 1 of 'minilm' takes traffic" in refused


def test_a_gateway_started_with_two_versions_and_no_rollout_stays_on_the_oldest(stack: Stack) -> None:
    assert stack.ready_versions() == ["1", "2"]
    restarted = start_gateway(stack.plain.settings)  # no rollouts file: no rollout entry for the model
    try:
        before = stack.stats()
        assert served(embed(restarted, range(50), "restarted")) == {"1": 50}
        body = {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["over /v2"]}]}
        reply = httpx.post(f"{restarted.url}/v2/models/{MODEL}/infer", json=body, timeout=30,
                           headers={"authorization": f"Bearer {caller_key(0)}"})
        assert reply.status_code == 200 and reply.headers[VERSION_HEADER] == "1"
        assert reply.json()["model_version"] == "1"
        assert delta(before, stack.stats()) == {"1": 51, "2": 0}
    finally:
        restarted.stop()


def test_promote_refuses_when_no_gateway_reads_the_file(stack: Stack) -> None:
    other = stack.rollouts_file.parent / "other-rollouts.yaml"
    recorded = stack.rollouts_file.read_text()
    read_elsewhere = stack.promote("2", "--weight", "5", "--rollouts-file", str(other), "--gateway", stack.reader.url,
                                   "--admin-key", stack.admin_key, exit_code=1)
    assert f"reads {stack.rollouts_file.resolve()} (its TRITONSTACK_GATEWAY_ROLLOUTS_FILE), not {other.resolve()}" \
        in read_elsewhere
    reads_none = stack.promote("2", "--weight", "5", "--rollouts-file", str(stack.rollouts_file), "--gateway",
                               stack.plain.url, "--admin-key", stack.admin_key, exit_code=1)
    assert "reads no rollouts file (TRITONSTACK_GATEWAY_ROLLOUTS_FILE is not set there)" in reads_none
    nobody = stack.promote("2", "--weight", "5", "--rollouts-file", str(stack.rollouts_file), "--gateway",
                           f"http://127.0.0.1:{free_port()}", "--admin-key", stack.admin_key, exit_code=1)
    assert "no gateway answers at" in nobody and "--no-gateway-check" in nobody
    assert not other.exists() and stack.rollouts_file.read_text() == recorded  # nothing was written
    assert stack.ready_versions() == ["1", "2"]

    # for a gateway that picks the file up later, the check can be skipped
    written = stack.promote("2", "--weight", "5", "--rollouts-file", str(other), "--no-gateway-check")
    assert "version 1 95%, version 2 5%" in written
    assert load_rollouts(other).models[MODEL].versions == {"1": 95, "2": 5}


def test_promote_5_rollback_and_100_move_traffic_through_the_file_the_gateway_reads(stack: Stack) -> None:
    before = stack.stats()
    assert "version 1 95%, version 2 5%" in stack.promote("2", "--weight", "5", *stack.through_reader())
    split = served(embed(stack.reader, range(KEYS), "canary at 5"))
    assert 1 <= split["2"] <= 25 and split["1"] + split["2"] == KEYS, split
    assert delta(before, stack.stats()) == {"1": split["1"], "2": split["2"]}

    assert "rolled back to version 1" in stack.cli("rollback", MODEL, "--drain-s", "0", *stack.through_reader())
    assert served(embed(stack.reader, range(KEYS), "rolled back")) == {"1": KEYS}
    assert stack.ready_versions() == ["1"]

    assert "version 2 100%" in stack.promote("2", "--weight", "100", *stack.through_reader())
    assert served(embed(stack.reader, range(KEYS), "promoted")) == {"2": KEYS}
    assert stack.ready_versions() == ["2"]


def test_model_load_serves_a_model_exported_after_triton_started(stack: Stack) -> None:
    name = "minilm_b"
    target = stack.repository / name
    shutil.copytree(stack.repository / MODEL, target, copy_function=os.link, ignore=shutil.ignore_patterns("1"))
    config = validate((target / "config.pbtxt").read_text())
    (target / "config.pbtxt").unlink()  # a hard link: never write through it
    config.name = name
    config.version_policy.Clear()
    config.version_policy.latest.num_versions = 1
    (target / "config.pbtxt").write_text(render(config))
    unknown = embed(stack.reader, range(1), "not yet", model=name)[0]
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"

    output = stack.cli("load", name, "--repository", str(stack.repository), "--rollouts-file",
                       str(stack.rollouts_file))
    assert "'minilm_b': version 2 loaded and serving" in output, output
    assert stack.ready_versions(name) == ["2"]
    deadline = time.monotonic() + 10
    while (answer := embed(stack.reader, range(1), "now served", model=name)[0]).status_code != 200:
        assert time.monotonic() < deadline, answer.text  # the gateway's cached "unknown" expires within 0.5 s
    assert answer.headers[VERSION_HEADER] == "2" and len(answer.json()["data"][0]["embedding"]) == 384

    assert "takes traffic" in stack.cli("unload", name, "--version", "2", "--rollouts-file",
                                        str(stack.rollouts_file), exit_code=1)
    assert "'minilm_b' unloaded" in stack.cli("unload", name, "--rollouts-file", str(stack.rollouts_file))
    assert stack.ready_versions(name) == []
