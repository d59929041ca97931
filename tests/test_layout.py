"""The layout rules of docs/ARCHITECTURE.md: top-level packages import along the data path, never in a cycle."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what each top-level package may import from the others (the data path, and the tools on top of it)
ALLOWED = {
    "triton_models": set(),
    "export": {"triton_models"},
    "gateway": set(),
    "jobs": {"gateway"},
    "stack": {"gateway"},  # the gateway's server options and the rollouts file it creates
    "loadtest": {"stack", "export", "gateway", "jobs", "triton_models"},
    "tritonstack": {"export", "gateway", "jobs", "stack", "loadtest"},
}


def _imports() -> dict[str, dict[str, set[str]]]:
    """top-level package → imported top-level package → the files that import it."""
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    edges: dict[str, dict[str, set[str]]] = {}
    for name in files.stdout.split():
        top = Path(name).parts[0]
        if top not in ALLOWED:
            continue
        for node in ast.walk(ast.parse((ROOT / name).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                target = module.split(".")[0]
                if target in ALLOWED and target != top:
                    edges.setdefault(top, {}).setdefault(target, set()).add(name)
    return edges


def test_every_top_level_package_is_listed() -> None:
    """A new top-level package gets a place in the rules (and in docs/ARCHITECTURE.md)."""
    tops = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()} - {"tests"}
    assert tops == set(ALLOWED), f"unlisted: {tops - set(ALLOWED)}, gone: {set(ALLOWED) - tops}"


def test_imports_follow_the_data_path() -> None:
    """No package imports one it may not: no cycles, nothing upwards (e.g. the gateway never imports the worker)."""
    wrong = {(top, target): sorted(files) for top, targets in _imports().items()
             for target, files in targets.items() if target not in ALLOWED[top]}
    assert not wrong, f"imports against the layout: {wrong}"


def test_the_allowed_graph_itself_has_no_cycle() -> None:
    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in ALLOWED[start])

    assert not [p for p in ALLOWED if reaches(p, p)]
