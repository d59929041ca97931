"""Fast checks of the generation pieces without a server or the real model: streamed detokenisation with stop
strings, sampling, the in-place KV slots, the prefix cache, lossless 4-bit repacking, parity gates and option checks
(the scheduler's: test_llm_scheduler.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export.errors import OptionError, ParityError
from export.llm.parity import GenerationParity, enforce
from export.llm.pipeline import Smollm2Request, validate_smollm2
from export.llm.specs import GenerationServing
from tests.llm_fakes import Pieces, slots, tiny_graph
from triton_models import llm_engine
from triton_models.llm_engine import KVSlots, Place, check_provider, check_runtime, unpadded_passes
from triton_models.llm_prefix import PrefixCache
from triton_models.llm_text import SamplingParams, TextStream, penalize, sample


def test_text_stream_holds_back_a_possible_stop_and_cuts_before_it() -> None:
    stream = TextStream(Pieces(), ("Paris",))
    assert [stream.push(i) for i in (0, 1, 2)] == [("The", False), (" capital", False), (" is", False)]
    assert stream.push(3) == (" ", False)  # "Par" may start "Paris": held back
    assert stream.push(4) == ("", True)  # "Paris" reached: the text ends before it
    plain = TextStream(Pieces(), ("zzz",))
    assert "".join(plain.push(i)[0] for i in (0, 3, 4, 5)) + plain.flush() == "The Paris."


def test_sampling_greedy_nucleus_and_seed() -> None:
    logits = np.log(np.array([0.1, 0.6, 0.3], dtype=np.float32))
    greedy = SamplingParams(max_tokens=4, temperature=0.0, top_p=1.0, seed=None)
    assert sample(logits, greedy, np.random.default_rng()) == 1
    nucleus = SamplingParams(max_tokens=4, temperature=1.0, top_p=0.5, seed=1)
    assert {sample(logits, nucleus, np.random.default_rng(s)) for s in range(20)} == {1}
    free = SamplingParams(max_tokens=4, temperature=1.0, top_p=1.0, seed=3)
    rngs = (np.random.default_rng(3), np.random.default_rng(3))
    draws = [[sample(logits, free, rng) for _ in range(30)] for rng in rngs]
    assert draws[0] == draws[1] and len(set(draws[0])) > 1
    with pytest.raises(ValueError):
        SamplingParams(max_tokens=0, temperature=0.0, top_p=1.0, seed=None).validate()


def test_penalties_subtract_presence_once_and_frequency_per_count() -> None:
    params = SamplingParams(max_tokens=8, temperature=0.0, top_p=1.0, seed=None, presence_penalty=1.0,
                            frequency_penalty=0.5)
    logits = np.zeros(6, dtype=np.float32)
    penalize(logits, [4, 2, 4, 4], params)
    assert logits.tolist() == [0, 0, -1.5, 0, -2.5, 0]  # token 2 once: 1 + 0.5; token 4 three times: 1 + 1.5
    untouched = np.zeros(6, dtype=np.float32)
    penalize(untouched, [], params)  # the first token: nothing generated yet
    penalize(untouched, [1, 1], SamplingParams(max_tokens=8, temperature=0.0, top_p=1.0, seed=None))
    assert not untouched.any()
    for name in ("presence_penalty", "frequency_penalty"):
        with pytest.raises(ValueError, match=f"{name} must be within -2..2"):
            SamplingParams(max_tokens=8, temperature=0.0, top_p=1.0, seed=None, **{name: -2.5}).validate()


def _row(slots: KVSlots, r: int) -> list[float]:
    return slots.cache[0][r, 0, : int(slots.lengths[r]), 0].tolist()


def test_kv_slots_keep_each_rows_tokens_when_rows_join_leave_and_grow() -> None:
    first, pair = slots([2]), slots([5, 3])
    merged = first.merged(pair)
    assert merged.lengths.tolist() == [2, 5, 3] and all(t.shape == (3, 1, 8, 1) for t in merged.cache)
    assert [_row(merged, r) for r in range(3)] == [_row(first, 0), _row(pair, 0), _row(pair, 1)]
    assert merged.selected([0, 1, 2]) is merged  # every row stays in place: no copy of the cache
    kept = merged.selected([2, 0])
    assert kept.lengths.tolist() == [3, 2] and [_row(kept, 0), _row(kept, 1)] == [_row(pair, 1), _row(first, 0)]
    assert merged.reserve(8) is merged
    sized = first.merged(pair, capacity=100)  # the scheduler sizes a batch for its rows' longest possible length
    assert sized.capacity >= 100 and [_row(sized, r) for r in range(3)] == [_row(merged, r) for r in range(3)]
    assert sized.selected([1], capacity=100).capacity >= 100
    grown = merged.reserve(9)  # past the capacity: a copy, in whole chunks of columns
    assert grown.capacity % 64 == 0 and [_row(grown, r) for r in range(3)] == [_row(merged, r) for r in range(3)]
    alone = merged.row(1)  # one row, exactly its length (what the prefix cache keeps)
    assert alone.lengths.tolist() == [5] and all(t.flags.c_contiguous and t.shape == (1, 1, 5, 1)
                                                 for t in alone.cache)
    assert [t.shape for t in alone.prefix(3)] == [(1, 1, 3, 1)] * 4
    assert all(np.shares_memory(v, t) for v, t in zip(alone.prefix(3), alone.cache, strict=True))  # views


def test_prefix_cache_reuses_the_longest_shared_prefix() -> None:
    prefixes = PrefixCache(max_tokens=20, min_tokens=3)
    system = list(range(10))
    prefixes.store([*system, 50, 51], slots([12]).row(0))
    assert prefixes.lookup([*system[:2], 99]) == (0, None)  # shorter than min_tokens
    reused, cache = prefixes.lookup([*system, 60, 61, 62])
    assert reused == 10 and cache is not None and cache[0].shape == (1, 1, 10, 1)
    reused, _ = prefixes.lookup([*system, 50, 51])  # the same prompt again: all but its last token
    assert reused == 11 and prefixes.hits == 2
    prefixes.store(list(range(100, 112)), slots([12]).row(0))  # 24 tokens > 20: the oldest entry goes
    assert prefixes.tokens == 12 and prefixes.lookup([*system, 1])[1] is None


def test_repacked_q4_blocks_multiply_like_fp32(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from export.llm.repack import repack

    rng = np.random.default_rng(0)
    k, n = 64, 24
    codes = rng.integers(0, 16, size=(n, k // 32, 32)).astype(np.float32)
    codes[..., 0], codes[..., 1] = 0, 15  # Q4_1 maps each block's min to 0 and its max to 15
    scale, low = rng.random((n, k // 32, 1)) * 0.05, -rng.random((n, k // 32, 1)) * 0.4
    weight = (codes * scale + low).reshape(n, k).T.astype(np.float32)  # [K, N] of exact Q4_1 blocks
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, n])],
        [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "fp32.onnx")
    report = repack(tmp_path / "fp32.onnx", tmp_path / "packed.onnx")
    assert report.q4 == 1 and not report.kept
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "packed.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"x": x})[0] - x @ weight).max() < 1e-4


def test_parity_gate_and_option_checks() -> None:
    failing = GenerationParity("x", ["p"], [[1, 2]], [[1, 3]], [[1, 3]], 0.0, 0.0, 1e-2, ["a"])
    with pytest.raises(ParityError, match="greedy tokens differ"):
        enforce(failing)
    validate_smollm2(Smollm2Request(target="gpu"))
    with pytest.raises(OptionError, match="expected cpu or gpu"):
        validate_smollm2(Smollm2Request(target="tpu"))
    with pytest.raises(OptionError):
        validate_smollm2(Smollm2Request(serving=GenerationServing(max_kv_tokens=100, max_context=2048)))
    with pytest.raises(OptionError):
        validate_smollm2(Smollm2Request(weights="int3"))
    with pytest.raises(OptionError, match="prefill-chunk-tokens"):
        validate_smollm2(Smollm2Request(serving=GenerationServing(prefill_chunk_tokens=-1)))
    with pytest.raises(OptionError, match="max-stream-interval"):
        validate_smollm2(Smollm2Request(serving=GenerationServing(max_stream_interval=0)))
    with pytest.raises(ValueError, match="max_stream_interval must be >= 1"):
        SamplingParams(max_tokens=4, temperature=0.0, top_p=1.0, seed=None, max_stream_interval=0).validate()


def test_an_onnx_runtime_that_cannot_load_the_graph_is_refused_with_what_to_install() -> None:
    check_runtime("1.32.0")
    check_runtime("1.40.1")
    for old in ("1.31.1", "1.23.2"):  # 1.23: the last release for Python 3.10 (NVIDIA's Triton 24.10 image)
        with pytest.raises(RuntimeError, match=r"needs onnxruntime >= 1\.32 .*onnxruntime " + old.replace(".", r"\.")):
            check_runtime(old)
    check_runtime("1.24.4", gpu_graph=True)  # the GPU graph: the GPU image's CUDA 12 onnxruntime-gpu
    with pytest.raises(RuntimeError, match=r"onnxruntime-gpu >= 1\.24.*onnxruntime 1\.23\.2.*CUDA 12"):
        check_runtime("1.23.2", gpu_graph=True)


class Session:
    def __init__(self, providers: list[str]) -> None:
        self.providers = providers

    def get_providers(self) -> list[str]:
        return self.providers


def test_a_gpu_session_that_fell_back_to_the_cpu_is_refused() -> None:
    """ONNX Runtime lists CUDAExecutionProvider whenever it is built in, and falls back to the CPU when its libraries
    do not load (a CUDA 13 build in a CUDA 12 image): the session's own providers decide."""
    gpu = Place("cuda", 0)
    check_provider(Session(["CUDAExecutionProvider", "CPUExecutionProvider"]), gpu)
    check_provider(Session(["CPUExecutionProvider"]), llm_engine.HOST)
    with pytest.raises(RuntimeError, match=r"with \['CPUExecutionProvider'\], not CUDAExecutionProvider.*CUDA 12"):
        check_provider(Session(["CPUExecutionProvider"]), gpu)


