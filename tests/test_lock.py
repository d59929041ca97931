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
IMAGE_SETS = sorted((ROOT / "deploy" / "docker").glob("requirements-*.txt"))


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


PYTHON_IMAGES = [ROOT / "deploy" / "docker" / f"{name}.Dockerfile" for name in ("gateway", "worker", "triton-cpu")]


@pytest.mark.parametrize("dockerfile", PYTHON_IMAGES, ids=lambda p: p.name)
def test_images_install_only_hashed_pins(dockerfile: Path) -> None:
    """Every `pip install` of a python image takes a locked requirements file with hashes, or our package alone."""
    text = dockerfile.read_text()
    for command in re.findall(r"pip install ([^\n&]*)", text):
        if command.strip().endswith("."):
            assert "--no-deps" in command, f"{dockerfile.name}: our package must not pull unlocked deps"
            continue
        locked = "--require-hashes" in command and "-r " in command
        assert locked, f"{dockerfile.name}: unlocked `pip install {command}`"
