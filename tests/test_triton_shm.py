"""Issue 23: a stopped Triton leaves no python-backend shared-memory region behind (stopped cleanly, or killed and
cleaned up by the next start), and a region that a live process holds is never removed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack import shm
from tests.fixtures.servers import start_triton

HOLD = """
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
region = mmap.mmap(fd, 4096)
if sys.argv[2] == "map":
    os.close(fd)  # held by the mapping alone, as Triton's stubs hold theirs
print("holding", flush=True)
time.sleep(600)
"""


@pytest.fixture
def fake_region() -> Iterator[Path]:
    """A region-named file in /dev/shm (removed at the end whatever happens)."""
    path = shm.SHM_DIR / f"{shm.PREFIX}test-{uuid.uuid4()}"
    path.write_bytes(b"\0" * 4096)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _holder(path: Path, how: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), how], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    return proc


@pytest.mark.parametrize("how", ["map", "fd"])
def test_a_region_a_live_process_holds_is_never_removed(fake_region: Path, how: str) -> None:
    holder = _holder(fake_region, how)
    try:
        assert fake_region.name in shm.held_by(holder.pid)  # type: ignore[operator]
        assert fake_region not in shm.remove_unused()
        assert fake_region not in shm.remove_unused([fake_region.name])
        assert fake_region.exists()
    finally:
        holder.kill()
        holder.wait()
    assert shm.remove_unused([fake_region.name]) == [fake_region]
    assert not fake_region.exists()


def test_stop_removes_the_servers_regions_and_spares_a_running_servers(
    minilm_repository: Path, tmp_path: Path
) -> None:
    first = start_triton(minilm_repository, tmp_path / "first")
    try:
        first_regions = set(first.shm_regions)
        assert first_regions, "a python-backend model maps a region"
        assert all((shm.SHM_DIR / name).exists() for name in first_regions)
        second = start_triton(minilm_repository, tmp_path / "second")  # its start cleans up: spares the first's
        assert all((shm.SHM_DIR / name).exists() for name in first_regions)
        second_regions = set(second.shm_regions)
        assert second_regions and not second_regions & first_regions
        second.stop()
        assert not any((shm.SHM_DIR / name).exists() for name in second_regions)
        assert all((shm.SHM_DIR / name).exists() for name in first_regions), "the running server keeps its own"
    finally:
        first.stop()
    assert not any((shm.SHM_DIR / name).exists() for name in first_regions)


def test_regions_of_a_killed_server_are_removed_by_the_next_start(minilm_repository: Path, tmp_path: Path) -> None:
    killed = start_triton(minilm_repository, tmp_path / "killed")
    regions = set(killed.shm_regions)
    assert regions
    os.killpg(killed.pid, signal.SIGKILL)  # a crash: nothing unlinks its regions
    assert killed.proc is not None and killed.proc.wait(timeout=10) == -signal.SIGKILL
    deadline = time.monotonic() + 10  # its stubs die with the group
    while time.monotonic() < deadline and any(p.name in shm.in_use()[0] for p in map(Path, regions)):
        time.sleep(0.1)
    assert all((shm.SHM_DIR / name).exists() for name in regions), "SIGKILL leaves the regions behind"
    nxt = start_triton(minilm_repository, tmp_path / "next")
    try:
        assert not any((shm.SHM_DIR / name).exists() for name in regions)
    finally:
        nxt.stop()
        killed.stop()  # closes its log; the group is gone already