def test_unpadded_passes_follow_group_query_attentions_rule() -> None:
    # rows: (cached tokens, new tokens)
    assert unpadded_passes([0, 0, 0], [3, 3, 5]) == [[0, 1], [2]]  # nothing cached: by number of new tokens
    assert unpadded_passes([12, 12, 0, 7], [3, 3, 3, 1]) == [[0], [1], [2], [3]]  # cached + several tokens: alone
    assert unpadded_passes([12, 0, 5], [1, 1, 1]) == [[0, 1, 2]]  # one new token each: a decode-shaped pass


@pytest.fixture(scope="module")
def gpu_decoder(tmp_path_factory: pytest.TempPathFactory) -> llm_engine.Decoder:
    return llm_engine.Decoder(*tiny_graph(tmp_path_factory.mktemp("tiny-decoder"), "fp16"))


def test_the_unpadded_graph_refuses_several_rows_over_cached_tokens_and_the_decoder_says_why(
        gpu_decoder, monkeypatch: pytest.MonkeyPatch) -> None:
    """GroupQueryAttention's own refusal, on the GPU target's graph (ONNX Runtime's CPU provider shares the input
    check with CUDA's): two rows of three new tokens over two cached ones; the decoder refuses it first, by name."""
    over_cached = gpu_decoder.empty(2)
    over_cached.lengths[:] = 2
    ids, new = np.ones((2, 3), dtype=np.int64), np.array([3, 3])
    with pytest.raises(ValueError, match="batch_size must be 1 when sequence_length > 1 and past context"):
        gpu_decoder.step(ids, new, over_cached)
    monkeypatch.setattr(llm_engine, "_check_unpadded", lambda *_: None)
    with pytest.raises(Exception, match="batch_size must be 1 when sequence_length > 1 and past context is given"):
        gpu_decoder.step(ids, new, over_cached)
    logits, fresh = gpu_decoder.step(ids, new, gpu_decoder.empty(2))  # nothing cached: one pass of both rows
    assert fresh.lengths.tolist() == [3, 3] and np.isfinite(logits).all()


