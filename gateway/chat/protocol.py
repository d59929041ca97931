"""Wire models of `POST /v1/chat/completions` (the OpenAI contract, text only).

Supported: `messages` (roles system, developer, user, assistant; content a string or text parts), `model`,
`stream`, `stream_options.include_usage`, `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`,
`stop` (≤ 4), `seed`, `user`, `presence_penalty`, `frequency_penalty`, `logprobs` / `top_logprobs` (≤ 20),
`n` (1 only), and vLLM's `min_tokens` (the SDK's `extra_body`; honoured by Triton deployments, not sent to cloud
ones, which do not know it). Tools, function calling, a non-empty `logit_bias`, a `response_format` other than
text (JSON modes), audio and image parts are refused with a clear 400 naming the parameter; other unknown fields
are ignored (SDKs add new ones). Requests with `logprobs` are not cached (the answer cache keeps text only).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "audio", "modalities", "prediction",
                "parallel_tool_calls")
MAX_TOP_LOGPROBS = 20
_NEEDS_FLAG = {  # a field only allowed with a flag set (declared after the flag, which is validated first)
    "stream_options": ("stream", "'stream_options' is only allowed when 'stream' is true"),
    "top_logprobs": ("logprobs", "'top_logprobs' needs 'logprobs': true"),
}


class TextPart(BaseModel):
    """A text content part."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message of the conversation."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(default=None, max_length=256)

    @field_validator("role", mode="before")
    @classmethod
    def _known_role(cls, value: Any) -> Any:
        if value in ("tool", "function"):
            raise ValueError(f"messages with role '{value}' are not supported (no tool calling on this server)")
        return value

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("'content' must be a string or an array of text parts")
        if isinstance(value, list):
            for part in value:
                if isinstance(part, dict) and part.get("type") != "text":
                    raise ValueError(f"content parts of type '{part.get('type')}' are not supported; send text")
        return value

    @property
    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    """`stream_options`: `include_usage` adds a final chunk with `choices: []` and the usage."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The request body."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # bounded like the wire types downstream (Triton's INT32/INT64 tensors, orjson's 64-bit integers): an
    # out-of-range integer is the caller's 400, never a serializer's 500
    # and strict: "10" or true is a 400, as with OpenAI, not a silently coerced 10 or 1
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX, strict=True)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX, strict=True)
    min_tokens: int | None = Field(default=None, ge=0, le=INT32_MAX, strict=True)  # declared after the maxima
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX, strict=True)
    user: str | None = Field(default=None, max_length=256)
    n: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    logprobs: bool | None = Field(default=None, strict=True)
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS, strict=True)  # after `logprobs`
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    parallel_tool_calls: Any = None
    logit_bias: Any = None
    response_format: Any = None

    @field_validator(*_UNSUPPORTED)
    @classmethod
    def _unsupported(cls, value: Any) -> Any:
        if value is not None and value is not False:
            raise ValueError("this parameter is not supported by this server (text chat completions only)")
        return None

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: Any) -> None:
        if value:  # token ids of one tokenizer; a route may fall back to a model with another: refused, not ignored
            raise ValueError("logit_bias is not supported by this server")
        return None

    @field_validator("response_format")
    @classmethod
    def _response_format(cls, value: Any) -> None:
        kind = value.get("type") if isinstance(value, dict) else value
        if kind not in (None, "text"):  # JSON modes need constrained decoding: refused, never free text instead
            raise ValueError(f"response_format {kind!r} is not supported by this server (text only)")
        return None

    @field_validator("n")
    @classmethod
    def _single_choice(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError("only n=1 is supported (one choice per request)")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value

    @field_validator("min_tokens")
    @classmethod
    def _min_tokens(cls, value: int | None, info: ValidationInfo) -> int | None:
        most = info.data.get("max_completion_tokens") or info.data.get("max_tokens")
        if value is not None and most is not None and value > most:
            raise ValueError(f"min_tokens ({value}) must not exceed the maximum number of tokens ({most})")
        return value

    @field_validator(*_NEEDS_FLAG)
    @classmethod
    def _needs_flag(cls, value: Any, info: ValidationInfo) -> Any:
        flag, message = _NEEDS_FLAG[info.field_name]
        if value is not None and not info.data.get(flag):
            raise ValueError(message)
        return value

    @property
    def requested_max_tokens(self) -> int | None:
        """`max_completion_tokens`, else `max_tokens` (None when neither was given)."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def deterministic(self) -> bool:
        """Cacheable: temperature 0 or an explicit seed, and no log-probabilities (the cache keeps text only)."""
        return (self.temperature == 0 or self.seed is not None) and not self.logprobs

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatUsage(BaseModel):
    """Token usage of one completion."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    """The generated message."""

    role: Literal["assistant"] = "assistant"
    content: str | None


class Choice(BaseModel):
    """The single choice."""

    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None  # {"content": [token entries], "refusal": None} when asked for


class ChatCompletion(BaseModel):
    """The non-stream response body (documented here; built as a dict by the service)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: ChatUsage
