"""requirements.lock is the one source of every install: the venv, the images and CI.

`make lock` regenerates it (pip-tools); these checks keep it honest without the network: it satisfies
pyproject.toml, the tested venv is exactly it, and the images' requirement files are slices of it.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
DOCKER = ROOT / "deploy" / "docker"
# NVIDIA's Triton image (Python 3.12) is resolved on its own (tritonstack/image_lock.py); others: slices of the lock
NVIDIA_SETS = sorted(DOCKER.glob("requirements-triton-gpu*.txt"))
IMAGE_SETS = sorted(set(DOCKER.glob("requirements-*.txt")) - set(NVIDIA_SETS))


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _entries(path: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """name → (exact version, hashes) of a pip-compile output; fails on any entry that is not an exact pin."""
    entries = {}
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("--hash") else line
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        hashes = frozenset(re.findall(r"--hash=(sha256:[0-9a-f]{64})", line))
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", re.sub(r"--hash=\S+", "", line).strip())
        assert match, f"{path.name}: not an exact pin: {line[:120]}"
        assert hashes, f"{path.name}: {match[1]} has no hash (pip would refuse it with --require-hashes)"
        entries[_norm(match[1])] = (match[2], hashes)
    return entries


def _project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        texts.extend(extra)
    return [Requirement(text) for text in texts]


def test_lock_pins_every_requirement_of_pyproject_within_its_range() -> None:
    """A pyproject.toml change that the lock does not satisfy fails here, before any install drifts."""
    lock = _entries(LOCK)
    for requirement in _project_requirements():
        name = _norm(requirement.name)
        assert name in lock, f"{requirement} is not in requirements.lock: run `make lock`"
        version = lock[name][0]
        assert requirement.specifier.contains(Version(version), prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside pyproject.toml's {requirement}: run `make lock`"
        )


def test_the_tested_venv_is_exactly_the_lock() -> None:
    """What the suite runs with is what `make install`, CI and the images install: same names, same versions."""
    installed = {_norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
    differs = {name: (version, installed.get(name)) for name, (version, _) in _entries(LOCK).items()
               if installed.get(name) != version}
    assert not differs, f"lock pin vs installed: {differs}; run `make install`"


@pytest.mark.parametrize("path", IMAGE_SETS, ids=lambda p: p.name)
def test_image_requirements_are_a_slice_of_the_lock(path: Path) -> None:
    """Each image installs the lock's versions and hashes (compiled with `-c requirements.lock`), nothing else."""
    lock = _entries(LOCK)
    entries = _entries(path)
    assert entries, f"{path.name} pins nothing"
    for name, (version, hashes) in entries.items():
        assert name in lock, f"{path.name}: {name} is not in requirements.lock"
        assert version == lock[name][0], f"{path.name}: {name}=={version}, the lock has {lock[name][0]}"
        assert hashes <= lock[name][1], f"{path.name}: {name}'s hashes are not the lock's"
    source = path.with_suffix(".in")
    assert source.exists(), f"{path.name} is compiled from {source.name}"


PYTHON_IMAGES = [DOCKER / f"{name}.Dockerfile" for name in ("gateway", "worker", "triton-cpu", "triton-gpu")]


@pytest.mark.parametrize("dockerfile", PYTHON_IMAGES, ids=lambda p: p.name)
def test_images_install_only_hashed_pins(dockerfile: Path) -> None:
    """Every `pip install` of a python image takes a locked requirements file with hashes, or our package alone."""
    text = dockerfile.read_text()
    commands = re.findall(r"pip install ([^\n&]*)", text)
    assert commands, f"{dockerfile.name} installs nothing?"
    for command in commands:
        if command.strip().endswith("."):
            assert "--no-deps" in command, f"{dockerfile.name}: our package must not pull unlocked deps"
            continue
        locked = "--require-hashes" in command and "-r " in command
        assert locked, f"{dockerfile.name}: unlocked `pip install {command}`"


def test_nvidia_image_sets_are_one_hashed_resolution_for_its_cuda_12_and_numpy_1() -> None:
    """NVIDIA's Triton 24.12 image (CUDA 12.6, a python backend stub built against numpy 1.x) installs one of these
    with --no-deps --require-hashes: each is every distribution it needs, resolved together (`make lock`), so
    nothing is installed later that could move numpy; nothing in it is built for CUDA 13."""
    assert [p.name for p in NVIDIA_SETS] == ["requirements-triton-gpu-cpu.txt", "requirements-triton-gpu.txt"]
    lock = _entries(LOCK)
    for path in NVIDIA_SETS:
        entries = _entries(path)  # every entry an exact pin with its hash
        text = path.read_text()
        assert "tritonstack.image_lock" in text and path.with_suffix(".in").exists()
        assert Version(entries["numpy"][0]) < Version("2"), f"{path.name}: numpy {entries['numpy'][0]}"
        assert {"tokenizers", "jinja2", "numpy"} <= entries.keys()
        cuda13 = [n for n in entries if re.search(r"cu(da)?13", n)] + re.findall(r"built for CUDA 1[3-9]", text)
        assert not cuda13, f"{path.name}: CUDA 13 packages in a CUDA 12.6 image: {cuda13}"
        for shared in ("numpy", "tokenizers", "jinja2", "onnxruntime"):  # the versions the tests ran
            if shared in entries:
                assert entries[shared][0] == lock[shared][0], f"{path.name}: {shared} differs from the lock"
    gpu = NVIDIA_SETS[1].read_text()
    for name in ("onnxruntime-gpu", "cupy-cuda12x"):  # the CUDA major of each, from its wheel's metadata
        assert re.search(rf"^{name}==\S+ \\\n\s+--hash=sha256:[0-9a-f]{{64}}\n\s+# built for CUDA 12$", gpu, re.M), name
    cpu_entries = _entries(NVIDIA_SETS[0])
    assert "onnxruntime" in cpu_entries and not {"onnxruntime-gpu", "cupy-cuda12x"} & cpu_entries.keys()


def test_the_nvidia_image_resolution_reads_cuda_from_names_and_metadata() -> None:
    from tritonstack.image_lock import cuda_major, pins_from_report

    assert cuda_major("cupy-cuda12x", []) == 12 and cuda_major("nvidia-cudnn-cu13", []) == 13
    assert cuda_major("onnxruntime-gpu", ["numpy>=1.21.6", 'nvidia-cuda-runtime-cu12~=12.0; extra == "cuda"']) == 12
    assert cuda_major("onnxruntime-gpu", ['nvidia-cuda-runtime~=13.0; extra == "cuda"']) == 13
    assert cuda_major("numpy", []) is None
    item = {"metadata": {"name": "NumPy", "version": "1.26.4"},
            "download_info": {"url": "file:///opt/wheels/numpy.whl", "archive_info": {"hashes": {"sha256": "0" * 64}}}}
    with pytest.raises(RuntimeError, match="refusing to pin it"):  # a local wheel the image could not download
        pins_from_report({"install": [item]})
