"""`tritonstack triton`: the bundled server starts, answers, and Ctrl-C leaves no server, stub or shared-memory
region behind."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from stack import shm
from stack.process import free_port
from stack.triton import TritonDistribution, TritonNotInstalledError


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_cli_serves_the_repository_and_ctrl_c_stops_everything(minilm_repository: Path, tmp_path: Path) -> None:
    http, grpc, metrics = free_port(), free_port(), free_port()
    cli = Path(sys.executable).parent / "tritonstack"
    argv = [
        str(cli),
        "triton",
        "--repository",
        str(minilm_repository),
        "--http-port",
        str(http),
        "--grpc-port",
        str(grpc),
        "--metrics-port",
        str(metrics),
        "--state-dir",
        str(tmp_path / "state"),
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert proc.stdout is not None
        banner = b""
        while b"Ctrl-C stops it" not in banner and proc.poll() is None:
            banner += proc.stdout.readline()
        assert proc.poll() is None, banner.decode()
        assert _ready(http)
        server = next(p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "tritonserver")
        stubs = [p for p in server.children(recursive=True) if "triton_python_backend_stub" in " ".join(p.cmdline())]
        assert stubs, "the python model runs in a backend stub process"
        regions = shm.mapped_by([server.pid, *(p.pid for p in stubs)])
        assert regions and all((shm.SHM_DIR / name).exists() for name in regions)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=2) as resp:
            assert b"nv_inference_count" in resp.read()

        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(timeout=60) == 0
        watched = [server, *stubs]
        assert _wait(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in watched), 10)
        assert not _ready(http)
        assert not any((shm.SHM_DIR / name).exists() for name in regions), "Ctrl-C leaves no shared memory"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_missing_stub_for_this_python_is_a_clear_error(tmp_path: Path) -> None:
    real = TritonDistribution.locate()
    fake = tmp_path / "tritonserver"
    shutil.copytree(real.root, fake, symlinks=True, ignore=shutil.ignore_patterns("python_backend_stubs"))
    (fake / "python_backend_stubs" / "3.8").mkdir(parents=True)
    with pytest.raises(TritonNotInstalledError, match=r"needs its own backend stub; stubs shipped: 3\.8"):
        TritonDistribution(fake).checked()
