"""The soak command (loadtest/soak.py, issue #9 item 7) in a 12-second smoke run, so that it does not rot.

The real soak is 10 minutes and not part of `make test`: `.venv/bin/python -m loadtest.soak --duration 600`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_soak_smoke_run_passes_and_reports_every_measurement(minilm_repository: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    argv = [sys.executable, "-m", "loadtest.soak", "--repository", str(minilm_repository), "--duration", "12",
            "--warmup", "4", "--sample-every", "1", "--state-dir", str(tmp_path / "state"), "--json",
            str(report_path)]
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
    for role in ("gateway", "worker"):
        for check in ("rss_growth", "fds_delta", "connections_delta"):
            assert checks[f"{role}_{check}"]["ok"], checks
        readings = [s for s in report["samples"] if s["role"] == role]
        assert len(readings) >= 10 and all(s["rss_mb"] > 0 and s["fds"] > 0 for s in readings)
