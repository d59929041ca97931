"""Part of `make lock`: the python packages of NVIDIA's Triton image, resolved in one step for that image.

NVIDIA's image (deploy/docker/triton-gpu.Dockerfile) is not this machine: Python 3.12 on manylinux x86_64 with
CUDA 12.6. For each `deploy/docker/requirements-triton-gpu*.in`, pip resolves every requirement together for that
interpreter (`pip install --dry-run --ignore-installed --report` with `--python-version`, `--platform`,
`--only-binary=:all:`), with requirements.lock's versions as constraints for the names it shares (the image runs
what the tests ran), and this writes what pip chose to the `.txt` beside it: every distribution as
`name==version --hash=sha256:…` (the wheel pip picked for that platform), which the image installs with
`pip install --no-deps --require-hashes`. One resolution of everything the image installs is what keeps numpy
below 2: installed in a later step, CuPy 14 would have upgraded it.

    .venv/bin/python -m tritonstack.image_lock            # every requirements-triton-gpu*.in (needs PyPI)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "deploy" / "docker"
LOCK = ROOT / "requirements.lock"
PYTHON_VERSION = "3.12"  # nvcr.io/nvidia/tritonserver:24.12-py3 (Ubuntu 24.04)
# manylinux wheels up to the image's glibc (2.39), the newest first
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(39, 16, -1)] + ["manylinux2014_x86_64"]
INDEX = "https://pypi.org/simple"
# pip settings of this machine that must not reach the resolution: local wheels and indexes, global constraints
LOCAL_SETTINGS = ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_CONSTRAINT", "PIP_NO_INDEX")


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    sha256: str
    url: str
    cuda: int | None = None  # the CUDA major version the wheel is built for, when it needs CUDA


def cuda_major(name: str, requires: list[str]) -> int | None:
    """The CUDA major version a distribution is built for, from its name (`cupy-cuda12x`, `nvidia-cudnn-cu12`) or the
    NVIDIA packages its metadata requires (onnxruntime-gpu: `nvidia-cuda-runtime-cu12~=12.0` in 1.24,
    `nvidia-cuda-runtime-cu13~=13.0` in 1.27, `nvidia-cuda-runtime~=13.0` in 1.31); None for the others."""
    if found := re.search(r"-cu(?:da)?(\d+)x?$", name):
        return int(found[1])
    for requirement in requires:
        if found := re.match(r"nvidia-[a-z0-9-]+?-cu(\d+)\b", requirement) or re.match(
                r"nvidia-cuda-runtime\s*[~=>]=\s*(\d+)", requirement):
            return int(found[1])
    return None


def sets() -> list[Path]:
    """The image's requirement sources, one per build variant."""
    return sorted(DOCKER.glob("requirements-triton-gpu*.in"))


def lock_versions(lock: Path = LOCK) -> dict[str, str]:
    """name → version of every pin in requirements.lock."""
    text = lock.read_text(encoding="utf-8")
    return {_norm(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.MULTILINE)}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins_from_report(report: dict) -> list[Pin]:
    """What `pip install --report` would install: name, version and the sha256 of the file it chose."""
    pins = []
    for item in report["install"]:
        info = item["download_info"]
        sha = info.get("archive_info", {}).get("hashes", {}).get("sha256")
        name, url = item["metadata"]["name"], info["url"]
        if not sha or not url.startswith("https://"):
            raise RuntimeError(f"{name}: pip chose {url} without a sha256 from the index; refusing to pin it")
        cuda = cuda_major(_norm(name), item["metadata"].get("requires_dist") or [])
        pins.append(Pin(_norm(name), item["metadata"]["version"], sha, url, cuda))
    return sorted(pins, key=lambda p: p.name)


def resolve(source: Path, python: str = sys.executable) -> list[Pin]:
    """Resolve `source` for the image's interpreter (needs PyPI)."""
    shared = lock_versions()
    with tempfile.TemporaryDirectory() as work:
        constraints, report = Path(work) / "constraints.txt", Path(work) / "report.json"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(shared.items())), encoding="utf-8")
        argv = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
                str(report), "--index-url", INDEX, "--python-version", PYTHON_VERSION, "--only-binary=:all:",
                *(f"--platform={p}" for p in PLATFORMS), "-c", str(constraints), "-r", str(source)]
        env = {k: v for k, v in os.environ.items() if k not in LOCAL_SETTINGS}
        env["PIP_CONFIG_FILE"] = os.devnull  # no pip.conf: nothing but PyPI and these constraints
        subprocess.run(argv, check=True, env=env, cwd=source.parent)
        return pins_from_report(json.loads(report.read_text(encoding="utf-8")))


def render(source: Path, pins: list[Pin]) -> str:
    head = (f"# Generated by `make lock` (python -m tritonstack.image_lock) from {source.name}: resolved in one step\n"
            f"# for Python {PYTHON_VERSION} on manylinux x86_64 (NVIDIA's Triton image). Installed with\n"
            "# `pip install --no-deps --require-hashes -r` (deploy/docker/triton-gpu.Dockerfile). Do not edit.\n")
    lines = []
    for pin in pins:
        lines.append(f"{pin.name}=={pin.version} \\\n    --hash=sha256:{pin.sha256}\n")
        if pin.cuda is not None:
            lines.append(f"    # built for CUDA {pin.cuda}\n")
    return head + "".join(lines)


def main(argv: list[str] | None = None) -> int:
    for source in [Path(a) for a in argv] if argv else sets():
        pins = resolve(source)
        target = source.with_suffix(".txt")
        target.write_text(render(source, pins), encoding="utf-8")
        print(f"{target.relative_to(ROOT)}: {len(pins)} distributions")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
