"""The default JSON response class: orjson, numpy-aware (float32 arrays serialize without a Python loop)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(content: Any) -> bytes:
    """Serialize with the gateway's orjson options."""
    return orjson.dumps(content, option=_OPTIONS)


class OrjsonResponse(JSONResponse):
    """`application/json` rendered by orjson (FastAPI's ORJSONResponse is deprecated upstream)."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
