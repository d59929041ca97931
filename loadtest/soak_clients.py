"""The soak's real clients (`--clients locust`, issue 23's acceptance): Locust `mix` and perf_analyzer on `/v2`.

Locust runs the `mix` scenario headless for the soak's duration, the way `tritonstack loadtest` starts it
(`loadtest.run.locust_argv`/`run_locust`: the stack's gateway URL, its development key in `LOCUST_API_KEY`), with
its reports (`stats_*.csv`, `summary.json`, `report.html`, `locust.log`) under `<state>/locust/loadtest-mix-*/`.
perf_analyzer (`.venv-clients`, `make clients`) sends minilm over KServe v2 HTTP through the gateway at a fixed
concurrency, one `--request-count` measurement after another until the deadline, each run's output in
`<state>/perf_analyzer/run-NNN.log`; without `.venv-clients` it is skipped with a message. Both run in threads
beside the soak's sampler. The outcome is read from what the clients wrote, not guessed: Locust's `Aggregated` row
of `stats_stats.csv` (requests, failures), its `summary.json` (aborted by the watchdog?) and exit code, and each
perf_analyzer run's exit code.
"""

from __future__ import annotations

import asyncio
import csv
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest import perf_analyzer
from loadtest.run import LoadTestOptions, load_summary, run_folder, run_locust

PERF_SENTENCES = [f"soak perf_analyzer sentence {i} about {w}" for i, w in
                  enumerate(("models", "serving", "batches", "latency", "vectors", "tokens", "gateways", "queues"))]


@dataclass
class ClientOptions:
    """How many real clients, and how long one perf_analyzer measurement is."""

    locust_users: int = 4
    perf_concurrency: int = 2  # 0: no perf_analyzer
    perf_requests: int = 1000  # requests per perf_analyzer run (one measurement); runs repeat until the deadline


def locust_outcome(folder: Path, exit_code: int) -> dict[str, Any]:
    """Requests and failures from Locust's `Aggregated` CSV row, `aborted` from its summary, and its exit code."""
    result: dict[str, Any] = {"folder": str(folder), "exit_code": exit_code, "requests": 0, "failures": 0}
    stats = folder / "stats_stats.csv"
    if stats.exists():
        with stats.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("Name") == "Aggregated":
                    result["requests"], result["failures"] = int(row["Request Count"]), int(row["Failure Count"])
    else:
        result["missing"] = str(stats)
    summary = load_summary(folder)
    result["aborted"] = bool(summary and summary.get("aborted"))
    if summary is None:
        result["missing"] = str(folder / "summary.json")
    if summary:
        result["errors"] = summary.get("errors", [])[:5]
    return result


def locust_check(outcome: dict[str, Any]) -> dict[str, Any]:
    """Pass: a CSV and summary were written, requests > 0, failures 0, not aborted, exit code 0."""
    ok = ("missing" not in outcome and outcome["requests"] > 0 and outcome["failures"] == 0
          and not outcome["aborted"] and outcome["exit_code"] == 0)
    return {"value": outcome["failures"], "requests": outcome["requests"], "exit_code": outcome["exit_code"],
            "aborted": outcome["aborted"], "bound": 0, "ok": ok}


def perf_check(outcome: dict[str, Any]) -> dict[str, Any]:
    """Pass: at least one run, every exit code 0."""
    codes = outcome["exit_codes"]
    failed = sum(1 for c in codes if c != 0)
    return {"value": failed, "runs": len(codes), "requests": outcome["requests"], "bound": 0,
            "ok": bool(codes) and failed == 0}


def run_locust_mix(url: str, key: str, state: Path, users: int, duration_s: float, chat: bool) -> dict[str, Any]:
    """Locust `mix` headless against `url` for `duration_s` (blocking); its outcome."""
    opts = LoadTestOptions(scenario="mix", host=url, users=users, spawn_rate=float(users),
                           duration=f"{max(1, round(duration_s))}s", out_dir=state / "locust", api_key=key,
                           extra_env=() if chat else (("LOCUST_MIX_CHAT", "0"),))
    folder = run_folder(opts.out_dir, opts.scenario)
    return locust_outcome(folder, run_locust(opts, folder))


def run_perf_analyzer(url: str, key: str, state: Path, opts: ClientOptions, deadline: float) -> dict[str, Any]:
    """perf_analyzer on the gateway's `/v2` (minilm), one `--request-count` run after another until `deadline`
    (monotonic; blocking); exit codes and requests of the runs."""
    folder = state / "perf_analyzer"
    folder.mkdir(parents=True, exist_ok=True)
    data = perf_analyzer.sentences_file(folder, PERF_SENTENCES)
    argv = [str(perf_analyzer.executable()), "-m", "minilm", "-u", url.removeprefix("http://"), "-i", "http",
            "-H", f"Authorization: Bearer {key}", "--input-data", str(data),
            "--concurrency-range", str(opts.perf_concurrency), "--request-count", str(opts.perf_requests)]
    env, codes, n = perf_analyzer.environment(), [], 0
    while time.monotonic() < deadline:
        n += 1
        with open(folder / f"run-{n:03d}.log", "w") as log:
            try:
                done = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, check=False,
                                      timeout=max(60.0, deadline - time.monotonic() + 120))
                codes.append(done.returncode)
            except subprocess.TimeoutExpired:
                codes.append(124)
    return {"folder": str(folder), "exit_codes": codes, "requests": opts.perf_requests * codes.count(0),
            "concurrency": opts.perf_concurrency}


async def drive_clients(url: str, key: str, state: Path, opts: ClientOptions, duration_s: float,
                        chat: bool) -> dict[str, dict[str, Any]]:
    """Locust and perf_analyzer side by side for `duration_s`; `{"locust": …, "perf_analyzer": …}`, the latter
    `{"skipped": why}` without `.venv-clients` or with concurrency 0."""
    deadline = time.monotonic() + duration_s
    jobs: dict[str, Any] = {"locust": asyncio.to_thread(run_locust_mix, url, key, state, opts.locust_users,
                                                        duration_s, chat)}
    skipped = None
    if opts.perf_concurrency <= 0:
        skipped = "--perf-analyzer-concurrency 0"
    else:
        try:
            perf_analyzer.executable(), perf_analyzer.environment()
        except perf_analyzer.PerfAnalyzerMissingError as exc:
            skipped = str(exc)
    if skipped is None:
        jobs["perf_analyzer"] = asyncio.to_thread(run_perf_analyzer, url, key, state, opts, deadline)
    else:
        print(f"perf_analyzer skipped: {skipped}", flush=True)
    results = dict(zip(jobs, await asyncio.gather(*jobs.values()), strict=True))
    return results if skipped is None else {**results, "perf_analyzer": {"skipped": skipped}}
