"""SmolLM2 export and the generation model on a real tritonserver (gRPC streaming, official tritonclient).

Export parity (token for token vs transformers), streaming, finish reasons, determinism, continuous batching
(shared forward passes, proven by the model's own step ids and its Prometheus counters), overload.
"""

from __future__ import annotations

import random
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from export.llm.parity import PROMPTS
from stack.triton import TritonServer
from tests.fixtures.exported import ExportedRepository
from tests.fixtures.llm import MAX_BATCH_ROWS, GenerationStream, chat, generate
from triton_models.llm_text import TextStream

pytestmark = pytest.mark.slow
FRANCE = chat(PROMPTS[0])


def test_export_parity_token_for_token(smollm2_export: ExportedRepository) -> None:
    (report,) = smollm2_export.result.reports
    assert report.passed and not report.mismatches and not report.batch_mismatches and not report.template_mismatches
    assert report.single == report.reference == report.batched
    assert report.max_abs_diff < 1e-3
    assert report.answers[0] == "The capital of France is Paris."
    version = smollm2_export.repository / "smollm2" / "1"
    names = {p.name for p in version.iterdir()}
    assert {"model.py", "model.onnx", "tokenizer.json", "chat_template.jinja", "generation.json"} <= names
    assert "decoupled: true" in (version.parent / "config.pbtxt").read_text()


def _streamed(tokenizer: Tokenizer, ids: list[int], stop: tuple[str, ...]) -> tuple[str, int | None]:
    """(the text a TextStream hands out for `ids`, the index of the token it stopped at)."""
    stream, out = TextStream(tokenizer, stop), []
    for i, token in enumerate(ids):
        delta, stopped = stream.push(token)
        out.append(delta)
        assert "\ufffd" not in delta or "\ufffd" in tokenizer.decode(ids[: i + 1])  # never half a character
        if stopped:
            return "".join(out), i
    return "".join(out) + stream.flush(), None


def _expected(tokenizer: Tokenizer, ids: list[int], stop: tuple[str, ...]) -> tuple[str, int | None]:
    """The same by decoding every id at every token (what TextStream did before it decoded a window)."""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
        hits = [h for h in (text.find(s) for s in stop) if h >= 0]
        if hits:
            return text[: min(hits)], i
    return tokenizer.decode(ids, skip_special_tokens=True).removesuffix("\ufffd"), None


