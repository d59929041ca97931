"""Run `wrk` (a compiled, light load generator: it leaves the 2 cores to the server) and parse its results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPTS = Path(__file__).parent


class WrkMissingError(RuntimeError):
    """wrk is not installed."""


@dataclass(frozen=True)
class WrkResult:
    """One closed-loop run: throughput and latency percentiles (ms)."""

    connections: int
    requests: int
    duration_s: float
    errors: int
    non2xx: int
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def run_wrk(
    url: str,
    body: str,
    *,
    connections: int,
    duration_s: int,
    script: str = "unique_text.lua",
    auth: str | None = None,
    threads: int = 1,
    salt: str | None = None,
) -> WrkResult:
    """POST `body` (with `{TEXT}` replaced per request by unique_text.lua) to `url` for `duration_s`.

    unique_text.lua repeats its sentences in every run; give each run its own `salt` (a word added to every
    sentence) where repeats matter, e.g. in front of a cache.
    """
    binary = shutil.which("wrk")
    if binary is None:
        raise WrkMissingError("wrk is not installed: `sudo apt-get install wrk` (make bench does this)")
    env = {**os.environ, "WRK_BODY": body, "WRK_AUTH": auth or "", "WRK_SALT": salt or ""}
    argv = [
        binary,
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--timeout",
        "10s",
        "-s",
        str(SCRIPTS / script),
        url,
    ]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    data = json.loads(line.removeprefix("WRKJSON "))
    return WrkResult(
        connections=connections,
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        errors=data["errors"],
        non2xx=data["non2xx"],
        p50_ms=data["p50_us"] / 1000,
        p95_ms=data["p95_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )
