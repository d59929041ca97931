"""Reranking and text classification on ONNX Runtime, for Triton's python backend (the CPU target of
`tritonstack export hf --task rerank|classify`).

The config's `tritonstack_task` parameter says which contract this model serves:

rerank (a cross-encoder scoring (query, document) pairs)
  Inputs  `query`       TYPE_STRING [1]
          `document`    TYPE_STRING [1]
  Outputs `score`       TYPE_FP32   [1]   sigmoid(logit), as sentence-transformers' CrossEncoder and TEI score
          `logit`       TYPE_FP32   [1]   the model's raw relevance logit
          `token_count` TYPE_INT32  [1]   tokens of the pair after truncation (special tokens included)

classify (a sequence classifier)
  Inputs  `text`        TYPE_STRING [1]
  Outputs `scores`      TYPE_FP32   [num_labels]  softmax over the labels, or per-label sigmoid when `problem_type`
                                                  is multi_label_classification
          `token_count` TYPE_INT32  [1]
  Parameters `labels` (JSON array of label names in id order) and `problem_type` describe `scores` to clients.

The ONNX graph takes `input_ids`, `attention_mask` (and `token_type_ids` when the model uses segments) and returns
`logits` and `scores` (the activation is inside the graph). Tokenising inside the model lets requests of any length
share one dynamic batch; every request gets exactly one response, and a request that cannot be read (missing input,
bytes that are not UTF-8) gets an error without failing its batch. Tunables come from `parameters` in config.pbtxt:
`max_seq_length`, `ort_batch_size`, `onnx_file`, `tokenizer_file` and the ONNX Runtime thread settings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# model_support.py and text_inputs.py are copied next to this file (model.py) in the version directory
sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_support import param, session_options
from text_inputs import gather_items, load_tokenizer, pad


class TritonPythonModel:
    """One ORT session per model instance; tokenises every request of a call, runs length-sorted ORT batches."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.task = param(config, "tritonstack_task", "classify")
        if self.task not in ("rerank", "classify"):
            raise ValueError(f"tritonstack_task {self.task!r}: this model serves rerank or classify")
        self.pairs = self.task == "rerank"
        self.ort_batch_size = int(param(config, "ort_batch_size", "64"))
        max_length = int(param(config, "max_seq_length", "512"))
        self.tokenizer = load_tokenizer(version_dir / param(config, "tokenizer_file", "tokenizer.json"), max_length)
        options = session_options(config)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        onnx_path = version_dir / param(config, "onnx_file", "model.onnx")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = pb_utils.get_output_config_by_name(config, "score" if self.pairs else "scores")
        self.width = int(outputs["dims"][0])  # rerank: 1; classify: the number of labels

    def _run(self, items: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits, scores, token counts) of every item, in order."""
        encodings = self.tokenizer.encode_batch(items, add_special_tokens=True)
        lengths = np.array([len(e.ids) for e in encodings], dtype=np.int32)
        logits = np.empty((len(items), self.width), dtype=np.float32)
        scores = np.empty((len(items), self.width), dtype=np.float32)
        order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding per ORT batch
        for start in range(0, len(order), self.ort_batch_size):
            idx = order[start : start + self.ort_batch_size]
            feeds = pad([encodings[i] for i in idx], int(lengths[idx].max()), np.int64)
            logits[idx], scores[idx] = self.session.run(["logits", "scores"],
                                                        {name: feeds[name] for name in self.input_names})
        return logits, scores, lengths.reshape(-1, 1)

    def _outputs(self, logits: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> list:
        if self.pairs:
            return [pb_utils.Tensor("score", scores[:, :1]), pb_utils.Tensor("logit", logits[:, :1]),
                    pb_utils.Tensor("token_count", counts)]
        return [pb_utils.Tensor("scores", scores), pb_utils.Tensor("token_count", counts)]

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        items, spans = gather_items(requests, responses, pairs=self.pairs)
        if items:
            try:
                logits, scores, counts = self._run(items)
            except Exception as exc:  # one failed ORT run must still answer every request
                for r, _, _ in spans:
                    responses[r] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"{self.task} failed: {exc}")
                    )
                return responses
            for r, start, end in spans:
                responses[r] = pb_utils.InferenceResponse(
                    output_tensors=self._outputs(logits[start:end], scores[start:end], counts[start:end])
                )
        empty = np.zeros((0, self.width), dtype=np.float32)
        for r, response in enumerate(responses):
            if response is None:  # a request with zero items
                responses[r] = pb_utils.InferenceResponse(
                    output_tensors=self._outputs(empty, empty, np.zeros((0, 1), dtype=np.int32))
                )
        return responses

    def finalize(self) -> None:
        self.session = None
