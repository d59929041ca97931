"""Text-in sentence embedding on ONNX Runtime, for Triton's python backend (the CPU target).

Inputs  `text`        TYPE_STRING [1]    one UTF-8 string per batch item
Outputs `embedding`   TYPE_FP32   [dim]  L2-normalised sentence embedding
        `token_count` TYPE_INT32  [1]    tokens actually embedded (after truncation, incl. [CLS]/[SEP])

Tokenising inside the model lets requests of any text length share one dynamic batch. Every request
gets exactly one response; a request whose bytes are not UTF-8 gets an error without failing its batch.
Tunables come from `parameters` in config.pbtxt.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer


def _param(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def _invalid(message: str) -> pb_utils.InferenceResponse:
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def _intra_op_threads(config: dict) -> int:
    """The configured count; 0 (auto) splits the cores between this model's instances instead of oversubscribing."""
    threads = int(_param(config, "intra_op_num_threads", "0"))
    if threads > 0:
        return threads
    instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
    return max(1, (os.cpu_count() or 1) // instances)


class TritonPythonModel:
    """One ORT session per model instance; tokenises, batches all requests of a call into ORT runs."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.max_seq_length = int(_param(config, "max_seq_length", "256"))
        self.ort_batch_size = int(_param(config, "ort_batch_size", "64"))

        self.tokenizer = Tokenizer.from_file(str(version_dir / _param(config, "tokenizer_file", "tokenizer.json")))
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        self.tokenizer.no_padding()  # we pad per ORT batch, to the longest item in it

        options = ort.SessionOptions()
        options.intra_op_num_threads = _intra_op_threads(config)
        options.inter_op_num_threads = int(_param(config, "inter_op_num_threads", "1"))
        # spin-waiting threads steal the cores Triton's frontends and the stub need on a small CPU box
        options.add_session_config_entry("session.intra_op.allow_spinning", _param(config, "allow_spinning", "0"))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        onnx_path = version_dir / _param(config, "onnx_file", "model.onnx")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.embedding_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(config, "embedding")["data_type"]
        )

    def _decode(self, request: pb_utils.InferenceRequest) -> list[str]:
        tensor = pb_utils.get_input_tensor_by_name(request, "text")
        if tensor is None:
            raise ValueError("input 'text' is required")
        values = tensor.as_numpy().reshape(-1)
        try:
            return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
        except UnicodeDecodeError as exc:
            raise ValueError(f"input 'text' item is not valid UTF-8: {exc}") from exc

    def _embed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        lengths = np.array([len(e.ids) for e in encodings], dtype=np.int32)
        out = None
        # sorting by length keeps padding small when short and long texts share a batch
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), self.ort_batch_size):
            idx = order[start : start + self.ort_batch_size]
            width = int(lengths[idx].max())
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                n = lengths[i]
                ids[row, :n] = encodings[i].ids
                mask[row, :n] = 1
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            result = self.session.run(None, feeds)[0]
            if out is None:
                out = np.empty((len(texts), result.shape[1]), dtype=self.embedding_dtype)
            out[idx] = result
        return out, lengths.reshape(-1, 1)

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        texts: list[str] = []
        spans: list[tuple[int, int, int]] = []
        for r, request in enumerate(requests):
            try:
                items = self._decode(request)
            except ValueError as exc:
                responses[r] = _invalid(str(exc))
                continue
            spans.append((r, len(texts), len(texts) + len(items)))
            texts.extend(items)
        if texts:
            try:
                embeddings, counts = self._embed(texts)
            except Exception as exc:  # one failed ORT run must still answer every request
                for r, _, _ in spans:
                    responses[r] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"embedding failed: {exc}")
                    )
                return responses
            for r, start, end in spans:
                responses[r] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("embedding", embeddings[start:end]),
                        pb_utils.Tensor("token_count", counts[start:end]),
                    ]
                )
        for r, response in enumerate(responses):
            if response is None:  # a request with zero items
                responses[r] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("embedding", np.zeros((0, 1), dtype=self.embedding_dtype)),
                        pb_utils.Tensor("token_count", np.zeros((0, 1), dtype=np.int32)),
                    ]
                )
        return responses

    def finalize(self) -> None:
        self.session = None
