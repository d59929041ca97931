"""Every example in README.md, CONTRIBUTING.md and docs/*.md runs, as written, against a real local stack.

The stack is the one `make up` starts (`stack.up.start_stack`: Redis, Triton, the worker, the gateway
with a development key) on the documented ports, serving the demo models exported by the session fixtures. Each
fenced `bash` or `python` block runs in a workspace laid out like a checkout after `make up`
(`model_repository/`, `.tritonstack/dev-api-key`), in document order, and must exit 0.

A block that needs what a test machine does not have (a cloud key, a GPU, Docker, a cluster) starts with the
visible line `# not run by make test: <why>`; it is reported as skipped with that reason. Other fences (yaml,
json, text: configuration and output) are not commands.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stack.process import ProcessError, port_open
from stack.up import StackOptions, start_stack

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}
SKIP_MARK = re.compile(r"^\s*#\s*not run by make test:\s*(.+)$")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
BLOCK_TIMEOUT_S = 420
STACK_PORTS = (8080, 8000, 8001, 8002, 9500)


@dataclass(frozen=True)
class Block:
    """One fenced code block of a document."""

    path: Path
    line: int
    language: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        first = self.code.lstrip("\n").splitlines()[0] if self.code.strip() else ""
        match = SKIP_MARK.match(first)
        return match[1].strip() if match else None


def doc_blocks(paths: list[Path] = DOCS) -> list[Block]:
    """Runnable blocks (bash, python) of the documents, in document order."""
    blocks = []
    for path in paths:
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            language = match[1].lower()
            if language in RUNNABLE:
                line = text.count("\n", 0, match.start()) + 1
                blocks.append(Block(path, line, RUNNABLE[language], match[2]))
    return blocks


def test_the_harness_sees_the_readme_examples() -> None:
    """The extraction itself: README's examples are found, and a marked block is recognised as skipped."""
    blocks = [b for b in doc_blocks() if b.path.name == "README.md"]
    assert len(blocks) >= 3, [b.id for b in blocks]
    assert any(b.skip_reason is None for b in blocks)
    marked = Block(ROOT / "README.md", 1, "bash", "# not run by make test: needs Docker\ndocker compose up\n")
    assert marked.skip_reason == "needs Docker"


def _link_copy(source: Path, target: Path) -> None:
    """A copy of an exported repository whose files are hard links (exports only add new version folders)."""
    shutil.copytree(source, target, copy_function=os.link, dirs_exist_ok=True)


@pytest.fixture(scope="module")
def docs_workspace(minilm_repository: Path, smollm2_repository: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A checkout after `make up`: its files, a repository with the demo models, and the stack on the documented
    ports."""
    busy = [port for port in STACK_PORTS if port_open("127.0.0.1", port)]
    if busy:
        pytest.fail(f"the documented ports {busy} are in use: the docs' examples run against a stack on them "
                    "(stop `make up` or whatever listens there, then run the tests again)")
    workspace = tmp_path_factory.mktemp("docs-workspace")
    for entry in ROOT.iterdir():  # the checkout (Makefile, venvs, sources), its repository and state its own
        if entry.name not in {"model_repository", ".tritonstack", "runs", ".git"}:
            (workspace / entry.name).symlink_to(entry)
    repository = workspace / "model_repository"
    _link_copy(minilm_repository, repository)
    _link_copy(smollm2_repository, repository)
    opts = StackOptions(repository=repository, state_dir=workspace / ".tritonstack")
    try:
        stack = start_stack(opts)
    except ProcessError as exc:
        pytest.fail(f"the docs' stack did not start: {exc}")
    with stack:
        yield workspace


def _environment() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRITONSTACK_", "OPENAI_"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("block", doc_blocks(), ids=lambda b: b.id)
def test_doc_example_runs(block: Block, docs_workspace: Path) -> None:
    """The block exits 0 in the workspace, against the running stack."""
    if block.skip_reason:
        pytest.skip(f"{block.id}: {block.skip_reason}")
    argv = ["bash", "-euo", "pipefail", "-c", block.code] if block.language == "bash" else [
        sys.executable, "-c", block.code]
    try:
        done = subprocess.run(argv, cwd=docs_workspace, env=_environment(), capture_output=True, text=True,
                              timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{block.id} did not finish in {BLOCK_TIMEOUT_S} s:\n{block.code}\n{exc.stdout or ''}")
    assert done.returncode == 0, (
        f"{block.id} exited {done.returncode}:\n{block.code}\n--- stdout\n{done.stdout[-3000:]}\n"
        f"--- stderr\n{done.stderr[-3000:]}"
    )
