"""`tritonstack export smollm2 --decode int8`: the gate's logic (teacher-forced agreement, batched = single, refusal)
on stand-in decoders, the int8 graph on a tiny model, the mode the model reads from its parameters, and (slow) the
real export served by tritonserver, consistent with its gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.errors import OptionError, ParityError
from export.llm import agreement
from export.llm.agreement import Agreement, Int8Gate, top1_agreement
from export.llm.parity import GenerationParity
from export.llm.pipeline import Smollm2Request, validate_smollm2
from triton_models.llm_decode_mode import DecodeMode, cpu_int8_features

VOCAB = 16


def _onehot(targets: list[int]) -> np.ndarray:
    """Logits whose argmax is each row's target and whose runner-up is target + 2."""
    logits = np.zeros((len(targets), VOCAB), dtype=np.float32)
    for r, t in enumerate(targets):
        logits[r, t % VOCAB], logits[r, (t + 2) % VOCAB] = 2.0, 1.0
    return logits


class _Info:
    eos_token_ids = (5,)


class NextToken:
    """A stand-in decoder: the argmax after token t is t + 1 (+ `shift` at the positions in `wrong`, counted over
    every row's steps), whatever the batch; the batch is the list of positions per row."""

    info = _Info()

    def __init__(self, wrong: set[int] = frozenset(), rows_wrong: set[int] = frozenset()) -> None:
        self.wrong, self.rows_wrong, self.fed = wrong, rows_wrong, []

    def _logits(self, tokens: list[int], positions: list[int]) -> np.ndarray:
        rows = len(tokens)
        targets = [t + 1 + (3 if p in self.wrong or (rows > 1 and p in self.rows_wrong) else 0)
                   for t, p in zip(tokens, positions, strict=True)]
        return _onehot(targets)

    def prefill_many(self, prompts: list[list[int]]):
        positions = [0] * len(prompts)
        return self._logits([p[-1] for p in prompts], positions), positions

    def decode(self, tokens: list[int], batch: list[int]):
        self.fed.append(list(tokens))
        positions = [p + 1 for p in batch]
        return self._logits(list(tokens), positions), positions


class NextTokenModel:
    """transformers-shaped stand-in: logits at position t have argmax ids[t] + 1."""

    def __call__(self, input_ids, attention_mask):
        import torch

        ids = input_ids[0].tolist()
        return type("Out", (), {"logits": torch.from_numpy(_onehot([t + 1 for t in ids]))[None]})()


class Tok:
    def apply_chat_template(self, messages, **_: object) -> dict:
        return {"input_ids": [1, 2, len(messages[0]["content"]) % 4]}


def _parity(batch_mismatch: bool = False) -> GenerationParity:
    return GenerationParity("x", ["p"], [[1]], [[1]], [[2]] if batch_mismatch else [[1]], 0.0, 0.0, 1e-2, ["a"])


def test_top1_agreement_counts_each_prompts_positions() -> None:
    got = top1_agreement([[1, 2, 3, 4], [5, 6]], [[1, 2, 0, 4], [5, 6]])
    assert got.per_prompt == ((3, 4), (2, 2)) and (got.agreeing, got.positions) == (5, 6)
    assert got.rate == pytest.approx(5 / 6) and not got.identical
    assert top1_agreement([[7]], [[7]]).identical
    with pytest.raises(ValueError, match="prompt 0: 1 candidate positions for 2"):
        top1_agreement([[1, 2]], [[1]])
    with pytest.raises(ValueError, match="2 candidate prompts for 1"):
        top1_agreement([[1]], [[1], [1]])


def test_the_reference_continues_past_the_end_of_sequence_and_the_candidate_is_fed_its_tokens() -> None:
    exact = NextToken()
    (continuation,) = agreement.reference_continuations(exact, [[1, 2, 3]], 4)
    assert continuation == [4, 7, 8, 9]  # after 4 comes 5, an end-of-sequence id: masked, the runner-up (7) instead
    candidate = NextToken(wrong={2})
    (argmax,) = agreement.teacher_forced(candidate, [[1, 2, 3]], [continuation], batched=False)
    assert candidate.fed == [[4], [7], [8]]  # the reference's tokens, never its own (wrong) choice
    assert argmax == [4, 5, 11, 9]  # position 2 is off by 3; the others predict what follows the fed token
    (reference,) = agreement.reference_argmax(NextTokenModel(), [[1, 2, 3]], [continuation])
    assert reference == [4, 5, 8, 9]
    assert top1_agreement([reference], [argmax]).per_prompt == ((3, 4),)


