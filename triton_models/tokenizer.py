"""Text → token ids, for Triton's python backend: the first step of the GPU text-embedding ensemble.

Inputs  `text`           TYPE_STRING [1]    one UTF-8 string per batch item
Outputs `input_ids`      INT64|INT32 [-1]   token ids, right-padded with 0
        `attention_mask` INT64|INT32 [-1]   1 for real tokens, 0 for padding
        `token_count`    TYPE_INT32  [1]    tokens actually embedded (after truncation, incl. [CLS]/[SEP])

Each request is padded to the longest item in it, rounded up to a multiple of the `pad_to_multiple_of`
parameter (capped at `max_seq_length`): requests of similar length then have equal shapes, which is what
lets Triton's dynamic batcher co-batch them in the encoder step. The id dtype follows this model's
output config, so it matches an encoder that takes int32 (some TensorRT plans) as well as int64.
A request whose bytes are not UTF-8 gets an error without failing its batch. Next to a TensorRT plan, the step
refuses to load when the plan was built with another TensorRT than the server's (`model_support.check_tensorrt`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

# model_support.py is copied next to this file (model.py) in the version directory
sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_support import check_tensorrt, gather_texts, param, server_tensorrt


class TritonPythonModel:
    """Tokenises every request of a call in one `encode_batch`, answers each request separately."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        check_tensorrt(config, server_tensorrt())
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.max_seq_length = int(param(config, "max_seq_length", "256"))
        self.multiple = max(1, int(param(config, "pad_to_multiple_of", "16")))
        self.tokenizer = Tokenizer.from_file(str(version_dir / param(config, "tokenizer_file", "tokenizer.json")))
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        self.tokenizer.no_padding()
        self.id_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(config, "input_ids")["data_type"]
        )

    def _width(self, longest: int) -> int:
        rounded = -(-max(longest, 1) // self.multiple) * self.multiple
        return min(rounded, self.max_seq_length)

    def _response(self, encodings: list) -> pb_utils.InferenceResponse:
        lengths = [len(e.ids) for e in encodings]
        width = self._width(max(lengths, default=1))
        ids = np.zeros((len(encodings), width), dtype=self.id_dtype)
        mask = np.zeros((len(encodings), width), dtype=self.id_dtype)
        for row, encoding in enumerate(encodings):
            ids[row, : lengths[row]] = encoding.ids
            mask[row, : lengths[row]] = 1
        counts = np.array(lengths, dtype=np.int32).reshape(-1, 1)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("input_ids", ids),
                pb_utils.Tensor("attention_mask", mask),
                pb_utils.Tensor("token_count", counts),
            ]
        )

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        texts, spans = gather_texts(requests, responses)
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True) if texts else []
        for r, start, end in spans:
            responses[r] = self._response(encodings[start:end])
        return responses

    def finalize(self) -> None:
        self.tokenizer = None
