"""Request-body schemas for `openapi_extra`: pydantic's JSON schema made valid inside an OpenAPI document.

`model_json_schema()` puts nested models under a local `$defs` and points at them with `#/$defs/<Name>`; pasted
into an operation's `requestBody` those references resolve against the OpenAPI document's root, where there is no
`$defs`, so clients and schema fuzzers saw a broken (effectively empty) body schema. `inline_defs` replaces every
such reference with the definition itself (the request models are not recursive; a cycle is refused).
"""

from __future__ import annotations

from typing import Any

_PREFIX = "#/$defs/"


def inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` without `$defs`: each `{"$ref": "#/$defs/X", ...}` replaced by X's definition (merged)."""
    defs: dict[str, Any] = schema.get("$defs", {})

    def resolve(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [resolve(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_PREFIX):
            name = ref.removeprefix(_PREFIX)
            if name in seen:
                raise ValueError(f"recursive request schema through {name}: cannot inline")
            rest = {k: resolve(v, seen) for k, v in node.items() if k != "$ref"}
            return {**resolve(defs[name], (*seen, name)), **rest}
        return {k: resolve(v, seen) for k, v in node.items() if k != "$defs"}

    return resolve(schema, ())


def json_request_body(schema: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` declaring a required JSON body of `schema`."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline_defs(schema)}}}}