def test_incremental_detokenisation_equals_decoding_everything(smollm2_export: ExportedRepository) -> None:
    tokenizer = Tokenizer.from_file(str(smollm2_export.repository / "smollm2" / "1" / "tokenizer.json"))
    texts = ["The capital of France is Paris. Ça coûte 5 € — naïve café, 東京タワー 🚀🇫🇷 and 👩‍💻 done.",
             "Line one\n\n  indented\tcode: `x = [1, 2]` ### Heading\r\n", "日本語のテキストです。" * 3]
    rng = random.Random(0)
    vocab = tokenizer.get_vocab_size()
    cases = [tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    cases += [[rng.randrange(vocab) for _ in range(60)] for _ in range(20)]  # arbitrary bytes, special tokens
    for ids in cases:
        text = tokenizer.decode(ids, skip_special_tokens=True)
        cut = text[len(text) // 2 : len(text) // 2 + 3]
        for stop in [(), ("zzzz",), (cut,), (cut, text[-2:]), (text[: len(text) // 3],)]:
            stop = tuple(s for s in stop if s)
            assert _streamed(tokenizer, ids, stop) == _expected(tokenizer, ids, stop), (ids, stop)


def test_stream_arrives_token_by_token(smollm2_triton: TritonServer) -> None:
    gen = generate(smollm2_triton, FRANCE, temperature=0.0, max_tokens=12)
    assert len(gen.responses) >= 5 and gen.done and gen.final.error is None
    assert [r.finish_reason for r in gen.responses[:-1]] == [""] * (len(gen.responses) - 1)
    assert gen.responses[0].at < gen.final.at - 0.02  # the first token came well before the last one
    steps = [r.step for r in gen.responses]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert gen.final.finish_reason == "stop" and "Paris" in gen.text
    assert gen.final.prompt_tokens > 10 and gen.final.completion_tokens == len(gen.responses)  # + <|im_end|>


def test_greedy_is_deterministic_and_matches_transformers(smollm2_triton: TritonServer,
                                                          smollm2_export: ExportedRepository) -> None:
    (report,) = smollm2_export.result.reports
    first = generate(smollm2_triton, FRANCE, temperature=0.0, max_tokens=16)
    second = generate(smollm2_triton, FRANCE, temperature=0.0, max_tokens=16)
    assert first.text == second.text == report.answers[0]
    assert first.final.completion_tokens == len(report.reference[0])


def test_seed_makes_sampling_repeatable(smollm2_triton: TritonServer) -> None:
    haiku = chat("Write a haiku about the sea.")
    runs = [generate(smollm2_triton, haiku, temperature=0.9, top_p=0.95, seed=7, max_tokens=8) for _ in range(2)]
    assert runs[0].text == runs[1].text and runs[0].final.finish_reason == "length"


def test_stop_sequence_and_max_tokens(smollm2_triton: TritonServer) -> None:
    stopped = generate(smollm2_triton, FRANCE, temperature=0.0, stop=["Paris"], max_tokens=16)
    assert stopped.text == "The capital of France is " and stopped.final.finish_reason == "stop"
    cut = generate(smollm2_triton, FRANCE, temperature=0.0, max_tokens=3)
    assert cut.text == "The capital of" and cut.final.finish_reason == "length"
    assert cut.final.completion_tokens == 3


def test_min_tokens_masks_the_end_of_sequence(smollm2_triton: TritonServer) -> None:
    natural = generate(smollm2_triton, FRANCE, temperature=0.0, max_tokens=24)
    assert natural.final.finish_reason == "stop" and natural.final.completion_tokens < 20
    longer = generate(smollm2_triton, FRANCE, temperature=0.0, min_tokens=20, max_tokens=20)
    assert longer.final.finish_reason == "length" and longer.final.completion_tokens == 20
    assert longer.text.startswith(natural.text) and len(longer.text) > len(natural.text)
    wrong = generate(smollm2_triton, FRANCE, min_tokens=5, max_tokens=4)
    assert wrong.final.error is not None and "min_tokens must be within 0..max_tokens" in wrong.final.error


def _counters(server: TritonServer) -> dict[str, float]:
    url = f"http://{server.opts.host}:{server.opts.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("tritonstack_llm_"):
            name, value = line.split("{")[0], float(line.rsplit(" ", 1)[1])
            values[name] = values.get(name, 0.0) + value
    return values


def test_concurrent_streams_share_forward_passes(smollm2_triton: TritonServer) -> None:
    before = _counters(smollm2_triton)
    stream = GenerationStream(smollm2_triton)
    try:
        prompts = ["What is the capital of France?", "Name three primary colors.", "What is 2 + 2?",
                   "Write a haiku about the sea."]
        for i, prompt in enumerate(prompts):  # a response per token: every shared step shows in the step ids
            stream.send(f"s{i}", chat(prompt), temperature=0.0, max_tokens=10, max_stream_interval=1)
        gens = stream.wait()
    finally:
        stream.close()
    assert all(g.final.error is None and g.final.finish_reason for g in gens.values())
    shared = set.intersection(*({r.step for r in g.responses if r.batch_size > 1} for g in gens.values()))
    assert shared, "the four requests never decoded in the same forward pass"
    assert max(r.batch_size for g in gens.values() for r in g.responses) == MAX_BATCH_ROWS
    after = _counters(smollm2_triton)
    passes = after["tritonstack_llm_forward_passes_total"] - before.get("tritonstack_llm_forward_passes_total", 0)
    tokens = after["tritonstack_llm_completion_tokens_total"] - before.get("tritonstack_llm_completion_tokens_total", 0)
    assert tokens == sum(g.final.completion_tokens for g in gens.values())
    assert passes < tokens  # fewer forward passes than tokens: passes were shared
    steps = after["tritonstack_llm_decode_steps_total"] - before.get("tritonstack_llm_decode_steps_total", 0)
    rows = after["tritonstack_llm_decode_rows_total"] - before.get("tritonstack_llm_decode_rows_total", 0)
    assert 0 < steps < passes and rows / steps > 1  # the mean decode batch the dashboard plots


def test_under_load_responses_carry_several_tokens_and_the_text_is_the_same(smollm2_triton: TritonServer) -> None:
    stream = GenerationStream(smollm2_triton)
    try:
        for i in range(MAX_BATCH_ROWS):  # the same greedy answer four times; the last asks for a response per token
            stream.send(f"s{i}", FRANCE, temperature=0.0, max_tokens=16, min_tokens=16,
                        **({"max_stream_interval": 1} if i == MAX_BATCH_ROWS - 1 else {}))
        gens = list(stream.wait().values())
    finally:
        stream.close()
    assert all(g.final.error is None and g.final.completion_tokens == 16 for g in gens)
    assert len({g.text for g in gens}) == 1 and gens[0].text.startswith("The capital of France is Paris.")
    per_token = gens[-1]
    assert [r.completion_tokens for r in per_token.responses] == list(range(1, 17))
    for g in gens[:-1]:
        counts = [r.completion_tokens for r in g.responses]
        assert counts[0] == 1  # the first token comes alone
        carried = [(b - a, r.batch_size) for a, b, r in zip(counts, counts[1:], g.responses[1:], strict=False)]
        assert all(n <= MAX_BATCH_ROWS // 2 for n, _ in carried)  # k = rows // 2
        assert (2, MAX_BATCH_ROWS) in carried  # 4 rows: two tokens a response
        assert len(g.responses) < len(per_token.responses)


def test_a_long_prompt_is_prefilled_in_chunks_while_streams_run_and_short_prompts_start(
        smollm2_triton: TritonServer) -> None:
    stream = GenerationStream(smollm2_triton)
    try:
        running = stream.send("run", chat("Write a long story about the sea."), temperature=0.0, max_tokens=40,
                              min_tokens=40)
        stream.wait(until=lambda gens: len(gens["run"].responses) >= 3)
        long = stream.send("long", chat("Summarise: " + "The quick brown fox jumps over the lazy dog. " * 80),
                           temperature=0.0, max_tokens=2)
        short = stream.send("short", chat("What is 2 + 2?"), temperature=0.0, max_tokens=2)
        stream.wait()
    finally:
        stream.close()
    assert long.final.finish_reason == short.final.finish_reason == running.final.finish_reason == "length"
    first = long.responses[0]
    assert short.responses[0].step < first.step, "the short prompt waited for the long prompt's last chunk"
    assert first.prompt_tokens > 3 * 256  # the model's default --prefill-chunk-tokens 256: at least 4 chunks
    steps = [r.step for r in running.responses]
    chunks = set(range(steps[0], first.step)) - set(steps)  # forward passes that gave the running stream no token
    assert len(chunks) >= 3, "the long prompt was prefilled in one pass: the running stream waited for all of it"
    assert any(r.step in range(min(chunks), first.step) for r in running.responses)  # tokens between the chunks
    joined = next(r for r in running.responses if r.step > first.step)
    assert joined.batch_size == 2 and joined.step in {r.step for r in long.responses}  # then it joined the batch


def test_full_model_rejects_at_once(smollm2_triton: TritonServer) -> None:
    busy = GenerationStream(smollm2_triton)
    probe = GenerationStream(smollm2_triton)
    try:
        for i in range(MAX_BATCH_ROWS):
            busy.send(f"b{i}", chat(f"Count from {i} to 500, one number per line."), temperature=0.0, max_tokens=400)
        busy.wait(until=lambda gens: all(g.responses for g in gens.values()))  # all four are generating
        assert _in_flight_reaches(smollm2_triton, MAX_BATCH_ROWS)  # the model's gauge counts them
        start = time.monotonic()
        rejected = probe.send("p", FRANCE, max_tokens=4)
        probe.wait()
        assert rejected.final.error is not None and "overloaded" in rejected.final.error
        # answered at once, not queued behind the running generations (400 tokens each: many seconds)
        assert time.monotonic() - start < 5.0
        assert not any(g.done for g in busy.generations.values())
    finally:
        busy.close()  # cancels the four generations
        probe.close()
    deadline = time.monotonic() + 10  # cancelled rows leave the batch at the next step: capacity comes back
    while (after := generate(smollm2_triton, FRANCE, temperature=0.0, max_tokens=3)).final.error:
        assert "overloaded" in after.final.error and time.monotonic() < deadline
        time.sleep(0.1)
    assert after.final.finish_reason == "length"
    assert _in_flight_reaches(smollm2_triton, 0)  # cancelled and finished requests leave the gauge


def _in_flight_reaches(server: TritonServer, value: int, timeout: float = 10.0) -> bool:
    """Whether the model's in-flight gauge reads `value` within `timeout` (it follows each final response)."""
    deadline = time.monotonic() + timeout
    while _counters(server).get("tritonstack_llm_requests_in_flight") != value:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _penalized_reference(version: Path, messages: list[dict], tokens: int, presence: float, frequency: float) -> str:
    """Greedy text of the exported decoder with OpenAI's penalty formula applied here: each token generated so far
    loses `presence` + `frequency` × its count (prompt tokens do not count)."""
    from export.llm.parity import greedy_generate
    from triton_models.llm_engine import Decoder, ModelInfo
    from triton_models.llm_text import PromptBuilder

    def openai_penalties(logits: np.ndarray, generated: list[int]) -> None:
        for token in set(generated):
            logits[token] -= np.float32(presence + frequency * generated.count(token))

    info = ModelInfo.load(version / "generation.json")
    decoder = Decoder(version / "model.onnx", info, single_row_path=version / "model.packed.onnx")
    builder = PromptBuilder(version / "tokenizer.json", version / "chat_template.jinja")
    generated, _ = greedy_generate(decoder, builder.chat_ids(messages), tokens, openai_penalties)
    return builder.tokenizer.decode(generated)


@pytest.mark.parametrize(("presence", "frequency"), [(0.0, 1.5), (2.0, 0.0), (0.5, 0.5)])
def test_penalties_follow_openais_formula(smollm2_triton: TritonServer, smollm2_export: ExportedRepository,
                                          presence: float, frequency: float) -> None:
    """OpenAI's presence and frequency penalties reach the sampler and follow its formula: greedy text equals the
    reference loop's, and (for this prompt, which repeats itself) differs from the unpenalised text."""
    days = chat("List the days of the week, twice.")
    plain = generate(smollm2_triton, days, temperature=0.0, max_tokens=24)
    penalized = generate(smollm2_triton, days, temperature=0.0, max_tokens=24, presence_penalty=presence,
                         frequency_penalty=frequency)
    version = smollm2_export.repository / "smollm2" / "1"
    assert penalized.text == _penalized_reference(version, days, 24, presence, frequency)
    assert penalized.text != plain.text
    assert penalized.responses[0].text == plain.responses[0].text  # nothing generated yet: nothing penalised


def test_penalties_out_of_range_are_refused(smollm2_triton: TritonServer) -> None:
    zeros = generate(smollm2_triton, FRANCE, temperature=0.0, max_tokens=8, presence_penalty=0.0,
                     frequency_penalty=0.0)
    assert zeros.text == generate(smollm2_triton, FRANCE, temperature=0.0, max_tokens=8).text
    wrong = generate(smollm2_triton, FRANCE, frequency_penalty=2.5)
    assert wrong.final.error is not None and "frequency_penalty must be within -2..2" in wrong.final.error


def test_invalid_request_is_an_error(smollm2_triton: TritonServer) -> None:
    gen = generate(smollm2_triton, FRANCE, max_tokens=0)
    assert gen.final.error is not None and "invalid request" in gen.final.error


def test_a_decoder_that_cannot_pad_prefills_by_length_with_the_same_result(smollm2_export: ExportedRepository) -> None:
    """The GPU graph has no `query_seqlens`: prompts of different lengths are prefilled one pass per length, and the
    rows, their caches and logits must equal one padded pass (checked here on the CPU graph with padding off)."""
    from triton_models.llm_engine import Decoder, ModelInfo
    from triton_models.llm_prefix import PrefixCache

    version = smollm2_export.repository / "smollm2" / "1"
    info = ModelInfo.load(version / "generation.json")
    prompts = [list(range(100, 140)), [*range(100, 125), 7, 8, 9], list(range(300, 311)), [5, 6, 7, 8, 9, 10]]
    results = []
    for padded in (True, False):
        decoder = Decoder(version / "model.onnx", info)
        decoder.padded = padded
        prefixes = PrefixCache(4096)
        decoder.prefill(prompts[0][:20], prefixes)  # a cached prefix for the first two prompts
        logits, slots = decoder.prefill_many(prompts, prefixes)
        following, slots = decoder.decode(logits.argmax(-1).tolist(), slots)  # the rows go on decoding together
        results.append((logits, slots.lengths.copy(), following))
    (padded_logits, padded_lengths, padded_next), (logits, lengths, following) = results
    assert lengths.tolist() == padded_lengths.tolist() == [len(p) + 1 for p in prompts]
    np.testing.assert_allclose(logits, padded_logits, atol=1e-4)
    np.testing.assert_allclose(following, padded_next, atol=1e-4)
    assert (logits.argmax(-1) == padded_logits.argmax(-1)).all()
    assert (following.argmax(-1) == padded_next.argmax(-1)).all()


def test_gpu_target_writes_the_fp16_graph_checked_for_parity(tmp_path) -> None:
    """`--target gpu`: the fp16 graph without `query_seqlens` (CUDA's GroupQueryAttention has none), a KIND_GPU model
    on ONNX Runtime's CUDA provider; its parity runs here on the CPU provider (same graph, fp16 throughout)."""
    import onnxruntime as ort

    from export.llm.pipeline import Smollm2Request, export_smollm2

    repository = tmp_path / "model_repository"
    (report,) = export_smollm2(Smollm2Request(repository=repository, target="gpu", max_new_tokens=8)).reports
    assert report.passed and not report.mismatches and not report.batch_mismatches, report.describe()
    assert "fp16" in report.label and "on the CPU" in report.label
    assert report.max_abs_diff > 1e-3  # fp16 really: the fp32 graph stays within 1e-4
    config = (repository / "smollm2" / "config.pbtxt").read_text()
    assert "KIND_GPU" in config and 'string_value: "cuda"' in config and 'string_value: "fp16"' in config
    version = repository / "smollm2" / "1"
    assert not (version / "model.packed.onnx").exists()
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: i.type for i in session.get_inputs()}
    assert "query_seqlens" not in inputs and inputs["past.0.key"] == "tensor(float16)"
    assert session.get_outputs()[0].type == "tensor(float)"  # logits stay fp32 for sampling


def test_a_gpu_decoder_says_what_it_needs_where_it_cannot_run(smollm2_export: ExportedRepository) -> None:
    from triton_models import llm_engine

    version = smollm2_export.repository / "smollm2" / "1"
    info = llm_engine.ModelInfo.load(version / "generation.json")
    with pytest.raises(RuntimeError, match=r"pip install cupy-cuda12x"):  # CuPy is checked first; not here
        llm_engine.Decoder(version / "model.onnx", info, place=llm_engine.Place("cuda", 0))