def test_the_cache_copies_are_synchronised_before_each_pass(gpu_decoder, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU, CuPy queues the cache copies on its stream and ONNX Runtime computes on another: each pass first
    waits for CuPy's (`Place.synchronize`), then runs."""
    events: list[str] = []
    monkeypatch.setattr(Place, "synchronize", lambda self: events.append("synchronize"))
    run = gpu_decoder.session.run_with_iobinding
    monkeypatch.setattr(gpu_decoder.session, "run_with_iobinding", lambda b: (events.append("run"), run(b))[1],
                        raising=False)
    gpu_decoder.decode([1, 2], gpu_decoder.empty(2))
    assert events == ["synchronize", "run"]


def test_logprobs_entries_in_openais_shape_with_raw_bytes() -> None:
    from tokenizers import Tokenizer, decoders, models

    from triton_models.llm_logprobs import Logprobs, TokenNames

    tokenizer = Tokenizer(models.BPE(vocab={"a": 0, "Ġb": 1, "Ã": 2, "©": 3}, merges=[]))
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<|end|>"])  # id 4
    names = TokenNames(tokenizer)
    assert names.describe(1) == {"token": " b", "bytes": [32, 98]}  # Ġ stands for the space byte
    assert names.describe(2) == {"token": "\\xc3", "bytes": [0xC3]}  # half of "é": its byte, escaped text
    assert names.describe(4) == {"token": "<|end|>", "bytes": list(b"<|end|>")}
    logits = np.log(np.array([0.1, 0.2, 0.4, 0.3, 1e-9], dtype=np.float32))
    recorder = Logprobs(names, top=2)
    recorder.record(logits, 1)
    recorder.record(logits, 3)
    first, second = json.loads(recorder.take())
    assert recorder.take() == "[]"  # taken once
    assert first["token"] == " b" and first["logprob"] == pytest.approx(np.log(0.2), abs=1e-6)
    assert [t["token"] for t in first["top_logprobs"]] == ["\\xc3", "\\xa9"]  # the two likeliest, best first
    assert [t["logprob"] for t in first["top_logprobs"]] == pytest.approx([np.log(0.4), np.log(0.3)], abs=1e-6)
    assert second["bytes"] == [0xA9]
    assert Logprobs(names, top=0).take() == "[]"
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(max_tokens=4, temperature=0.0, top_p=1.0, seed=None, logprobs=21).validate()
