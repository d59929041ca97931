"""Text-in sentence embedding on ONNX Runtime, for Triton's python backend (the CPU target).

Inputs  `text`        TYPE_STRING [1]    one UTF-8 string per batch item
Outputs `embedding`   TYPE_FP32   [dim]  sentence embedding (L2-normalised unless the export said otherwise)
        `token_count` TYPE_INT32  [1]    tokens actually embedded (after truncation, incl. [CLS]/[SEP])

Tokenising inside the model lets requests of any text length share one dynamic batch. Every request
gets exactly one response; a request whose bytes are not UTF-8 gets an error without failing its batch.
Tunables come from `parameters` in config.pbtxt; `prefix` (written by `tritonstack export hf --prefix`, e.g.
"query: ") is prepended to every text before tokenising, so `token_count` includes its tokens. Pooling and
normalisation are inside the ONNX graph; `tritonstack_task` is "embed" (the contract above).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

# model_support.py is copied next to this file (model.py) in the version directory
sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_support import gather_texts, param, session_options


def ort_runs(sorted_lengths: np.ndarray, max_rows: int, max_tokens: int) -> list[tuple[int, int]]:
    """[start, end) runs over lengths sorted ascending: at most `max_rows` rows and `max_tokens` rows × padded
    width each (one row always fits). The bound on tokens bounds the memory ONNX Runtime's arena keeps for good
    (it grows to the largest run) without slowing long texts down (their cost is per token)."""
    runs, start = [], 0
    for end in range(1, len(sorted_lengths) + 1):
        rows, width = end - start, int(sorted_lengths[end - 1])
        if rows > max_rows or (rows > 1 and rows * width > max_tokens):
            runs.append((start, end - 1))
            start = end - 1
    if start < len(sorted_lengths):
        runs.append((start, len(sorted_lengths)))
    return runs


class TritonPythonModel:
    """One ORT session per model instance; tokenises, batches all requests of a call into ORT runs."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.max_seq_length = int(param(config, "max_seq_length", "256"))
        self.ort_batch_size = int(param(config, "ort_batch_size", "64"))
        self.max_batch_tokens = int(param(config, "ort_max_batch_tokens", "4096"))
        self.prefix = param(config, "prefix", "")

        self.tokenizer = Tokenizer.from_file(str(version_dir / param(config, "tokenizer_file", "tokenizer.json")))
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        self.tokenizer.no_padding()  # we pad per ORT batch, to the longest item in it

        options = session_options(config)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        onnx_path = version_dir / param(config, "onnx_file", "model.onnx")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.embedding_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(config, "embedding")["data_type"]
        )

    def _embed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.prefix:
            texts = [self.prefix + text for text in texts]
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        lengths = np.array([len(e.ids) for e in encodings], dtype=np.int32)
        out = None
        # sorting by length keeps padding small when short and long texts share a batch
        order = np.argsort(lengths, kind="stable")
        for start, end in ort_runs(lengths[order], self.ort_batch_size, self.max_batch_tokens):
            idx = order[start:end]
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
        texts, spans = gather_texts(requests, responses)
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
