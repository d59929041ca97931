"""`tritonstack loadtest`: run a scenario headless with the Locust CLI, keep its reports, judge the SLOs.

Locust runs in a child process (it monkey-patches the standard library with gevent), writing CSV stats, an
HTML report, its log and `summary.json` into the run folder; this module reads the summary, prints a table and
returns the exit code: 0 passed, 1 an SLO was missed (a failed request is one unless `fail_ratio` allows it),
2 the run could not be judged, 3 the watchdog aborted it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loadtest.slo import RunSummary, Verdict, evaluate, with_defaults

SCENARIOS = Path(__file__).parent / "scenarios"
SHAPES = Path(__file__).parent / "shapes.py"
REPO_ROOT = Path(__file__).resolve().parent.parent
EXIT_SLO_MISSED, EXIT_NO_RESULT, EXIT_ABORTED = 1, 2, 3


@dataclass(frozen=True)
class LoadTestOptions:
    """Everything one run needs; `extra_env` reaches the locustfile as `LOCUST_*` variables."""

    scenario: str
    host: str
    users: int
    spawn_rate: float
    duration: str
    out_dir: Path
    api_key: str = ""
    shape: str | None = None
    abort_fail_ratio: float = 0.5
    extra_env: tuple[tuple[str, str], ...] = ()


def scenario_names() -> list[str]:
    """The scenarios shipped in loadtest/scenarios/."""
    return sorted(p.stem for p in SCENARIOS.glob("*.py") if not p.stem.startswith("_"))


def scenario_path(name: str) -> Path:
    """A shipped scenario by name (dashes allowed) or a path to any locustfile."""
    path = Path(name)
    if path.suffix == ".py" and path.exists():
        return path.resolve()
    candidate = SCENARIOS / f"{name.replace('-', '_')}.py"
    if not candidate.exists():
        raise ValueError(f"unknown scenario {name!r}; shipped: {', '.join(scenario_names())}")
    return candidate


def duration_seconds(text: str) -> int:
    """`90`, `90s`, `2m`, `1h30m` → seconds."""
    if text.isdigit():
        return int(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text.strip())
    if not parts or not any(parts.groups()):
        raise ValueError(f"bad duration {text!r}; use e.g. 30s, 5m, 1h")
    h, m, s = (int(g or 0) for g in parts.groups())
    return h * 3600 + m * 60 + s


def run_folder(base: Path, scenario: str) -> Path:
    """`base/loadtest-<scenario>-<UTC timestamp>/`, created."""
    stem = Path(scenario).stem.replace("_", "-")
    name = f"loadtest-{stem}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    base.mkdir(parents=True, exist_ok=True)
    for n in range(1, 100):
        folder = base / (name if n == 1 else f"{name}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise RuntimeError(f"too many runs named {name} in {base}")


def locust_argv(opts: LoadTestOptions, folder: Path) -> list[str]:
    """The headless Locust command line (the API key travels in the environment, not argv)."""
    files = str(scenario_path(opts.scenario)) + (f",{SHAPES}" if opts.shape else "")
    argv = [sys.executable, "-m", "locust", "-f", files, "--headless", "--host", opts.host,
            "-u", str(opts.users), "-r", str(opts.spawn_rate), "-t", f"{duration_seconds(opts.duration)}s",
            "--stop-timeout", "5", "--csv", str(folder / "stats"), "--html", str(folder / "report.html"),
            "--summary-json", str(folder / "summary.json"), "--abort-fail-ratio", str(opts.abort_fail_ratio),
            "--exit-code-on-error", "0", "--only-summary"]
    return argv + (["--shape", opts.shape] if opts.shape else [])


def run_locust(opts: LoadTestOptions, folder: Path) -> int:
    """Run Locust to completion (killed 60 s after its run time); its output goes to `folder/locust.log`."""
    env = {**os.environ, **dict(opts.extra_env), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))}
    env.pop("LOCUST_SKIP_MONKEY_PATCH", None)  # Locust needs gevent's patch
    if opts.api_key:
        env["LOCUST_API_KEY"] = opts.api_key
    with open(folder / "locust.log", "w") as log:
        try:
            proc = subprocess.run(locust_argv(opts, folder), env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=duration_seconds(opts.duration) + 60, check=False)
        except subprocess.TimeoutExpired:
            return EXIT_NO_RESULT
    return proc.returncode


def load_summary(folder: Path) -> dict[str, Any] | None:
    """The summary the scenario wrote at exit, if any."""
    path = folder / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def summary_table(data: dict[str, Any], verdict: Verdict) -> Table:
    """Aggregate, custom metrics (TTFT, JOB) and one row per SLO check."""
    table = Table(title="load test summary")
    for col in ("metric", "requests", "failures", "req/s", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    rows = {"all requests": data["aggregate"], **{f"{k} (custom)": v for k, v in data["custom"].items()}}
    for name, row in rows.items():
        table.add_row(name, str(row["requests"]), str(row["failures"]), f"{row['rps']:.1f}",
                      f"{row['p50_ms']:.0f}", f"{row['p95_ms']:.0f}", f"{row['p99_ms']:.0f}")
    for check in verdict.checks:
        mark = "[green]pass[/green]" if check.passed else "[red]MISS[/red]"
        table.add_row(f"SLO {check.key}", mark, "", f"limit {check.limit:g}", f"got {check.observed:.3g}", "", "")
    return table


def rate_limit_hint(data: dict[str, Any]) -> str | None:
    """A line blaming the caller's own key limit when its 429s are most of the run's failures, else None."""
    agg = data["aggregate"]
    limited = int(data.get("rate_limited", 0))
    if not agg["requests"] or 2 * limited <= agg["failures"]:
        return None
    return (f"{100 * limited / agg['requests']:.0f} % of requests were refused with 429 rate_limit_exceeded by the "
            "gateway's per-key rate limit: raise the key's requests_per_minute and tokens_per_minute "
            "(TRITONSTACK_GATEWAY_API_KEYS) or use `tritonstack up`'s development key")


def failure_hints(data: dict[str, Any], slo: dict[str, float]) -> list[str]:
    """Why failed requests fail the run, and the key limit when it caused them."""
    hints = [hint] if (hint := rate_limit_hint(data)) else []
    if data["aggregate"]["failures"] and "fail_ratio" not in slo:
        hints.append("requests failed and --slo sets no fail_ratio (default 0), so the run fails; "
                     "allow some with e.g. --slo fail_ratio=0.01")
    return hints


def execute(opts: LoadTestOptions, slo: dict[str, float], console: Console | None = None) -> int:
    """Run, report and judge against `slo` plus the default gate (no failed request); returns the exit code."""
    console = console or Console()
    folder = run_folder(opts.out_dir, opts.scenario)
    console.print(f"running [bold]{opts.scenario}[/bold] against {opts.host}: {opts.users} users, "
                  f"{opts.duration}, shape {opts.shape or 'constant'}; reports in {folder}/")
    code = run_locust(opts, folder)
    data = load_summary(folder)
    if data is None:
        console.print(f"[red]no result[/red] (locust exit {code}); see {folder / 'locust.log'}")
        return EXIT_NO_RESULT
    verdict = evaluate(RunSummary.from_json(data), with_defaults(slo))
    console.print(summary_table(data, verdict))
    for error in data.get("errors", [])[:5]:
        console.print(f"  [yellow]{error['count']}×[/yellow] {error['name']}: {error['error']}")
    for hint in failure_hints(data, slo):
        console.print(f"[yellow]{hint}[/yellow]", soft_wrap=True)  # one line, whatever the terminal's width
    for reason in verdict.reasons:
        console.print(f"[red]{reason}[/red]")
    console.print(f"report: {folder / 'report.html'}  CSV: {folder}/stats_*.csv")
    if verdict.aborted:
        return EXIT_ABORTED
    console.print("[green]SLOs met[/green]" if verdict.passed else "[red]SLO missed[/red]")
    return 0 if verdict.passed else EXIT_SLO_MISSED
