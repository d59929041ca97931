"""A restarted stack keeps traffic where it was: `tritonstack up` restores the versions its rollouts file names.

A restarted Triton loads each model as its `config.pbtxt` says — export writes `latest { num_versions: 1 }`, the
newest version only — so without the restore a version exported since the last start would take all traffic.
Here the repository holds versions 1 and 2 of MiniLM with that policy, as after `tritonstack export minilm`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from tritonclient.grpc.model_config_pb2 import ModelConfig

from gateway.rollout.config import ModelRollout, RolloutsConfig, load_rollouts, write_rollouts
from stack.up import ROLLOUTS_ENV, StackOptions, start_stack
from tests.fixtures.servers import repository_variant
from tritonstack.cli import _restore_versions
from tritonstack.rollout import TritonControl


def _newest_only(cfg: ModelConfig) -> None:
    cfg.instance_group[0].count = 1
    del cfg.model_warmup[:]
    cfg.version_policy.Clear()
    cfg.version_policy.latest.num_versions = 1


@pytest.fixture
def exported_twice(minilm_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Versions 1 and 2 of minilm (hard links, same weights), the policy export writes."""
    monkeypatch.delenv(ROLLOUTS_ENV, raising=False)
    repository = repository_variant(minilm_repository, tmp_path / "model_repository", "minilm", _newest_only)
    shutil.copytree(repository / "minilm" / "1", repository / "minilm" / "2", copy_function=os.link)
    return repository


def _start_triton_only(repository: Path, state_dir: Path) -> list[str]:
    """Triton as `tritonstack up` starts it (with the restore); the versions of minilm it serves then."""
    opts = StackOptions.on_free_ports(repository, state_dir, redis=False, worker=False, gateway=False,
                                      models=["minilm"], after_triton=_restore_versions)
    with start_stack(opts) as stack:
        assert stack.triton is not None
        control = TritonControl(stack.triton.grpc_url)
        try:
            return control.ready_versions("minilm")
        finally:
            control.close()


def test_a_restart_serves_the_stable_version_again(exported_twice: Path, tmp_path: Path) -> None:
    """The file says version 1 is stable: after the restart 1 is back beside 2, which takes no traffic."""
    state = tmp_path / "state"
    state.mkdir()
    rollouts = RolloutsConfig(models={"minilm": ModelRollout(versions={"1": 100}, stable="1")})
    write_rollouts(state / "rollouts.yaml", rollouts)
    assert _start_triton_only(exported_twice, state) == ["1", "2"]
    assert load_rollouts(state / "rollouts.yaml") == rollouts  # the restore never rewrites a listed model


def test_a_first_start_records_what_serves(exported_twice: Path, tmp_path: Path) -> None:
    """No entry yet: the version serving at start becomes the stable one, so the next export cannot take over."""
    state = tmp_path / "state"
    assert _start_triton_only(exported_twice, state) == ["2"]
    recorded = load_rollouts(state / "rollouts.yaml").models["minilm"]
    assert recorded.stable_version == "2" and recorded.versions == {"2": 100}
