"""Write benchmark sections into docs/BENCHMARKS.md, each between its own markers, leaving others intact."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import psutil


def machine_description() -> str:
    """One line about the machine the numbers came from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    return f"{cpu}, {psutil.cpu_count(logical=True)} logical CPUs, {mem:.0f} GiB RAM, {platform.platform()}"


def cpu_seconds(pid: int | None = None, *, children: bool = False) -> float:
    """User + system CPU seconds so far of process `pid` (default: this one), with its descendants if `children`
    (e.g. Triton's python-backend stubs)."""
    root = psutil.Process(pid)
    processes = (root, *root.children(recursive=True)) if children else (root,)
    return sum(t.user + t.system for t in (p.cpu_times() for p in processes))


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(path: Path, key: str, body: str) -> None:
    """Replace (or append) the section marked `<!-- bench:KEY -->` … `<!-- /bench:KEY -->` in `path`."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmarks\n\nEvery number here was produced by the command above its table.\n"
    )
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
