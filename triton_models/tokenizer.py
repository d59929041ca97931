"""Texts or (query, document) pairs → token ids, for Triton's python backend: the first step of every GPU ensemble
(`tritonstack export minilm --target gpu`, and `export hf`'s embed with a prefix, rerank, classify).

Inputs  `text`           TYPE_STRING [1]    (`pairs` = 0) one UTF-8 string per batch item, or
        `query`, `document` TYPE_STRING [1] (`pairs` = 1) one pair per batch item
Outputs `input_ids`      INT64|INT32 [-1]   token ids, right-padded with 0 (the encoder graph substitutes its pad id)
        `attention_mask` INT64|INT32 [-1]   1 for real tokens, 0 for padding
        `token_type_ids` INT64|INT32 [-1]   segment ids (only when this model's config lists the output)
        `token_count`    TYPE_INT32  [1]    tokens after truncation (special tokens included)

Parameters: `pairs`, `prefix` (prepended to every text, e.g. "query: "), `max_seq_length`, `pad_to_multiple_of`,
`tokenizer_file`. Each request is padded to its longest item rounded up to a multiple of `pad_to_multiple_of`
(capped at `max_seq_length`), so requests of similar length have equal shapes and Triton's dynamic batcher can
co-batch them in the encoder step. The id dtype follows this model's output config (int32 for some TensorRT plans).
A request that cannot be read gets an error without failing its batch. Next to a TensorRT plan, the step refuses to
load when the plan was built with another TensorRT than the server's (`model_support.check_tensorrt`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

# model_support.py and text_inputs.py are copied next to this file (model.py) in the version directory
sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_support import check_tensorrt, param, server_tensorrt
from text_inputs import gather_items, load_tokenizer, pad


class TritonPythonModel:
    """Tokenises every request of a call in one `encode_batch`, answers each request separately."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        check_tensorrt(config, server_tensorrt())
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.pairs = param(config, "pairs", "0") == "1"
        self.prefix = param(config, "prefix", "")
        self.max_seq_length = int(param(config, "max_seq_length", "512"))
        self.multiple = max(1, int(param(config, "pad_to_multiple_of", "16")))
        tokenizer_file = version_dir / param(config, "tokenizer_file", "tokenizer.json")
        self.tokenizer = load_tokenizer(tokenizer_file, self.max_seq_length)
        self.outputs = [o["name"] for o in config["output"] if o["name"] != "token_count"]
        self.id_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(config, "input_ids")["data_type"]
        )

    def _width(self, longest: int) -> int:
        rounded = -(-max(longest, 1) // self.multiple) * self.multiple
        return min(rounded, self.max_seq_length)

    def _response(self, encodings: list) -> pb_utils.InferenceResponse:
        lengths = [len(e.ids) for e in encodings]
        arrays = pad(encodings, self._width(max(lengths, default=1)), self.id_dtype)
        counts = np.array(lengths, dtype=np.int32).reshape(-1, 1)
        tensors = [pb_utils.Tensor(name, arrays[name]) for name in self.outputs]
        return pb_utils.InferenceResponse(output_tensors=[*tensors, pb_utils.Tensor("token_count", counts)])

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        items, spans = gather_items(requests, responses, pairs=self.pairs, prefix=self.prefix)
        encodings = self.tokenizer.encode_batch(items, add_special_tokens=True) if items else []
        for r, start, end in spans:
            responses[r] = self._response(encodings[start:end])
        return responses

    def finalize(self) -> None:
        self.tokenizer = None
