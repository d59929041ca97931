"""`tritonstack bench` (the all-in-one suite): step selection, skips with reasons, the summary section.

The measuring steps themselves are benchmarks, not tests (`make bench`); here the orchestration runs for real
with steps that have nothing to measure, so it finishes in seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [str(Path(sys.executable).parent / "tritonstack"), "bench"]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make bench installs it)")
def test_suite_reports_every_step_and_why_it_was_skipped(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    output.write_text("# Benchmarks\n\n<!-- bench:triton -->\nkept as it was\n<!-- /bench:triton -->\n")
    empty = tmp_path / "repository"
    empty.mkdir()
    proc = subprocess.run([*CLI, "--only=llm", "--only=jobs", f"--repository={empty}", f"--output={output}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = output.read_text()
    assert "kept as it was" in text  # other sections are left alone
    summary = text[text.index("<!-- bench:summary -->"):text.index("<!-- /bench:summary -->")]
    assert "tritonstack bench --duration=5 --rounds=2" in summary and "--only=llm --only=jobs" in summary
    assert "| `triton` | skipped: not selected (`--only`) |" in summary
    assert "| `jobs` | skipped: no minilm in" in summary
    assert "| `llm` | skipped: no smollm2 in" in summary
    assert "load average" in summary


def test_unknown_step_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run([*CLI, "--only=everything", f"--output={tmp_path / 'B.md'}"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    message = " ".join(proc.stderr.replace("│", " ").split())  # rich wraps the error box
    assert "unknown step(s) ['everything']" in message and "triton, baseline, gateway, jobs, llm" in message
    assert not (tmp_path / "B.md").exists()
