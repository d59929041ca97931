"""The python backend's shared-memory regions (`/dev/shm/triton_python_backend_shm_region_*`, one per model
instance and stub, 1 MiB or more each): which ones a server maps, and removing those that no live process maps.

Triton creates a region when it loads a python-backend model and unlinks it when the model unloads cleanly; a
server that is killed, or that exits before its models are unloaded, leaves its regions behind, and nothing else
ever removes them (RAM on a development machine; a container's `/dev/shm` is 64 MiB by default).

A region is removed only when no process this machine shows us has it open or mapped (`/proc/<pid>/fd` and
`/proc/<pid>/maps`), so a server running beside ours (another engineer's, a test's) keeps its regions. The scan
lists the candidates first, then reads each process's fds before its maps: a region that existed when the scan
began is held by its creator as an fd (from `shm_open`) or as a mapping (after `mmap`), never neither. A process
whose maps cannot be read (not dumpable, or another user's) keeps the regions of its owner when it is a Triton
server or stub by name: only those hold regions, and we cannot tell which.
Processes in other PID namespaces sharing this `/dev/shm` (another container) are not visible; do not share it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

SHM_DIR = Path("/dev/shm")
PREFIX = "triton_python_backend_shm_region_"
PROC = Path("/proc")


def regions(shm_dir: Path = SHM_DIR) -> list[Path]:
    """The python backend's regions that exist now."""
    try:
        return sorted(p for p in shm_dir.iterdir() if p.name.startswith(PREFIX))
    except OSError:
        return []


def _region_names(text: str) -> set[str]:
    """Region names in a `/proc/<pid>/maps` text (or readlink targets), ' (deleted)' suffixes dropped."""
    names = set()
    for line in text.splitlines():
        at = line.find(PREFIX)
        if at >= 0:
            names.add(line[at:].split()[0])
    return names


def held_by(pid: int, proc: Path = PROC) -> set[str] | None:
    """Names of the regions `pid` has open or mapped; None when its maps cannot be read (another user, or gone
    while reading: the caller tells those apart)."""
    held: set[str] = set()
    fd_dir = proc / str(pid) / "fd"
    try:
        for fd in os.listdir(fd_dir):
            try:
                held |= _region_names(os.readlink(fd_dir / fd))
            except OSError:
                continue  # closed meanwhile
    except OSError:
        pass  # no permission for the fd table: the maps below still show every mapping
    try:
        return held | _region_names((proc / str(pid) / "maps").read_text(errors="replace"))
    except OSError:
        return None


def mapped_by(pids: Iterable[int], proc: Path = PROC) -> set[str]:
    """Names of the regions that any of `pids` holds (a server and its stubs: the regions it created)."""
    names: set[str] = set()
    for pid in pids:
        names |= held_by(pid, proc) or set()
    return names


TRITON_NAMES = ("tritonserver", "triton_python_b")  # /proc/<pid>/comm: 15 characters at most


def _triton_owner(pid: int, proc: Path) -> int | None:
    """The uid of `pid` when it is a Triton server or stub (None otherwise, or when it is gone)."""
    try:
        comm = (proc / str(pid) / "comm").read_text().strip()
        return (proc / str(pid)).stat().st_uid if comm.startswith(TRITON_NAMES) else None
    except OSError:
        return None


def in_use(proc: Path = PROC) -> tuple[set[str], set[int]]:
    """(names of the regions some live process holds, uids of live Triton processes whose maps we cannot read)."""
    names: set[str] = set()
    unreadable: set[int] = set()
    for entry in os.listdir(proc):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        held = held_by(int(entry), proc)
        if held is not None:
            names |= held
        elif (uid := _triton_owner(int(entry), proc)) is not None:  # still there: unreadable rather than gone
            unreadable.add(uid)
    return names, unreadable


def remove_unused(only: Iterable[str] | None = None, *, shm_dir: Path = SHM_DIR, proc: Path = PROC) -> list[Path]:
    """Remove the regions (all of them, or those named in `only`) that no live process holds; the removed paths.

    Regions we may not unlink (another user's) and regions whose owner runs a process we cannot inspect stay.
    """
    wanted = None if only is None else set(only)
    candidates = [p for p in regions(shm_dir) if wanted is None or p.name in wanted]
    if not candidates:
        return []
    held, unreadable_uids = in_use(proc)
    removed = []
    for path in candidates:
        try:
            if path.name in held or path.stat().st_uid in unreadable_uids:
                continue
            path.unlink()
        except OSError:
            continue  # gone meanwhile, or not ours to remove
        removed.append(path)
    return removed


def describe(removed: list[Path], why: str) -> str:
    """One line saying what was removed and why."""
    return f"removed {len(removed)} Triton shared-memory region(s) from {SHM_DIR} {why}"
