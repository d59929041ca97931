"""Each model's task, read from what Triton reports, and the 400 for a request sent to the wrong task's route.

The contract with the export (`tritonstack export hf`): a model's config.pbtxt names its task in
`parameters { key: "tritonstack_task" value { string_value: "embed" | "rerank" | "classify" } }`. A model without
that parameter is `embed` when it takes `text` and returns `embedding` (the MiniLM export), `chat` when it takes
`messages` or `prompt` (the generation models), and has no task otherwise (served on `/v2` only).
"""

from __future__ import annotations

from gateway.backends.base import ModelInfo
from gateway.errors import InvalidRequestError

TASK_PARAM = "tritonstack_task"
EMBED = "embed"
RERANK = "rerank"
CLASSIFY = "classify"
CHAT = "chat"

# the route that serves each task, named in the mismatch message
ROUTES = {EMBED: "/v1/embeddings", RERANK: "/v1/rerank", CLASSIFY: "/v1/classify", CHAT: "/v1/chat/completions"}


def task_of(info: ModelInfo) -> str | None:
    """The model's task: its `tritonstack_task` parameter, else inferred from its inputs and outputs."""
    declared = info.extra.get(TASK_PARAM, "").strip().lower()
    if declared:
        return declared
    inputs = {tensor.name for tensor in info.inputs}
    if "text" in inputs and info.output("embedding") is not None:
        return EMBED
    if inputs & {"messages", "prompt"}:
        return CHAT
    return None


def _article(task: str) -> str:
    return "an" if task[:1] in "aeiou" else "a"


def require_task(info: ModelInfo, task: str, route: str | None = None) -> None:
    """InvalidRequestError (400, `param: "model"`, code `model_task_mismatch`) unless `info` serves `task`;
    `route` names what asked (default: the task's route), e.g. "minilm is an embed model; /v1/rerank needs a
    rerank model (…)"."""
    actual = task_of(info)
    if actual == task:
        return
    route = route or ROUTES.get(task, task)
    what = f"{_article(actual)} {actual} model" if actual else "not served on /v1 (no task: use /v2)"
    raise InvalidRequestError(
        f"{info.name} is {what}; {route} needs {_article(task)} {task} model (GET /v1/models lists each model's "
        "task)",
        param="model", code="model_task_mismatch")
