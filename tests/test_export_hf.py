"""`tritonstack export hf`: any Hugging Face encoder, reranker or classifier from a local directory.

The packaged all-MiniLM-L6-v2 directory must export exactly as `export minilm` does; tiny randomly initialised
models (`tests/hf_models.py`: BERT and XLM-R sequence classification, an MPNet sentence-transformers encoder) are
exported through the CLI, served by the bundled Triton and compared with transformers (or sentence-transformers) on
the same weights; directories that are not one of these fail with one line and write nothing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from export.cli import app
from export.encoder.sentences import PARITY_SENTENCES
from export.repository import versions
from tests import hf_models
from tests.fixtures.exported import ExportedRepository

pytestmark = pytest.mark.slow
runner = CliRunner()
FAST = ("--instances", "1", "--max-batch-size", "8")  # tiny models: one instance loads fastest
SERVED = ["minilm-hf", "bert-rerank", "bert-classify", "xlmr-topics", "mpnet-cls", "bert-last", "rerank-gpu_tokenizer",
          "mpnet-gpu_tokenizer"]
PREFIX = "query: "
PAIRS = [
    ("What is the capital of France?", "Paris is the capital and most populous city of France."),
    ("What is the capital of France?", "A man is riding a horse."),
    ("How do I reset my password?", "word " * 300),  # truncated to the model's 128 tokens, the longer side first
    ("¿Dónde está la biblioteca?", "¡Está allí! 🎉"),
    ("", "an empty query"),
]
TEXTS = ["Hello, world!", "I love this product, it works perfectly!", "word " * 300, "東京は日本の首都です。", "", "🍕"]


def invoke(*args: str):  # -> click.testing.Result
    return runner.invoke(app, list(args))


def flat(result) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def config(repository: Path, model: str) -> mc.ModelConfig:
    cfg = mc.ModelConfig()
    text_format.Parse((repository / model / "config.pbtxt").read_text(encoding="utf-8"), cfg)
    return cfg


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("hf-models")
    return {
        "rerank": hf_models.bert_reranker(base / "bert-rerank"),
        "classify": hf_models.bert_classifier(base / "bert-classify"),
        "multilabel": hf_models.xlmr_multilabel(base / "xlmr topics"),  # the default name sanitises the space
        "mpnet": hf_models.mpnet_sentence_encoder(base / "mpnet-cls"),
        "gpt2": hf_models.gpt2_lm(base / "gpt2"),
    }


@pytest.fixture(scope="module")
def hf_export(hf_dirs: dict[str, Path], minilm_source: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """One repository with every export the serving tests use; the CLI output of each."""
    repository = tmp_path_factory.mktemp("hf-export") / "model_repository"
    runs = {
        "minilm-hf": (str(minilm_source), "--task", "embed", "--name", "minilm-hf", *FAST),
        "bert-rerank": (str(hf_dirs["rerank"]), "--task", "rerank", *FAST),
        "bert-classify": (str(hf_dirs["classify"]), "--task", "classify", *FAST),
        "xlmr-topics": (str(hf_dirs["multilabel"]), "--task", "classify", *FAST),
        "mpnet-cls": (str(hf_dirs["mpnet"]), "--task", "embed", "--prefix", PREFIX, *FAST),
        "bert-last": (str(hf_dirs["rerank"]), "--task", "embed", "--name", "bert-last", "--pooling", "last",
                      "--no-normalize", *FAST),
        "rerank-gpu": (str(hf_dirs["rerank"]), "--task", "rerank", "--name", "rerank-gpu", "--target", "gpu",
                       "--precision", "fp16", *FAST),
        "mpnet-gpu": (str(hf_dirs["mpnet"]), "--task", "embed", "--name", "mpnet-gpu", "--target", "gpu",
                      "--prefix", PREFIX, *FAST),
    }
    outputs = {}
    for name, args in runs.items():
        result = invoke("hf", *args, "--repository", str(repository))
        assert result.exit_code == 0, result.output
        outputs[name] = flat(result)
    return repository, outputs


@pytest.fixture(scope="module")
def triton_hf(hf_export: tuple[Path, dict[str, str]],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpclient.InferenceServerClient]:
    """The bundled Triton serving the CPU models (and the GPU target's tokenizer step, a CPU python model)."""
    from tests.fixtures.servers import start_triton

    server = start_triton(hf_export[0], tmp_path_factory.mktemp("triton-hf"), models=SERVED)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        yield client
    finally:
        client.close()
        server.stop()


def strings(name: str, values: list[str] | list[bytes]) -> httpclient.InferInput:
    data = np.array([v.encode() if isinstance(v, str) else v for v in values], dtype=object).reshape(-1, 1)
    tensor = httpclient.InferInput(name, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return tensor


def transformers_outputs(directory: Path, items: list, *, pairs: bool = False, head: bool = True,
                         max_length: int = 128):
    """(model output, attention mask) of transformers on `items` (texts, or pairs), padded and truncated as
    transformers does; `head`: the sequence-classification model, else the bare encoder."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    loader = AutoModelForSequenceClassification if head else AutoModel
    model = loader.from_pretrained(str(directory)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    args = ([q for q, _ in items], [d for _, d in items]) if pairs else (items,)
    encoded = tokenizer(*args, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    accepted = {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if "token_type_ids" in accepted and model.config.type_vocab_size < 2:
        accepted.pop("token_type_ids")
    with torch.no_grad():
        return model(**accepted), encoded["attention_mask"].numpy()


# (a) the packaged MiniLM directory equals `export minilm`


def test_minilm_directory_exports_what_export_minilm_exports(
    hf_export: tuple[Path, dict[str, str]], minilm_export: ExportedRepository
) -> None:
    from export.encoder import minilm
    from export.parity import cosine_rows

    repository, outputs = hf_export
    assert "min cosine 1.0000000" in outputs["minilm-hf"] and "sentence-transformers" in outputs["minilm-hf"]
    assert "tritonstack model load minilm-hf" in outputs["minilm-hf"]  # the next-step hint
    ours, theirs = repository / "minilm-hf" / "1", minilm_export.repository / "minilm" / "1"
    ids = minilm.tokenize(ours / "tokenizer.json", PARITY_SENTENCES, 256)
    assert ids == minilm.tokenize(theirs / "tokenizer.json", PARITY_SENTENCES, 256)
    got = minilm.embed_with(minilm.ort_runner(ours / "model.onnx"), ids)
    want = minilm.embed_with(minilm.ort_runner(theirs / "model.onnx"), ids)
    assert cosine_rows(got, want).min() >= 0.9999 and np.abs(got - want).max() < 1e-5
    cfg, reference = config(repository, "minilm-hf"), config(minilm_export.repository, "minilm")
    for key in ("max_seq_length", "tritonstack_task", "drift_reference_tokens_mean"):
        assert cfg.parameters[key].string_value == reference.parameters[key].string_value, key
    assert [(t.name, list(t.dims)) for t in cfg.output] == [(t.name, list(t.dims)) for t in reference.output]
    assert (ours / "model.py").read_bytes() == (theirs / "model.py").read_bytes()


def test_minilm_hf_is_served_like_minilm(triton_hf: httpclient.InferenceServerClient, minilm_source: Path) -> None:
    from export.encoder.minilm import reference_embeddings

    result = triton_hf.infer("minilm-hf", [strings("text", TEXTS)])
    want, counts = reference_embeddings(minilm_source, TEXTS)
    got = result.as_numpy("embedding")
    assert np.einsum("nd,nd->n", got, want).min() >= 0.9999
    assert result.as_numpy("token_count").reshape(-1).tolist() == counts.tolist()


# (b) tiny models: the contract, and parity with transformers when served


def test_every_config_follows_the_model_contract(hf_export: tuple[Path, dict[str, str]]) -> None:
    repository, _ = hf_export
    expected = {
        "minilm-hf": ("embed", {"text": []}, {"embedding": [384], "token_count": [1]}),
        "mpnet-cls": ("embed", {"text": []}, {"embedding": [32], "token_count": [1]}),
        "bert-last": ("embed", {"text": []}, {"embedding": [32], "token_count": [1]}),
        "bert-rerank": ("rerank", {"query": [], "document": []}, {"score": [1], "logit": [1], "token_count": [1]}),
        "rerank-gpu": ("rerank", {"query": [], "document": []}, {"score": [1], "logit": [1], "token_count": [1]}),
        "bert-classify": ("classify", {"text": []}, {"scores": [3], "token_count": [1]}),
        "xlmr-topics": ("classify", {"text": []}, {"scores": [3], "token_count": [1]}),
    }
    for name, (task, inputs, outputs) in expected.items():
        cfg = config(repository, name)
        assert cfg.parameters["tritonstack_task"].string_value == task, name
        assert {t.name: mc.DataType.Name(t.data_type) for t in cfg.input} == dict.fromkeys(inputs, "TYPE_STRING")
        assert all(list(t.dims) == [1] for t in cfg.input), name
        assert {t.name: list(t.dims) for t in cfg.output} == outputs, name
        types = {t.name: mc.DataType.Name(t.data_type) for t in cfg.output}
        assert types.pop("token_count") == "TYPE_INT32" and set(types.values()) == {"TYPE_FP32"}, name
        assert cfg.max_batch_size > 0, name
        assert cfg.platform == "ensemble" or cfg.HasField("dynamic_batching"), name
    classify = config(repository, "bert-classify").parameters
    assert json.loads(classify["labels"].string_value) == ["negative", "neutral", "positive"]
    assert classify["problem_type"].string_value == "single_label_classification"
    topics = config(repository, "xlmr-topics").parameters
    assert json.loads(topics["labels"].string_value) == ["sports", "politics", "science"]
    assert topics["problem_type"].string_value == "multi_label_classification"
    mpnet = config(repository, "mpnet-cls").parameters
    assert mpnet["max_seq_length"].string_value == "64" and mpnet["prefix"].string_value == PREFIX


def test_reranker_served_matches_transformers(triton_hf: httpclient.InferenceServerClient,
                                              hf_dirs: dict[str, Path]) -> None:
    result = triton_hf.infer("bert-rerank", [strings("query", [q for q, _ in PAIRS]),
                                             strings("document", [d for _, d in PAIRS])])
    output, mask = transformers_outputs(hf_dirs["rerank"], PAIRS, pairs=True)
    logits = output.logits.numpy()
    np.testing.assert_allclose(result.as_numpy("logit"), logits, atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("score"), 1 / (1 + np.exp(-logits)), atol=1e-6)
    counts = result.as_numpy("token_count").reshape(-1)
    assert counts.tolist() == mask.sum(axis=1).tolist() and counts[2] == 128  # the pair, truncated


@pytest.mark.parametrize(("name", "key", "activation"), [("bert-classify", "classify", "softmax"),
                                                           ("xlmr-topics", "multilabel", "sigmoid")])
def test_classifier_served_matches_transformers(triton_hf: httpclient.InferenceServerClient,
                                                hf_dirs: dict[str, Path], name: str, key: str,
                                                activation: str) -> None:
    result = triton_hf.infer(name, [strings("text", TEXTS)])
    output, mask = transformers_outputs(hf_dirs[key], TEXTS)
    want = output.logits.softmax(-1) if activation == "softmax" else output.logits.sigmoid()
    scores = result.as_numpy("scores")
    np.testing.assert_allclose(scores, want.numpy(), atol=1e-6)
    assert np.allclose(scores.sum(axis=1), 1, atol=1e-5) == (activation == "softmax")
    assert result.as_numpy("token_count").reshape(-1).tolist() == mask.sum(axis=1).tolist()


def test_sentence_transformers_encoder_served_with_its_cls_pooling_and_a_prefix(
    triton_hf: httpclient.InferenceServerClient, hf_dirs: dict[str, Path], hf_export: tuple[Path, dict[str, str]]
) -> None:
    from sentence_transformers import SentenceTransformer

    assert "cls pooling, not normalised (sentence-transformers files)" in hf_export[1]["mpnet-cls"]
    model = SentenceTransformer(str(hf_dirs["mpnet"]), device="cpu")
    result = triton_hf.infer("mpnet-cls", [strings("text", TEXTS)])
    np.testing.assert_allclose(result.as_numpy("embedding"), model.encode(TEXTS, prompt=PREFIX), atol=1e-4)
    counts = model.preprocess([PREFIX + t for t in TEXTS])["attention_mask"].sum(dim=1).tolist()
    assert result.as_numpy("token_count").reshape(-1).tolist() == counts and max(counts) == 64


def test_last_token_pooling_from_flags(triton_hf: httpclient.InferenceServerClient, hf_dirs: dict[str, Path],
                                       hf_export: tuple[Path, dict[str, str]]) -> None:
    assert "lasttoken pooling, not normalised (flags)" in hf_export[1]["bert-last"]
    result = triton_hf.infer("bert-last", [strings("text", TEXTS)])
    output, mask = transformers_outputs(hf_dirs["rerank"], TEXTS, head=False)  # the cross-encoder's encoder
    hidden = output.last_hidden_state.numpy()
    want = hidden[np.arange(len(TEXTS)), mask.sum(axis=1) - 1]
    np.testing.assert_allclose(result.as_numpy("embedding"), want, atol=1e-4)


def test_a_bad_request_fails_alone(triton_hf: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match=r"batch size does not match|as many items"):
        triton_hf.infer("bert-rerank", [strings("query", ["a", "b"]), strings("document", ["c"])])
    with pytest.raises(InferenceServerException, match="UTF-8"):
        triton_hf.infer("bert-classify", [strings("text", [b"\xff\xfe"])])
    assert triton_hf.infer("bert-classify", [strings("text", ["fine"])]).as_numpy("scores").shape == (1, 3)


def test_gpu_target_writes_the_ensemble_and_its_pair_tokenizer_serves(
    hf_export: tuple[Path, dict[str, str]], triton_hf: httpclient.InferenceServerClient, hf_dirs: dict[str, Path]
) -> None:
    from transformers import AutoTokenizer

    repository, outputs = hf_export
    assert "float16 ONNX" in outputs["rerank-gpu"] and outputs["rerank-gpu"].count("PASS") == 2
    assert config(repository, "rerank-gpu").platform == "ensemble"
    encoder = config(repository, "rerank-gpu_encoder")
    assert encoder.platform == "onnxruntime_onnx" and encoder.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert [t.name for t in encoder.input] == ["input_ids", "attention_mask", "token_type_ids"]
    (accelerator,) = encoder.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.parameters["precision_mode"] == "FP16"
    result = triton_hf.infer("rerank-gpu_tokenizer", [strings("query", [q for q, _ in PAIRS[:2]]),
                                                      strings("document", [d for _, d in PAIRS[:2]])])
    expected = AutoTokenizer.from_pretrained(str(hf_dirs["rerank"]))([q for q, _ in PAIRS[:2]],
                                                                      [d for _, d in PAIRS[:2]])
    ids, types = result.as_numpy("input_ids"), result.as_numpy("token_type_ids")
    assert ids.shape[1] % 16 == 0  # padded to a multiple, so requests co-batch in the encoder step
    for row, want in enumerate(expected["input_ids"]):
        assert ids[row, : len(want)].tolist() == want
        assert types[row, : len(want)].tolist() == expected["token_type_ids"][row]
    assert result.as_numpy("token_count").reshape(-1).tolist() == [len(w) for w in expected["input_ids"]]


def test_int8_meets_its_gate_and_a_stricter_gate_writes_nothing(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    passed = invoke("hf", str(hf_dirs["multilabel"]), "--task", "classify", "--precision", "int8", *FAST,
                    "-r", str(repository))
    assert passed.exit_code == 0, passed.output
    assert "int8 ONNX" in flat(passed) and config(repository, "xlmr-topics").parameters["precision"].string_value \
        == "int8"
    refused = invoke("hf", str(hf_dirs["multilabel"]), "--task", "classify", "--precision", "int8",
                     "--max-score-diff", "1e-7", "-r", str(tmp_path / "refused"))
    assert refused.exit_code == 1 and "parity check failed" in flat(refused)
    assert not versions(tmp_path / "refused", "xlmr-topics")


def test_new_version_per_export_and_if_missing(hf_export: tuple[Path, dict[str, str]], hf_dirs: dict[str, Path],
                                               tmp_path: Path) -> None:
    repository = Path(shutil.copytree(hf_export[0] / "bert-classify", tmp_path / "repo" / "bert-classify")).parent
    second = invoke("hf", str(hf_dirs["classify"]), "--task", "classify", *FAST, "-r", str(repository))
    assert second.exit_code == 0, second.output
    assert versions(repository, "bert-classify") == [1, 2]
    assert "tritonstack model load bert-classify --version 2" in flat(second)
    skipped = invoke("hf", str(hf_dirs["classify"]), "--task", "classify", "--if-missing", "-r", str(repository))
    assert skipped.exit_code == 0 and "skipped" in skipped.output and versions(repository, "bert-classify") == [1, 2]


# (c) directories that are not an encoder, reranker or classifier: one line, exit 1, nothing written


def _broken(hf_dirs: dict[str, Path], tmp_path: Path, case: str) -> tuple[Path, str]:
    """A directory for `case` and the --task to ask of it."""
    directory = Path(shutil.copytree(hf_dirs["classify"], tmp_path / case))
    config_path = directory / "config.json"
    if case == "no-config":
        config_path.unlink()
    elif case == "no-weights":
        (directory / "model.safetensors").unlink()
    elif case == "no-tokenizer":
        for name in hf_models.BERT_TOKENIZER_FILES:
            (directory / name).unlink()
    elif case == "no-id2label":
        cfg = json.loads(config_path.read_text())
        del cfg["id2label"], cfg["label2id"]
        config_path.write_text(json.dumps(cfg))
    elif case == "gpt2":
        return hf_dirs["gpt2"], "embed"
    return directory, {"rerank-3-labels": "rerank"}.get(case, "classify")


@pytest.mark.parametrize(("case", "message"), [
    ("no-config", "has no config.json"),
    ("gpt2", "architecture GPT2LMHeadModel (model_type 'gpt2') is not supported"),
    ("rerank-3-labels", "--task rerank needs a cross-encoder with one output"),
    ("no-id2label", "config.json has no id2label"),
    ("no-weights", "has no weights: expected model.safetensors or pytorch_model.bin"),
    ("no-tokenizer", "has no tokenizer: expected tokenizer.json"),
])
def test_a_directory_that_does_not_fit_fails_with_one_line(hf_dirs: dict[str, Path], tmp_path: Path, case: str,
                                                           message: str) -> None:
    directory, task = _broken(hf_dirs, tmp_path, case)
    repository = tmp_path / "repo"
    result = invoke("hf", str(directory), "--task", task, "-r", str(repository))
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert not repository.exists()


def test_a_task_change_under_an_existing_name_is_refused(hf_export: tuple[Path, dict[str, str]],
                                                         hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    repository = Path(shutil.copytree(hf_export[0] / "bert-rerank", tmp_path / "repo" / "bert-rerank")).parent
    result = invoke("hf", str(hf_dirs["classify"]), "--task", "classify", "--name", "bert-rerank",
                    "-r", str(repository))
    assert result.exit_code == 1 and "'bert-rerank'" in flat(result) and "is a rerank model" in flat(result)
    assert versions(repository, "bert-rerank") == [1]


def test_gpu_tokenizer_step_applies_the_prefix(triton_hf: httpclient.InferenceServerClient,
                                              hf_export: tuple[Path, dict[str, str]], hf_dirs: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    repository, _ = hf_export
    assert config(repository, "mpnet-gpu").parameters["prefix"].string_value == PREFIX  # what clients read
    assert {t.name for t in config(repository, "mpnet-gpu_tokenizer").output} == {"input_ids", "attention_mask",
                                                                                 "token_count"}
    result = triton_hf.infer("mpnet-gpu_tokenizer", [strings("text", TEXTS)])
    expected = AutoTokenizer.from_pretrained(str(hf_dirs["mpnet"]))([PREFIX + t for t in TEXTS], truncation=True,
                                                                     max_length=64)["input_ids"]
    ids = result.as_numpy("input_ids")
    assert ids.shape == (len(TEXTS), 64)  # the longest text, truncated to the window (a multiple of 16)
    assert [ids[row, : len(want)].tolist() for row, want in enumerate(expected)] == expected
    assert result.as_numpy("token_count").reshape(-1).tolist() == [len(want) for want in expected]
