"""Helpers shared by the python-backend models; the export copies this file next to each `model.py`.

Every model reads its tunables from `parameters` in config.pbtxt, answers a bad request with its own error
(never failing the batch), and configures ONNX Runtime the same way on a small CPU box.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from typing import Any

import triton_python_backend_utils as pb_utils


def param(config: dict, key: str, default: str) -> str:
    """A `parameters { key … value { string_value … } }` entry of the model config, or `default`."""
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


# where NVIDIA's images keep TensorRT's library (libnvinfer.so.<version>), when TRT_VERSION is not in the environment
TENSORRT_LIBRARIES = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/local/tensorrt/lib")


def server_tensorrt(environ: dict | None = None, folders: tuple[str, ...] = TENSORRT_LIBRARIES) -> str | None:
    """The TensorRT version this Triton serves plans with (NVIDIA's images set TRT_VERSION), or None if unknown."""
    environ = os.environ if environ is None else environ
    if environ.get("TRT_VERSION"):
        return environ["TRT_VERSION"]
    for folder in folders:
        for path in sorted(glob.glob(os.path.join(folder, "libnvinfer.so.*.*"))):
            return path.rsplit("libnvinfer.so.", 1)[1]
    return None


def check_tensorrt(config: dict, server: str | None) -> None:
    """Refuse to load next to a TensorRT plan built with another TensorRT than the server's (`tensorrt_version`,
    written by `tritonstack export … --format tensorrt`): the plan would not deserialise, and this says why and
    what to do. Nothing to check without the parameter or when the server's version is unknown."""
    built = param(config, "tensorrt_version", "")
    if not built or server is None or built.split(".")[:2] == server.split(".")[:2]:
        return
    raise RuntimeError(
        f"the encoder's TensorRT plan was built with TensorRT {built}, but this Triton runs TensorRT {server}: a plan "
        "only loads on the TensorRT that built it. Export again with the TensorRT of this image "
        "(export/encoder/tensorrt.py: TENSORRT_RELEASE), or serve --format onnx"
    )


def error_response(message: str, code_name: str = "INVALID_ARG") -> pb_utils.InferenceResponse:
    """A response carrying only an error (with Triton's error code where this Triton has it)."""
    code = getattr(pb_utils.TritonError, code_name, None)
    error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def intra_op_threads(config: dict) -> int:
    """The configured count; 0 (auto) splits the cores between this model's instances instead of oversubscribing."""
    threads = int(param(config, "intra_op_num_threads", "0"))
    if threads > 0:
        return threads
    instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
    return max(1, (os.cpu_count() or 1) // instances)


def session_options(config: dict):  # -> onnxruntime.SessionOptions (imported lazily: not every model needs ORT)
    """ORT options from the config: intra-op threads per instance, inter-op threads, spinning (off by default:
    spin-waiting threads steal the cores Triton's frontends and the stub need on a small CPU box)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads(config)
    options.inter_op_num_threads = int(param(config, "inter_op_num_threads", "1"))
    options.add_session_config_entry("session.intra_op.allow_spinning", param(config, "allow_spinning", "0"))
    return options


def request_texts(request: pb_utils.InferenceRequest, name: str = "text") -> list[str]:
    """The UTF-8 strings of a request's BYTES input; ValueError (for an error response) otherwise."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ValueError(f"input '{name}' is required")
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in tensor.as_numpy().reshape(-1)]
    except UnicodeDecodeError as exc:
        raise ValueError(f"input '{name}' item is not valid UTF-8: {exc}") from exc


def gather(requests: list, responses: list, read: Callable[[Any], list]) -> tuple[list, list[tuple[int, int, int]]]:
    """Every request's items (`read(request)`) in one list, and (request index, start, end) spans into it; a request
    that cannot be read (`read` raises ValueError) gets its error response in `responses` and no span."""
    items: list = []
    spans: list[tuple[int, int, int]] = []
    for r, request in enumerate(requests):
        try:
            mine = read(request)
        except ValueError as exc:
            responses[r] = error_response(str(exc))
            continue
        spans.append((r, len(items), len(items) + len(mine)))
        items.extend(mine)
    return items, spans


def gather_texts(requests: list, responses: list) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Every request's `text` items in one list, and their spans (`gather`)."""
    return gather(requests, responses, request_texts)