def test_the_gate_passes_a_faithful_decoder_and_measures_batched_against_single() -> None:
    gate = agreement.check(NextTokenModel(), Tok(), NextToken(), NextToken(), _parity(), label="stand-in",
                           tokens=128)
    assert gate.passed and gate.agreement.positions == 8 * 128 and gate.agreement.identical
    assert gate.batched.identical and gate.cpu == cpu_int8_features()
    agreement.enforce(gate)
    assert "PASS" in gate.describe() and gate.parameters()["decode_gate_positions"] == "1024"
    split = agreement.check(NextTokenModel(), Tok(), NextToken(), NextToken(rows_wrong={7}), _parity(),
                            label="stand-in", tokens=128)
    assert split.batched.positions - split.batched.agreeing == 8 and not split.passed
    with pytest.raises(ParityError, match="batched decoding differs from single-row decoding at 8"):
        agreement.enforce(split)


@pytest.mark.parametrize(("gate", "reason"), [
    (Int8Gate("x", Agreement(((970, 1000),)), Agreement(((1000, 1000),)), _parity()), "agreement 0.9700 is below"),
    (Int8Gate("x", Agreement(((500, 500),)), Agreement(((500, 500),)), _parity()), "covers 500 positions, fewer"),
    (Int8Gate("x", Agreement(((990, 1000),)), Agreement(((999, 1000),)), _parity()), "at 1 teacher-forced"),
    (Int8Gate("x", Agreement(((990, 1000),)), Agreement(((1000, 1000),)), _parity(True)), r"for prompts \[0\]"),
])
def test_the_gate_refuses_and_says_which_part_failed(gate: Int8Gate, reason: str) -> None:
    assert not gate.passed and "FAIL" in gate.describe()
    with pytest.raises(ParityError, match=reason) as raised:
        agreement.enforce(gate)
    assert "nothing was written" in str(raised.value)
    assert Int8Gate("x", Agreement(((980, 1000),)), Agreement(((1000, 1000),)), _parity()).passed  # >= 0.98


def test_int8_options_are_checked_before_any_model_loads() -> None:
    validate_smollm2(Smollm2Request(decode="int8"))
    with pytest.raises(OptionError, match="--decode 'fp8'"):
        validate_smollm2(Smollm2Request(decode="fp8"))
    with pytest.raises(OptionError, match="CPU mode"):
        validate_smollm2(Smollm2Request(decode="int8", target="gpu"))
    with pytest.raises(OptionError, match="--min-agreement"):
        validate_smollm2(Smollm2Request(decode="int8", min_agreement=1.5))
    with pytest.raises(OptionError, match="--int8-block 8"):
        validate_smollm2(Smollm2Request(decode="int8", int8_block=8))


def test_the_model_reads_its_decode_mode_and_warns_on_other_int8_kernels() -> None:
    params = {"decode": "int8", "decode_gate_agreement": "0.9900", "decode_gate_positions": "1024",
              "decode_gate_cpu": "avx512_vnni", "max_batch_rows": "8"}
    mode = DecodeMode.from_parameters(lambda k, d: params.get(k, d), list(params))
    assert mode.mode == "int8" and mode.gate["agreement"] == "0.9900" and "max_batch_rows" not in mode.gate
    assert "0.9900 over 1024" in mode.describe()
    assert mode.warning("avx512_vnni") is None and "this CPU has avx2" in (mode.warning("avx2") or "")
    exact = DecodeMode.from_parameters(lambda k, d: d, [])
    assert exact.mode == "exact" and exact.warning("none") is None
    with pytest.raises(ValueError, match="parameter decode 'fast'"):
        DecodeMode.from_parameters(lambda k, d: "fast" if k == "decode" else d, ["decode"])
    assert cpu_int8_features("flags\t: fpu avx2 avx512_vnni\n") == "avx512_vnni"
    assert cpu_int8_features("flags\t: fpu avx2\n") == "avx2" and cpu_int8_features("") == "none"


def test_the_config_records_the_mode_and_gate_only_for_int8(tmp_path: Path) -> None:
    from export.llm.specs import GenerationServing, text_generation

    exact = text_generation("m", tmp_path / "model.onnx", {}, GenerationServing())
    assert "decode" not in exact.config_text  # the default export's config is unchanged
    gate = {"decode_gate_agreement": "0.9900"}
    int8 = text_generation("m", tmp_path / "model.onnx", {}, GenerationServing(), "int8", decode="int8", gate=gate)
    assert 'key: "decode"' in int8.config_text and 'string_value: "0.9900"' in int8.config_text
    assert "llm_decode_mode.py" in int8.files


def _q_blocks(weight, bits: int):
    """`weight` [out, in] snapped to Q4_1 (bits 4) or Q8_0 (bits 8) blocks of 32 along `in`, as the GGUF has them."""
    import torch

    blocks = weight.detach().reshape(weight.shape[0], -1, 32)
    if bits == 8:
        d = blocks.abs().amax(-1, keepdim=True) / 127
        return (torch.round(blocks / d) * d).reshape(weight.shape)
    low, high = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
    d = (high - low) / 15
    return (torch.round((blocks - low) / d) * d + low).reshape(weight.shape)


