"""`tritonstack bench llm`'s peer (llama.cpp's `llama-server`): the pure helpers only. No test builds llama.cpp or
starts a server: token counting from SSE chunks, per-round ratios, the build's command lines, the section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.bench import llama_cpp
from loadtest.bench.llm_peer import (
    DONE,
    ChatStream,
    PeerRounds,
    aggregate_tps,
    gateway_endpoint,
    llama_server_endpoint,
    median,
    per_round_ratios,
    record_chunk,
    request_body,
    sse_payload,
)

ROLE = 'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}'


def _content(text: str) -> str:
    return "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})


def _feed(lines: list[str], times: list[float]) -> ChatStream:
    stream = ChatStream(sent=0.0)
    for line, at in zip(lines, times, strict=True):
        payload = sse_payload(line)
        if payload == DONE:
            break
        if isinstance(payload, dict):
            record_chunk(stream, payload, at)
    return stream


def test_usage_counts_tokens_when_a_chunk_carries_several() -> None:
    """Our gateway coalesces tokens under load: 3 content chunks, 5 tokens by the usage chunk."""
    lines = [ROLE, "", _content("The"), _content(" capital of"), ": keep-alive comment", _content(" France."),
             'data: {"choices":[],"usage":{"prompt_tokens":31,"completion_tokens":5,"total_tokens":36}}',
             "data: [DONE]", _content("after done")]
    stream = _feed(lines, [0.1, 0.1, 0.2, 0.3, 0.3, 0.6, 0.6, 0.6, 0.7])
    assert stream.arrivals == [0.2, 0.3, 0.6]  # the role chunk has no content
    assert (stream.tokens, stream.prompt_tokens) == (5, 31)
    assert stream.ttft_s == pytest.approx(0.2)
    assert stream.decode_tps == pytest.approx(4 / 0.4)  # tokens after the first over first → last content
    assert stream.tps == pytest.approx(5 / 0.6)


def test_without_usage_each_content_chunk_is_a_token() -> None:
    lines = [_content("a"), _content("b"), 'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}']
    stream = _feed(lines, [1.0, 2.0, 3.0])
    assert stream.tokens == 2 and stream.usage_tokens is None


def test_an_error_event_fails_the_stream() -> None:
    with pytest.raises(RuntimeError, match="stream failed"):
        _feed(['data: {"error":{"message":"boom"}}'], [0.0])


def test_both_endpoints_get_the_same_greedy_streamed_request() -> None:
    ours = request_body(gateway_endpoint("http://127.0.0.1:1", "key", "smollm2"), "hi", 16)
    peer = request_body(llama_server_endpoint("http://127.0.0.1:2"), "hi", 16)
    assert ours.pop("min_tokens") == 16 and peer.pop("ignore_eos") is True  # exactly 16 tokens on both sides
    assert ours == peer == {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16,
                            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}


def test_ratios_are_per_round_and_their_median() -> None:
    ratios = per_round_ratios([50.0, 40.0, 60.0], [100.0, 50.0, 60.0])
    assert ratios == [0.5, 0.8, 1.0] and median(ratios) == 0.8
    with pytest.raises(ValueError):
        per_round_ratios([1.0], [1.0, 2.0])


def _stream(sent: float, arrivals: list[float], tokens: int) -> ChatStream:
    return ChatStream(sent=sent, arrivals=arrivals, usage_tokens=tokens, prompt_tokens=30)


def test_rounds_summary_pairs_each_round() -> None:
    record = PeerRounds()
    for side, scale in (("ours", 1.0), ("llama-server", 2.0)):
        for _ in range(2):
            record.single[side].append(_stream(0.0, [0.1 * scale, 1.1 * scale], 11))
            record.many[side].append([_stream(0.0, [0.2, 2.0 * scale], 10), _stream(0.5, [0.7, 1.0], 10)])
    summary = record.summary()
    assert summary["decode_tps"]["ours"] == [pytest.approx(10.0)] * 2
    assert summary["decode_tps"]["ratio_median"] == pytest.approx(2.0)
    assert summary["ttft_ms"]["ratios"] == [pytest.approx(0.5)] * 2
    assert summary["many_tps"]["ratios"] == [pytest.approx(2.0)] * 2  # 20 tokens over 2 s vs over 4 s
    assert aggregate_tps(record.many["ours"][0]) == pytest.approx(10.0)
    assert summary["prompt_tokens"] == {"ours": 30, "llama-server": 30}
    assert summary["tokens_per_chunk"]["ours"] == pytest.approx(5.0)


def test_cmake_gets_exactly_the_explicit_cpu_features(tmp_path: Path) -> None:
    configure = llama_cpp.configure_command(tmp_path / "src", tmp_path / "build")
    assert configure[:5] == ["cmake", "-S", str(tmp_path / "src"), "-B", str(tmp_path / "build")]
    assert configure[5:] == ["-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
                             "-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AMX_TILE=OFF",
                             "-DGGML_AMX_INT8=OFF", "-DLLAMA_CURL=OFF", "-DCMAKE_BUILD_TYPE=Release"]
    assert llama_cpp.build_command(tmp_path / "build") == ["cmake", "--build", str(tmp_path / "build"), "--target",
                                                          "llama-server", "-j2"]


def test_the_build_is_cached_outside_the_repository(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    root = tmp_path / "tritonstack" / "llama.cpp" / llama_cpp.VERSION
    assert llama_cpp.cache_root() == root
    assert llama_cpp.server_binary() == root / "build" / "bin" / "llama-server"


def test_a_missing_compiler_is_one_line_saying_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    monkeypatch.setattr(llama_cpp.shutil, "which", lambda tool: None if tool == "g++" else "/usr/bin/" + tool)
    with pytest.raises(llama_cpp.PeerUnavailableError) as caught:
        llama_cpp.ensure_llama_server(progress=lambda _: None, root=tmp_path)
    assert str(caught.value) == "building llama-server needs g++: `sudo apt-get install g++`"


def test_a_wrong_sdist_hash_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fake_pip(argv: list[str], log: Path, what: str) -> None:
        (tmp_path / f"llama_cpp_python-{llama_cpp.VERSION}.tar.gz").write_bytes(b"not the pinned file")

    monkeypatch.setattr(llama_cpp, "_run", fake_pip)
    with pytest.raises(llama_cpp.PeerUnavailableError, match="expected " + llama_cpp.SDIST_SHA256):
        llama_cpp.download_sdist(tmp_path, tmp_path / "log")


def test_the_section_says_why_the_peer_was_not_measured() -> None:
    from loadtest.bench.llm_report import peer_section

    text = peer_section({"peer": None, "peer_reason": "not measured (`--no-peer`)"}, 128, 8)
    assert text.endswith("llama-server not measured (`--no-peer`).")


def test_llama_server_runs_with_two_threads_and_a_slot_per_stream(tmp_path: Path) -> None:
    argv = llama_cpp.server_command(tmp_path / "llama-server", tmp_path / "m.gguf", 8080, threads=2, parallel=8,
                                    slot_context=1024)
    assert argv[argv.index("-t") + 1] == "2" and argv[argv.index("-np") + 1] == "8"
    assert argv[argv.index("-c") + 1] == "8192" and "-cb" in argv
