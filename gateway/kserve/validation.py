"""Validation of KServe v2 inference requests before they reach Triton (the `/v2` passthrough).

Triton's own HTTP front end is not hardened against hostile JSON (the bundled Triton; docs/RELIABILITY.md): a
malformed body or a wrong-typed field is answered with a **500**, and a single request declaring a huge tensor
shape (`"shape": [8644937, 1722961068615836, 49195]`) **killed the server process**. So the gateway checks the
JSON part of every inference request (the whole body, or its first `Inference-Header-Content-Length` bytes with
the binary tensor extension) and refuses with a 400 (KServe v2 error shape):

- syntax (orjson; nesting deeper than 1024 is refused too) and shape: an object with a non-empty `inputs` list of
  `{name, shape, datatype, data | parameters.binary_data_size}`, optional `outputs` `{name, parameters}`, `id` a
  string, parameter values scalars;
- sizes: every dimension ≥ 0 and the element count of each tensor ≤ the body limit (no encoding stores an element
  in less than a byte), binary sizes within the body;
- JSON data: a (nested) list whose leaves match the datatype (booleans, integers, numbers or strings).

The raw body is still what is forwarded. A compressed body (`Content-Encoding`) is Triton's to decompress; it is
not inspected (documented in docs/RELIABILITY.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from gateway.errors import InvalidRequestError, validation_error

Scalar = StrictBool | StrictInt | StrictFloat | StrictStr
Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
                   "FP64", "BF16", "BYTES"]
_MAX_DIMS = 16


class _Tensor(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: StrictStr = Field(min_length=1, max_length=256)
    shape: list[StrictInt] = Field(max_length=_MAX_DIMS)
    datatype: Datatype
    data: list[Any] | None = None
    parameters: dict[str, Scalar] | None = None


class _Output(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: StrictStr = Field(min_length=1, max_length=256)
    parameters: dict[str, Scalar] | None = None


class _InferRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: StrictStr | None = None
    inputs: list[_Tensor] = Field(min_length=1)
    outputs: list[_Output] | None = None
    parameters: dict[str, Scalar] | None = None


def _leaves(data: list[Any], depth: int = 0) -> Iterator[Any]:
    for item in data:
        if isinstance(item, list):
            if depth >= _MAX_DIMS:
                raise InvalidRequestError("tensor data is nested deeper than its shape allows", param="inputs.data")
            yield from _leaves(item, depth + 1)
        else:
            yield item


def _leaf_ok(datatype: str, value: Any) -> bool:
    if datatype == "BOOL":
        return isinstance(value, bool)
    if datatype == "BYTES":
        return isinstance(value, str)
    if isinstance(value, bool):
        return False
    if datatype.startswith(("INT", "UINT")):
        return isinstance(value, int)
    return isinstance(value, int | float)


def _check_tensor(index: int, tensor: _Tensor, max_elements: int, binary_bytes: int | None) -> int:
    """The tensor's binary size (0 for JSON data); InvalidRequestError when it cannot be a sane tensor."""
    param = f"inputs.{index}"
    if any(dim < 0 for dim in tensor.shape):
        raise InvalidRequestError(f"tensor '{tensor.name}' dimensions must be non-negative", param=f"{param}.shape")
    if math.prod(tensor.shape) > max_elements:
        raise InvalidRequestError(f"tensor '{tensor.name}' declares more elements than a request may carry "
                                  f"({max_elements})", param=f"{param}.shape", code="tensor_too_large")
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if binary_bytes is None or isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidRequestError("'binary_data_size' needs the binary tensor extension and a byte count",
                                      param=f"{param}.parameters.binary_data_size")
        return size
    if tensor.data is None:
        raise InvalidRequestError(f"tensor '{tensor.name}' has neither 'data' nor binary data", param=f"{param}.data")
    if not all(_leaf_ok(tensor.datatype, leaf) for leaf in _leaves(tensor.data)):
        raise InvalidRequestError(f"tensor '{tensor.name}' data does not match datatype {tensor.datatype}",
                                  param=f"{param}.data")
    return 0


def check_infer_request(headers: Mapping[str, str], body: bytes, max_elements: int) -> None:
    """Raise InvalidRequestError (400) unless `body` is an inference request Triton can safely be given."""
    if "content-encoding" in headers:
        return
    declared = headers.get("inference-header-content-length")
    binary_bytes: int | None = None
    if declared is not None:
        if not declared.isdigit() or int(declared) > len(body):
            raise InvalidRequestError("Inference-Header-Content-Length must be a byte count within the body",
                                      param="Inference-Header-Content-Length", code="invalid_header")
        binary_bytes = len(body) - int(declared)
        body = body[: int(declared)]
    try:
        request = _InferRequest.model_validate(orjson.loads(body))
    except orjson.JSONDecodeError:
        raise InvalidRequestError("inference request body is not valid JSON", code="invalid_json") from None
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False)) from None
    total = sum(_check_tensor(i, t, max_elements, binary_bytes) for i, t in enumerate(request.inputs))
    if binary_bytes is not None and total > binary_bytes:
        raise InvalidRequestError("binary tensor sizes exceed the body", param="inputs")
