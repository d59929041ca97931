"""The soak command (loadtest/soak.py, issue #9 item 7) in a 12-second smoke run, so that it does not rot, and its
linear-growth gate (issue 23) on synthetic samples.

The real soak is not part of `make test`: `.venv/bin/python -m loadtest.soak --duration 900` (docs/RELIABILITY.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from loadtest.soak import Report, Sample, SoakOptions, judge, rss_slope


def test_soak_smoke_run_passes_and_reports_every_measurement(minilm_repository: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    argv = [sys.executable, "-m", "loadtest.soak", "--repository", str(minilm_repository), "--duration", "12",
            "--warmup", "4", "--sample-every", "1", "--state-dir", str(tmp_path / "state"), "--json",
            str(report_path), "--max-rss-slope", "1000", "--max-rss-growth", "0.5"]  # 12 s: no leak verdict
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=Path(__file__).parents[1])
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["ok"] and report["errors"] == {}
    requests = report["requests"]
    for kind in ("embeddings-cold", "embeddings-warm", "jobs", "jobs-result"):
        assert requests.get(kind, 0) > 0, requests
    assert "chat" not in requests, "the test repository has no smollm2 export"
    checks = report["checks"]
    roles = {s["role"] for s in report["samples"]}
    assert {"gateway", "worker", "triton"} <= roles and any(r.startswith("stub:minilm") for r in roles), roles
    for role in roles:
        for check in ("rss_growth", "rss_slope", "fds_delta", "connections_delta"):
            assert checks[f"{role}_{check}"]["ok"], checks
        readings = [s for s in report["samples"] if s["role"] == role]
        assert len(readings) >= 10 and all(s["rss_mb"] > 0 and s["fds"] > 0 for s in readings)


def _samples(rss_at: Callable[[float], float], minutes: float = 60, every_s: float = 20) -> Report:
    """One role's samples every `every_s` for `minutes`, RSS from `rss_at(minute)` plus ±0.3 MB of jitter."""
    n = int(minutes * 60 / every_s) + 1
    jitter = [0.3, -0.3, 0.1, -0.1, 0.0]
    samples = [Sample(i * every_s, "triton", rss_at(i * every_s / 60) + jitter[i % 5], 40, 3) for i in range(n)]
    return Report(minutes * 60, {"chat": 100}, {}, samples)


def _verdict(report: Report) -> dict[str, object]:
    judge(report, SoakOptions(warmup_s=360, max_rss_slope=0.1, max_rss_growth=0.10))
    return report.checks["triton_rss_slope"]


def test_slope_gate_passes_a_cache_that_fills_then_stays_flat() -> None:
    report = _samples(lambda m: 100 + 9 * min(m, 25) / 25)  # +9 MB over 25 minutes, then full
    assert _verdict(report)["ok"], report.checks
    assert report.checks["triton_rss_growth"]["ok"]


def test_slope_gate_fails_a_slow_linear_leak_that_growth_alone_misses() -> None:
    report = _samples(lambda m: 100 + 0.15 * m)  # 0.15 MB/min: +8 % over the hour, under the 10 % growth bound
    check = _verdict(report)
    assert not check["ok"] and 0.13 < check["value"] < 0.17, check
    assert report.checks["triton_rss_growth"]["ok"], "start-vs-end growth alone lets this leak through"
    assert not report.ok


def test_slope_is_least_squares_in_mb_per_minute() -> None:
    exact = [Sample(t, "x", 50 + 2 * t / 60, 1, 1) for t in (0, 30, 60, 120)]
    assert rss_slope(exact) == 2.0
    assert rss_slope(exact[:2]) is None


def test_soak_with_real_clients_runs_locust_mix_and_perf_analyzer(minilm_repository: Path, tmp_path: Path) -> None:
    """`--clients locust` (issue 23's acceptance soak) for 15 s: Locust `mix` and perf_analyzer both sent load and
    both verdicts come from what they wrote (Locust's CSV, perf_analyzer's exit codes)."""
    report_path, state = tmp_path / "soak.json", tmp_path / "state"
    argv = [sys.executable, "-m", "loadtest.soak", "--repository", str(minilm_repository), "--duration", "15",
            "--warmup", "4", "--sample-every", "1", "--state-dir", str(state), "--json", str(report_path),
            "--max-rss-slope", "1000", "--max-rss-growth", "0.5", "--slope-window-s", "6", "--clients", "locust",
            "--locust-users", "2", "--perf-analyzer-concurrency", "1", "--perf-analyzer-requests", "50"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=Path(__file__).parents[1])
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    locust, perf = report["clients"]["locust"], report["clients"]["perf_analyzer"]
    assert report["ok"] and locust["requests"] > 0 and locust["failures"] == 0, locust
    assert (Path(locust["folder"]) / "stats_stats.csv").exists() and Path(locust["folder"]).parent == state / "locust"
    if "skipped" not in perf:  # .venv-clients (`make clients`) is installed
        assert perf["exit_codes"] and set(perf["exit_codes"]) == {0}, perf
        assert report["checks"]["perf_analyzer_failed_runs"]["ok"]
    checks = report["checks"]
    assert checks["locust_failures"]["ok"] and "error_ratio" not in checks
    assert all(c["window_s"] == 6 for name, c in checks.items() if name.endswith("_rss_slope")), checks


def test_real_client_verdict_reads_locust_failures_and_perf_analyzer_exit_codes() -> None:
    clean = {"locust": {"requests": 900, "failures": 0, "aborted": False, "exit_code": 0},
             "perf_analyzer": {"exit_codes": [0, 0, 0], "requests": 3000}}
    samples = _samples(lambda m: 100.0).samples
    for clients, ok in ((clean, True),
                        ({**clean, "locust": {**clean["locust"], "failures": 1}}, False),
                        ({**clean, "locust": {**clean["locust"], "requests": 0}}, False),
                        ({**clean, "perf_analyzer": {"exit_codes": [0, 99, 0], "requests": 2000}}, False),
                        ({**clean, "perf_analyzer": {"exit_codes": [], "requests": 0}}, False),
                        ({**clean, "perf_analyzer": {"skipped": "not installed"}}, True)):
        report = Report(3600, samples=list(samples), clients=clients)
        judge(report, SoakOptions(warmup_s=360))
        assert report.ok is ok, (clients, report.checks)


def test_slope_window_is_the_last_seconds_given() -> None:
    report = _samples(lambda m: 100 + 0.5 * max(0.0, m - 40))  # flat for 40 minutes, then a leak
    judge(report, SoakOptions(warmup_s=360, slope_window_s=600))  # the last 10 minutes: all leak
    assert 0.45 < report.checks["triton_rss_slope"]["value"] < 0.55 and not report.ok