def test_the_int8_graph_takes_int8_activations_where_asked_and_rescores_the_top_logits(tmp_path: Path) -> None:
    import onnx
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from export.llm.graph import build_decoder
    from export.llm.int8 import INT8_KINDS, build_int8
    from triton_models.llm_engine import Decoder, ModelInfo

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 2:
                parameter.copy_(_q_blocks(parameter, 8 if "embed" in name else 4))
    fp32 = build_decoder(model, tmp_path / "fp32.onnx", "fp32")
    report = build_int8(fp32, tmp_path / "int8.onnx", top_k=8)
    assert (report.q4, report.q8) == (2 * 4, 1) and not report.kept
    nodes = onnx.load(str(tmp_path / "int8.onnx")).graph.node
    levels = {n.name.split("/")[0].rsplit(".", 1)[-1]: a.i for n in nodes if n.op_type == "MatMulNBits"
              for a in n.attribute if a.name == "accuracy_level"}
    assert levels == {k: 4 if k in INT8_KINDS else 0 for k in ("qkv", "o", "gate_up", "down", "lm_head")}
    info = ModelInfo(layers=2, kv_heads=2, head_dim=16, vocab=64, eos_token_ids=(), defaults={})
    prompts = [[1, 2, 3, 4, 5], [9, 8, 7]]
    int8 = Decoder(tmp_path / "int8.onnx", info)
    together, batch = int8.prefill_many(prompts)
    alone = [int8.prefill(p) for p in prompts]
    assert np.array_equal(together, np.stack([logits for logits, _ in alone]))  # bit for bit, padded or not
    together, _ = int8.decode([11, 12], batch)
    assert np.array_equal(together, np.concatenate([int8.decode([t], row)[0] for t, (_, row) in
                                                    zip([11, 12], alone, strict=True)]))
    # int8 activations in the lm_head alone: the hidden states stay exact, so the rescored logits must be too
    build_int8(fp32, tmp_path / "head.onnx", ("lm_head",), top_k=8)
    exact, _ = Decoder(fp32, info).prefill_many(prompts)
    fast, _ = Decoder(tmp_path / "head.onnx", info).prefill_many(prompts)
    for row_exact, row_fast in zip(exact, fast, strict=True):
        top = np.argsort(row_fast)[-8:]  # the int8 lm_head's top 8: recomputed in fp32
        np.testing.assert_allclose(row_fast[top], row_exact[top], atol=1e-4)
        assert np.abs(row_fast - row_exact).max() > 1e-4  # the rest really are the int8 products


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory: pytest.TempPathFactory):
    """`--decode int8` exported into a fresh repository (the full gate: 1,024 teacher-forced positions)."""
    from export.llm.pipeline import export_smollm2
    from export.llm.specs import GenerationServing
    from tests.fixtures.exported import ExportedRepository

    repository = tmp_path_factory.mktemp("exported-int8") / "model_repository"
    request = Smollm2Request(repository=repository, decode="int8", max_new_tokens=16,
                             serving=GenerationServing(max_batch_rows=4))
    return ExportedRepository(repository, export_smollm2(request))


@pytest.mark.slow
def test_int8_export_serves_what_its_gate_measured(int8_export, tmp_path: Path) -> None:
    from tests.fixtures.llm import GenerationStream, chat
    from tests.fixtures.servers import start_triton

    gate = int8_export.result.reports[-1]
    assert isinstance(gate, Int8Gate) and gate.passed and gate.agreement.positions >= 1000, gate.describe()
    config = (int8_export.repository / "smollm2" / "config.pbtxt").read_text()
    assert 'key: "decode"' in config and f'string_value: "{gate.agreement.rate:.4f}"' in config
    version = int8_export.repository / "smollm2" / "1"
    assert not (version / "model.packed.onnx").exists()  # one graph for every pass
    server = start_triton(int8_export.repository, tmp_path)
    try:
        stream = GenerationStream(server)
        try:  # the parity prompts together: batched in the server, each must equal its single-row run
            for i, prompt in enumerate(gate.parity.prompts[:4]):
                stream.send(f"s{i}", chat(prompt), temperature=0.0, max_tokens=16)
            gens = stream.wait(timeout=60)
        finally:
            stream.close()
        assert max(r.batch_size for g in gens.values() for r in g.responses) > 1
        assert [gens[f"s{i}"].text for i in range(4)] == gate.parity.answers[:4]
        log = "".join(p.read_text() for p in tmp_path.glob("triton-*.log"))
        assert f"decode int8: int8 activations; export gate: teacher-forced top-1 agreement {gate.agreement.rate:.4f}" \
            in log
    finally:
        server.stop()
