"""Any ONNX model on ONNX Runtime, for Triton's python backend (the CPU target of `export torch`).

Tensors in → ONNX Runtime → tensors out; names and dtypes come from this model's config.pbtxt, which
`tritonstack export` generated from the ONNX graph. Requests that Triton batched together are
concatenated along the batch axis and run once (grouped by shape, in case shapes differ), then split
back: one response per request. A request with a missing input gets an error; its batch-mates don't.
Parameters: `onnx_file`, `intra_op_num_threads`, `inter_op_num_threads`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# model_support.py is copied next to this file (model.py) in the version directory
sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_support import error_response, param, session_options


class TritonPythonModel:
    """One ORT session per model instance."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.inputs = {i["name"]: pb_utils.triton_string_to_numpy(i["data_type"]) for i in config["input"]}
        self.outputs = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}
        options = session_options(config)
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            device = int(args.get("model_instance_device_id", 0))
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device}))
        onnx_path = version_dir / param(config, "onnx_file", "model.onnx")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)

    def _read(self, request: pb_utils.InferenceRequest) -> dict[str, np.ndarray]:
        feeds = {}
        for name, dtype in self.inputs.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input {name!r} is required")
            feeds[name] = tensor.as_numpy().astype(dtype, copy=False)
        return feeds

    def _run_group(self, feeds_list: list[dict[str, np.ndarray]]) -> list[list[pb_utils.Tensor]]:
        if self.batched:
            feeds = {name: np.concatenate([f[name] for f in feeds_list], axis=0) for name in self.inputs}
        else:
            feeds = feeds_list[0]
        names = list(self.outputs)
        results = self.session.run(names, feeds)
        sizes = [len(next(iter(f.values()))) for f in feeds_list] if self.batched else [None]
        splits = np.cumsum(sizes)[:-1] if self.batched else []
        per_output = [np.split(r, splits) if self.batched else [r] for r in results]
        return [
            [
                pb_utils.Tensor(name, per_output[k][i].astype(self.outputs[name], copy=False))
                for k, name in enumerate(names)
            ]
            for i in range(len(feeds_list))
        ]

    def _groups(self, requests: list, responses: list) -> dict[tuple, list[tuple[int, dict[str, np.ndarray]]]]:
        groups: dict[tuple, list[tuple[int, dict[str, np.ndarray]]]] = {}
        for r, request in enumerate(requests):
            try:
                feeds = self._read(request)
            except ValueError as exc:
                responses[r] = error_response(str(exc))
                continue
            key = tuple((name, a.shape[1:] if self.batched else a.shape) for name, a in feeds.items())
            if not self.batched:
                key = (r, *key)  # unbatched models run each request on its own
            groups.setdefault(key, []).append((r, feeds))
        return groups

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        for members in self._groups(requests, responses).values():
            try:
                tensors = self._run_group([feeds for _, feeds in members])
            except Exception as exc:  # one failed run must still answer each of its requests
                for r, _ in members:
                    responses[r] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"inference failed: {exc}")
                    )
                continue
            for (r, _), outputs in zip(members, tensors, strict=True):
                responses[r] = pb_utils.InferenceResponse(output_tensors=outputs)
        return responses

    def finalize(self) -> None:
        self.session = None
