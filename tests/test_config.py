"""Every config variant an export can generate parses with Triton's own ModelConfig schema and says what it should."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.config import ConfigError, Tensor, parse_version_policy
from export.encoder import specs
from export.errors import OptionError, TensorRTUnavailableError, VersionExistsError
from export.module.specs import generic_onnx
from export.repository import CONFIG_HEADER, ModelFiles, check_compatible, write_version
from export.serving import ServingOptions, string_warmup, validate_serving

MODEL = specs.EmbeddingModel(Path("model.onnx"), Path("tokenizer.json"), 256, 384, "fp32")
ENCODER_IN = [Tensor("input_ids", "TYPE_INT64", (-1,)), Tensor("attention_mask", "TYPE_INT64", (-1,))]
ENCODER_OUT = [Tensor("sentence_embedding", "TYPE_FP32", (384,))]
OPTS = ServingOptions(
    max_batch_size=32, max_queue_delay_us=500, preferred_batch_sizes=(8, 16), max_queue_size=100
)


def parse(text: str) -> mc.ModelConfig:
    """Parse exactly as the acceptance criteria say (and with the header comment export writes)."""
    cfg = mc.ModelConfig()
    text_format.Parse(CONFIG_HEADER + text, cfg)
    return cfg


def tensors(fields) -> dict[str, tuple[str, list[int]]]:
    return {t.name: (mc.DataType.Name(t.data_type), list(t.dims)) for t in fields}


def params(cfg: mc.ModelConfig) -> dict[str, str]:
    return {k: v.string_value for k, v in cfg.parameters.items()}


def assert_batching(cfg: mc.ModelConfig) -> None:
    db = cfg.dynamic_batching
    assert cfg.max_batch_size == 32
    assert db.max_queue_delay_microseconds == 500
    assert list(db.preferred_batch_size) == [8, 16]
    assert db.default_queue_policy.max_queue_size == 100
    assert db.default_queue_policy.timeout_action == mc.ModelQueuePolicy.REJECT


def test_cpu_text_embedding_is_a_python_model_with_text_in() -> None:
    files = specs.text_embedding_cpu("minilm", MODEL, OPTS)
    cfg = parse(files.config_text)
    assert cfg.name == "minilm" and cfg.backend == "python" and not cfg.platform
    assert tensors(cfg.input) == {"text": ("TYPE_STRING", [1])}
    assert tensors(cfg.output) == {"embedding": ("TYPE_FP32", [384]), "token_count": ("TYPE_INT32", [1])}
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
    assert_batching(cfg)
    assert params(cfg) == {
        "max_seq_length": "256",
        "ort_batch_size": "32",
        "ort_max_batch_tokens": "4096",
        "intra_op_num_threads": "0",
        "inter_op_num_threads": "1",
        "allow_spinning": "0",
        "onnx_file": "model.onnx",
        "tokenizer_file": "tokenizer.json",
        "precision": "fp32",
        "tritonstack_task": "embed",  # how the gateway tells an embed model from rerank/classify (docs/EXPORT.md)
    }
    assert set(files.files) == {"model.py", "model_support.py", "model.onnx", "tokenizer.json"}
    assert files.files["model.py"].name == "text_embedding.py" and files.files["model.py"].exists()
    assert files.files["model_support.py"].exists()  # model.py imports it from its own directory


def test_cpu_warmup_requests_and_string_file_format() -> None:
    files = specs.text_embedding_cpu("minilm", MODEL, OPTS)
    cfg = parse(files.config_text)
    # the largest ONNX Runtime run at load: 4096 tokens of the longest texts (256 tokens) = 16 rows
    assert [(w.name, w.batch_size) for w in cfg.model_warmup] == [("single_text", 1), ("full_batch", 32),
                                                                  ("longest_run", 16)]
    for warmup, file in zip(cfg.model_warmup, ("text", "text", "text_longest"), strict=True):
        text_input = warmup.inputs["text"]
        assert text_input.data_type == mc.TYPE_STRING and list(text_input.dims) == [1]
        assert text_input.input_data_file == file
    assert len(files.warmup["text_longest"]) > 256 * 4  # far beyond 256 tokens, truncated by the model
    data = files.warmup["text"]
    (length,) = struct.unpack("<I", data[:4])
    assert length == len(data) - 4 and data[4:].decode("utf-8") == specs.WARMUP_TEXT
    assert string_warmup(["é", ""]) == b"\x02\x00\x00\x00\xc3\xa9\x00\x00\x00\x00"


def test_no_warmup_and_no_dynamic_batching() -> None:
    opts = ServingOptions(warmup=False, dynamic_batching=False, instances=3)
    files = specs.text_embedding_cpu("minilm", MODEL, opts)
    cfg = parse(files.config_text)
    assert not cfg.model_warmup and not files.warmup
    assert not cfg.HasField("dynamic_batching")
    assert cfg.instance_group[0].count == 3


def test_gpu_onnxruntime_encoder_with_tensorrt_fp16_accelerator() -> None:
    model = specs.EmbeddingModel(Path("model.onnx"), Path("tokenizer.json"), 256, 384, "fp16")
    encoder = specs.text_embedding_gpu("minilm", model, OPTS, ENCODER_IN, ENCODER_OUT)[0]
    cfg = parse(encoder.config_text)
    assert cfg.name == "minilm_encoder" and cfg.platform == "onnxruntime_onnx" and not cfg.backend
    assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    (accelerator,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    assert tensors(cfg.input) == {"input_ids": ("TYPE_INT64", [-1]), "attention_mask": ("TYPE_INT64", [-1])}
    assert tensors(cfg.output) == {"sentence_embedding": ("TYPE_FP32", [384])}
    assert_batching(cfg)
    assert set(encoder.files) == {"model.onnx"}
    warm = cfg.model_warmup[0].inputs["input_ids"]
    assert list(warm.dims) == [16] and len(encoder.warmup["input_ids"]) == 16 * 8


def test_the_tensorrt_accelerator_builds_one_engine_for_every_shape_caches_it_and_warms_it_up() -> None:
    """One optimization profile over 1×1 … max_batch×max_seq (no engine rebuild per new sequence width), engines
    cached on the volume compose and Kubernetes mount, and warmup at the largest shape, so that the build happens
    before the model is ready; the names are those Triton 24.12's onnxruntime backend takes (it refuses others)."""
    model = specs.EmbeddingModel(Path("model.onnx"), Path("tokenizer.json"), 256, 384, "fp16")
    cfg = parse(specs.text_embedding_gpu("minilm", model, OPTS, ENCODER_IN, ENCODER_OUT)[0].config_text)
    (accelerator,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert dict(accelerator.parameters) == {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(1 << 30),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": "/var/cache/tritonstack/trt-engines",
        "trt_profile_min_shapes": "input_ids:1x1,attention_mask:1x1",
        "trt_profile_opt_shapes": "input_ids:32x128,attention_mask:32x128",
        "trt_profile_max_shapes": "input_ids:32x256,attention_mask:32x256",
    }
    largest = cfg.model_warmup[-1]
    assert largest.batch_size == 32 and all(list(i.dims) == [256] for i in largest.inputs.values())
    encoder = specs.text_embedding_gpu("minilm", model, OPTS, ENCODER_IN, ENCODER_OUT)[0]
    assert len(encoder.warmup[largest.inputs["input_ids"].input_data_file]) == 256 * 8
    generic = parse(generic_onnx("toy", Path("m.onnx"), ENCODER_IN, ENCODER_OUT, OPTS, target="gpu").config_text)
    (accelerator,) = generic.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.parameters["trt_engine_cache_path"] == "/var/cache/tritonstack/trt-engines"


def test_gpu_fp32_and_int8_accelerator_choice() -> None:
    fp32 = specs.text_embedding_gpu("m", MODEL, OPTS, ENCODER_IN, ENCODER_OUT)[0]
    (acc,) = parse(fp32.config_text).optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.parameters["precision_mode"] == "FP32"
    int8_model = specs.EmbeddingModel(Path("model.onnx"), Path("tokenizer.json"), 256, 384, "int8")
    int8 = specs.text_embedding_gpu("m", int8_model, OPTS, ENCODER_IN, ENCODER_OUT)[0]
    assert not parse(int8.config_text).HasField("optimization")  # TensorRT cannot run ORT's dynamic int8 ops


def test_gpu_tokenizer_and_ensemble_keep_the_cpu_contract() -> None:
    _, tokenizer, ensemble = specs.text_embedding_gpu(
        "minilm", MODEL, OPTS, ENCODER_IN, ENCODER_OUT, pad_to_multiple_of=32
    )
    tok = parse(tokenizer.config_text)
    assert tok.name == "minilm_tokenizer" and tok.backend == "python"
    assert [g.kind for g in tok.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert tensors(tok.input) == {"text": ("TYPE_STRING", [1])}
    assert tensors(tok.output) == {
        "input_ids": ("TYPE_INT64", [-1]),
        "attention_mask": ("TYPE_INT64", [-1]),
        "token_count": ("TYPE_INT32", [1]),
    }
    assert params(tok)["pad_to_multiple_of"] == "32" and params(tok)["max_seq_length"] == "256"
    assert tokenizer.files["model.py"].name == "tokenizer.py" and tokenizer.files["model.py"].exists()

    ens = parse(ensemble.config_text)
    cpu = parse(specs.text_embedding_cpu("minilm", MODEL, OPTS).config_text)
    assert ens.platform == "ensemble" and ens.max_batch_size == 32
    assert tensors(ens.input) == tensors(cpu.input) and tensors(ens.output) == tensors(cpu.output)
    assert not ens.instance_group and not ens.HasField("dynamic_batching") and not ensemble.files
    steps = ens.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["minilm_tokenizer", "minilm_encoder"]
    assert [s.model_version for s in steps] == [-1, -1]  # no version given: the newest loaded
    assert dict(steps[0].input_map) == {"text": "text"}
    assert dict(steps[0].output_map)["token_count"] == "token_count"
    assert dict(steps[1].input_map) == {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    assert dict(steps[1].output_map) == {"sentence_embedding": "embedding"}


def test_tensorrt_plan_encoder_follows_the_engine_io_types() -> None:
    engine_in = [Tensor("input_ids", "TYPE_INT32", (-1,)), Tensor("attention_mask", "TYPE_INT32", (-1,))]
    model = specs.EmbeddingModel(Path("model.onnx"), Path("tokenizer.json"), 256, 384, "fp16")
    encoder, tokenizer, _ = specs.text_embedding_gpu(
        "minilm", model, OPTS, engine_in, ENCODER_OUT, plan_file=Path("model.plan"), tensorrt_version="10.7.0"
    )
    cfg = parse(encoder.config_text)
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 32
    assert not cfg.HasField("optimization")  # precision is baked into the plan
    assert set(encoder.files) == {"model.plan"}
    assert tensors(cfg.input)["input_ids"] == ("TYPE_INT32", [-1])
    assert tensors(parse(tokenizer.config_text).output)["input_ids"] == ("TYPE_INT32", [-1])
    assert len(encoder.warmup["input_ids"]) == 16 * 4


def test_a_plan_records_its_tensorrt_and_the_ensemble_names_the_exported_version() -> None:
    """A plan loads only on the TensorRT that built it: its version rides on the encoder's and the tokenizer's config
    (the tokenizer step checks it against the server's at load); the steps name version 3, the one written."""
    model = specs.EmbeddingModel(Path("model.onnx"), Path("tokenizer.json"), 256, 384, "fp16")
    encoder, tokenizer, ensemble = specs.text_embedding_gpu(
        "minilm", model, OPTS, ENCODER_IN, ENCODER_OUT, version=3, plan_file=Path("model.plan"),
        tensorrt_version="10.7.0")
    assert params(parse(encoder.config_text))["tensorrt_version"] == "10.7.0"
    assert params(parse(tokenizer.config_text))["tensorrt_version"] == "10.7.0"
    steps = parse(ensemble.config_text).ensemble_scheduling.step
    assert [(s.model_name, s.model_version) for s in steps] == [("minilm_tokenizer", 3), ("minilm_encoder", 3)]
    onnx_encoder = specs.text_embedding_gpu("minilm", model, OPTS, ENCODER_IN, ENCODER_OUT, version=3)[0]
    assert "tensorrt_version" not in params(parse(onnx_encoder.config_text))
    with pytest.raises(ValueError, match="pass tensorrt_version"):
        specs.text_embedding_gpu("minilm", model, OPTS, ENCODER_IN, ENCODER_OUT, plan_file=Path("model.plan"))


def test_the_tensorrt_pin_is_the_images_and_a_mismatch_is_refused_at_export_and_at_load(monkeypatch) -> None:
    import re
    import sys
    import types

    from export.encoder import tensorrt

    dockerfile = (Path(__file__).parents[1] / "deploy" / "docker" / "triton-gpu.Dockerfile").read_text()
    assert re.search(r"tritonserver:(\d+\.\d+)-py3", dockerfile)[1] == tensorrt.TRITON_RELEASE == "24.12"
    assert tensorrt.TENSORRT_RELEASE == "10.7"  # what NVIDIA's Triton 24.12 ships
    assert tensorrt.tensorrt_mismatch("10.7.0.post1") is None
    assert "pip install 'tensorrt-cu12==10.7.*'" in tensorrt.tensorrt_mismatch("10.8.0.43")
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.16.1.11"))
    refused = r"installed `tensorrt` is 10\.16\.1\.11.*serves plans with TensorRT 10\.7"
    with pytest.raises(TensorRTUnavailableError, match=refused):
        tensorrt.require_tensorrt()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.SimpleNamespace())
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "triton_models"))
    import model_support

    config = {"parameters": {"tensorrt_version": {"string_value": "10.7.0"}}}
    model_support.check_tensorrt(config, "10.7.0.23")
    model_support.check_tensorrt(config, None)  # unknown here: the plan's own load says it
    model_support.check_tensorrt({}, "10.8.0")  # no plan
    with pytest.raises(RuntimeError, match=r"built with TensorRT 10\.7\.0, but this Triton runs TensorRT 10\.8\.0"):
        model_support.check_tensorrt(config, "10.8.0.43")
    assert model_support.server_tensorrt({"TRT_VERSION": "10.7.0.23"}) == "10.7.0.23"
    assert model_support.server_tensorrt({}, folders=()) is None
    sys.modules.pop("model_support", None)


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_generic_onnx_model(target: str) -> None:
    inputs = [Tensor("ids", "TYPE_INT64", (-1,)), Tensor("feats", "TYPE_FP32", (8,))]
    outputs = [Tensor("pooled", "TYPE_FP32", (8,)), Tensor("score", "TYPE_FP32", (1,))]
    files = generic_onnx("toy", Path("model.onnx"), inputs, outputs, OPTS, target=target, precision="fp32")
    cfg = parse(files.config_text)
    assert tensors(cfg.input) == {"ids": ("TYPE_INT64", [-1]), "feats": ("TYPE_FP32", [8])}
    assert tensors(cfg.output) == {"pooled": ("TYPE_FP32", [8]), "score": ("TYPE_FP32", [1])}
    assert_batching(cfg)
    warm = cfg.model_warmup[0].inputs
    assert list(warm["ids"].dims) == [1] and list(warm["feats"].dims) == [8]
    assert files.warmup["feats"] == np.zeros(8, dtype=np.float32).tobytes()
    if target == "cpu":
        assert cfg.backend == "python" and cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
        assert files.files["model.py"].name == "onnx_runtime.py" and params(cfg)["onnx_file"] == "model.onnx"
    else:
        assert cfg.platform == "onnxruntime_onnx" and cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        assert set(files.files) == {"model.onnx"}
        (acc,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
        assert acc.name == "tensorrt"


@pytest.mark.parametrize(
    ("policy", "check"),
    [
        ("latest:2", lambda p: p.latest.num_versions == 2),
        ("all", lambda p: p.HasField("all")),
        ("specific:1,3", lambda p: list(p.specific.versions) == [1, 3]),
    ],
)
def test_version_policies(policy: str, check) -> None:
    opts = ServingOptions(version_policy=policy)
    cfg = parse(specs.text_embedding_cpu("minilm", MODEL, opts).config_text)
    assert check(cfg.version_policy)


@pytest.mark.parametrize("policy", ["latest", "latest:0", "newest:1", "specific:", "specific:a", "all:2"])
def test_bad_version_policy_is_an_error(policy: str) -> None:
    with pytest.raises(ConfigError):
        parse_version_policy(policy)
    with pytest.raises(OptionError, match="--version-policy"):
        validate_serving(ServingOptions(version_policy=policy))


def test_preferred_batch_size_above_max_is_an_error() -> None:
    with pytest.raises(OptionError, match="preferred"):
        validate_serving(ServingOptions(max_batch_size=8, preferred_batch_sizes=(16,)))


def test_writer_refuses_a_model_of_another_kind_under_an_existing_name(tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(b"x")
    cpu = specs.text_embedding_cpu("minilm", MODEL, OPTS)
    cpu.files = {"model.onnx": source}
    write_version(tmp_path / "repo", [cpu], 1, force=False)
    ensemble = specs.text_embedding_gpu("minilm", MODEL, OPTS, ENCODER_IN, ENCODER_OUT)[2]
    with pytest.raises(VersionExistsError, match="ensemble"):
        check_compatible(tmp_path / "repo", ensemble, force=False)
    check_compatible(tmp_path / "repo", ModelFiles("other", ensemble.config_text), force=False)
