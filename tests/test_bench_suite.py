"""`tritonstack bench` (the all-in-one suite): step selection, skips with reasons, the summary section; the bare
apps the gateway step measures as floors; the LLM step's rate arithmetic; the rerank step's requests, closed-loop
arithmetic and section.

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
    assert "| `rerank` | skipped: not selected (`--only`) |" in summary
    assert "| `jobs` | skipped: no minilm in" in summary
    assert "| `llm` | skipped: no smollm2 in" in summary
    assert "load average" in summary


def test_unknown_step_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run([*CLI, "--only=everything", f"--output={tmp_path / 'B.md'}"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    message = " ".join(proc.stderr.replace("│", " ").split())  # rich wraps the error box
    assert "unknown step(s) ['everything']" in message and "triton, baseline, gateway, rerank, jobs, llm" in message
    assert not (tmp_path / "B.md").exists()


@pytest.mark.parametrize("kind", sorted(floors.LABELS))
def test_floor_apps_answer_like_the_gateway(kind: str, triton_server: TritonServer, tmp_path: Path) -> None:
    """The bare apps `bench gateway` measures as floors really embed (a broken floor would measure errors)."""
    port = free_port()
    app = ManagedProcess(f"floor-{kind}", floors.argv(kind, triton_server.http_url, port),
                         log_path=tmp_path / "floor.log").start()
    try:
        app.wait_ready(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), timeout=60)
        body = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"model": "minilm", "input": "hello"},
                          timeout=30).json()
        if kind == "asgi":  # it also relays /v2 to Triton as it comes (the passthrough's floor)
            relayed = httpx.post(f"http://127.0.0.1:{port}/v2/models/minilm/infer", timeout=30, json={
                "inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["hello"]}]})
            assert relayed.status_code == 200 and relayed.json()["outputs"], relayed.text
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


def test_rerank_paths_send_the_same_unique_pairs() -> None:
    """Direct Triton gets the gateway request's (query, document) pairs as one [n, 1] batch; no two documents of a
    request are the same text (the gateway would score a repeated pair once)."""
    import json

    from loadtest.bench.rerank import MODEL, direct_body, gateway_body

    text = "request 3 from client 1 of run 2"
    gateway = json.loads(gateway_body(16).replace("{TEXT}", text))
    direct = {i["name"]: i for i in json.loads(direct_body(16).replace("{TEXT}", text))["inputs"]}
    assert gateway["model"] == MODEL and text in gateway["query"]
    assert direct["query"]["data"] == [gateway["query"]] * 16
    assert direct["document"]["data"] == gateway["documents"]
    assert direct["query"]["shape"] == direct["document"]["shape"] == [16, 1]
    assert {direct["query"]["datatype"], direct["document"]["datatype"]} == {"BYTES"}
    assert len(set(gateway["documents"])) == 16 and all(text in d for d in gateway["documents"])


def test_closed_loop_rate_sums_each_clients_rate_over_its_busy_time() -> None:
    from loadtest.bench.closed_loop import Client, LoopResult

    result = LoopResult(2, [Client([1.0, 2.0], 0, 4.0), Client([3.0], 1, 5.0)])
    assert result.rps == pytest.approx(2 / 4.0 + 1 / 5.0)  # no rounding to the requests inside a window
    assert (result.requests, result.errors) == (3, 1)
    assert result.p50_ms == pytest.approx(2000.0)
    assert LoopResult(1, [Client([0.5], 0, 0.5)]).p99_ms == pytest.approx(500.0)


def test_rerank_section_reports_pairs_per_s_and_each_rounds_ratio() -> None:
    from loadtest.bench.closed_loop import Client, LoopResult
    from loadtest.bench.rerank_report import DIRECT, GATEWAY, Results, render

    def run(rps: float, latency_s: float) -> LoopResult:  # one client answering `rps` requests/s for 10 s
        return LoopResult(1, [Client([latency_s] * int(rps * 10), 0, 10.0)])

    runs = {(DIRECT, 16, 1): [run(2.0, 0.5), run(2.5, 0.4)], (GATEWAY, 16, 1): [run(1.8, 0.55), run(2.0, 0.5)]}
    res = Results(runs, docs=(16,), concurrency=(1,), duration_s=10, tokens_per_pair=69.0, max_score_diff=0.0,
                  load=(1.5, 2.0))
    assert res.ratios(16, 1) == [pytest.approx(0.9), pytest.approx(0.8)]
    text = render(res, "tritonstack bench rerank --duration=10 --rounds=2")
    assert "Command: `tritonstack bench rerank --duration=10 --rounds=2`" in text
    assert "load average 1.5 at the start, 2.0 at the end" in text and "69 tokens" in text
    assert "| direct Triton (KServe v2 JSON, one batch) | 16 | 1 | 36 | 450 | 450 | 45 | 0 |" in text  # medians
    assert "| gateway POST /v1/rerank | 16 | 1 | 30 | 525 | 525 | 38 | 0 |" in text
    assert "| 16 | 1 | 0.85× | 0.90, 0.80 |" in text  # the median of the rounds' ratios, then each round's
