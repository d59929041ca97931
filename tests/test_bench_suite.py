"""`tritonstack bench` (the all-in-one suite): step selection, skips with reasons, the summary section; the bare
apps the gateway step measures as floors; the LLM step's rate arithmetic.

The measuring steps themselves are benchmarks, not tests (`make bench`); here the orchestration runs for real
with steps that have nothing to measure, so it finishes in seconds.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http

from loadtest.bench import floors
from stack.process import ManagedProcess, free_port
from stack.triton import TritonServer

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


@pytest.mark.parametrize("kind", sorted(floors.LABELS))
def test_floor_apps_answer_like_the_gateway(kind: str, triton_server: TritonServer, tmp_path: Path) -> None:
    """The bare apps `bench gateway` measures as floors really embed (a broken floor would measure errors)."""
    port = free_port()
    app = ManagedProcess(f"floor-{kind}", floors.argv(kind, triton_server.grpc_url, port),
                         log_path=tmp_path / "floor.log").start()
    try:
        app.wait_ready(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), timeout=60)
        body = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"model": "minilm", "input": "hello"},
                          timeout=30).json()
    finally:
        app.stop()
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    tensor = tritonclient.http.InferInput("text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"hello"]], dtype=np.object_))
    with tritonclient.http.InferenceServerClient(triton_server.http_url) as client:
        direct = client.infer("minilm", [tensor]).as_numpy("embedding")[0]
    np.testing.assert_allclose(vector, direct, rtol=1e-5, atol=1e-6)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_engine_ceiling_times_the_served_decoders_graphs(smollm2_export, monkeypatch: pytest.MonkeyPatch) -> None:
    from loadtest.bench.llm_steps import engine_steps
    from triton_models.llm_engine import Decoder

    sessions = []
    step = Decoder.step

    def recording(self, input_ids, new, slots):  # which graph ran each step, by the rows it carried
        sessions.append((input_ids.shape[0], self.single_row is not None and input_ids.size == 1))
        return step(self, input_ids, new, slots)

    monkeypatch.setattr(Decoder, "step", recording)
    steps = engine_steps(smollm2_export.repository, "smollm2", rows=4, context=20, steps=3, alternations=1)
    assert steps["step_1_ms"] > 0 and steps["step_n_ms"] > 0
    assert steps["ceiling"] == pytest.approx(4 * steps["step_1_ms"] / steps["step_n_ms"])
    assert {rows: packed for rows, packed in sessions} == {1: True, 4: False}  # one row: the 4-bit graph


def test_llm_rates_count_the_tokens_of_their_window() -> None:
    from loadtest.bench.llm import StreamTiming, _aggregate, _decode_rate

    a = StreamTiming(sent=0.0, arrivals=[0.1, 0.2, 0.3], tokens=5, counts=[1, 3, 5])
    b = StreamTiming(sent=0.05, arrivals=[0.15, 0.3], tokens=4, counts=[1, 4])  # its first token comes last
    assert a.decode_tps == pytest.approx(4 / 0.2)
    assert _decode_rate([a, b]) == pytest.approx((5 - 1 + 4 - 1) / 0.15)  # tokens after 0.15 s, over 0.15 s
    assert _aggregate([[a, b]]) == [pytest.approx(9 / 0.3)]  # all tokens from the first send to the last token


def test_llm_ratios_take_each_rounds_mean_single_stream() -> None:
    """A round's single stream runs before and after its concurrent runs; its ratio divides by their mean."""
    from loadtest.bench.llm import Rounds, StreamTiming

    def stream(seconds: float) -> StreamTiming:  # 10 tokens over `seconds`
        return StreamTiming(sent=0.0, arrivals=[seconds / 10, seconds], tokens=10, counts=[1, 10])

    rounds = Rounds(single=[stream(1.0), stream(0.5), stream(2.0), stream(2.0)])  # 10 and 20 tokens/s; 5 and 5
    assert rounds.reference(lambda t: t.tokens / t.total_s) == [pytest.approx(15.0), pytest.approx(5.0)]
