"""Where a server process spends its CPU: `py-spy` samples grouped into the gateway's components.

`record` samples a running process (py-spy, raw collapsed stacks, idle excluded); `breakdown` assigns each sample
to the first subsystem whose pattern occurs anywhere in its stack (most specific first), so a Redis call made by
the rate limiter counts as rate limiting, a Triton call made by the single-flight leader as the Triton client, and a
socket write of a response as response sending; what no subsystem claims goes by the file of its innermost frame
(framework, gateway glue, or the event loop and the rest). Samples are wall time while the thread is busy (on a
shared machine that includes time it was runnable but waiting for a CPU), so shares are indicative.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

# (component, substrings of a stack frame "function (file:line)"); first match wins
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Triton client (HTTP: aiohttp; gRPC for streams)", ("tritonclient/", "grpc/", "gateway/backends/triton",
                                                         "aiohttp/")),
    ("rate-limit check (Redis round trip)", ("gateway/ratelimit/", "gateway/ratelimit/policy.py")),
    ("cache lookup, single-flight, Redis lock/store", ("gateway/cache/",)),
    ("KServe passthrough (validation, relay)", ("gateway/kserve/",)),
    ("request body parsing (pydantic)", ("pydantic/", "parse_body")),
    ("response encoding (base64, orjson)", ("gateway/embeddings/encoding.py", "gateway/http/responses.py")),
    ("metrics (prometheus_client)", ("prometheus_client/", "GatewayMetrics", "_observe")),
    ("API key check", ("gateway/auth.py",)),
    ("response write (socket send)", ("RequestResponseCycle.send", "gateway/http/server.py")),
    ("HTTP parsing, connection handling (uvicorn, httptools)", ("HttpToolsProtocol.",)),
)
# by the innermost frame, for samples no subsystem above claims
LEAF_COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("FastAPI/Starlette (routing, middleware, request/response objects)", ("fastapi/", "starlette/", "uvicorn/")),
    ("gateway glue (middleware, auth/limit dependencies, service, keys)", ("gateway/",)),
)
OTHER = "event loop, asyncio and other"


class ProfilerMissingError(RuntimeError):
    """py-spy is not installed."""


def py_spy() -> str:
    """Path of the py-spy binary (next to this Python, or on PATH)."""
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if found is None:
        raise ProfilerMissingError("py-spy is not installed: `.venv/bin/pip install py-spy`")
    return found


def record(pid: int, seconds: int, rate: int = 200) -> list[tuple[list[str], int]]:
    """Sample `pid` for `seconds`; each distinct stack (root first) with its sample count."""
    with tempfile.TemporaryDirectory(prefix="tritonstack-pyspy-") as tmp:
        out = Path(tmp) / "stacks.txt"
        argv = [py_spy(), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(rate),
                "--format", "raw", "--nonblocking", "--output", str(out)]
        subprocess.run(argv, check=True, capture_output=True)
        stacks = []
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks.append((stack.split(";"), int(count)))
        return stacks


def component(frames: list[str]) -> str:
    """The component a stack's CPU time belongs to (frames below the event loop's `run` only)."""
    loop = [i for i, frame in enumerate(frames) if "asyncio/runners.py" in frame]
    frames = frames[loop[-1] + 1 :] if loop else frames
    for name, patterns in COMPONENTS:
        if any(p in frame for frame in frames for p in patterns):
            return name
    leaf = frames[-1] if frames else ""
    return next((name for name, patterns in LEAF_COMPONENTS if any(p in leaf for p in patterns)), OTHER)


def breakdown(stacks: list[tuple[list[str], int]]) -> list[tuple[str, float]]:
    """(component, share of the samples), largest first."""
    counts: Counter[str] = Counter()
    for frames, n in stacks:
        counts[component(frames)] += n
    total = sum(counts.values()) or 1
    return [(name, n / total) for name, n in counts.most_common()]
