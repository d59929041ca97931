"""Streaming text generation with continuous batching, for Triton's python backend (decoupled).

Inputs (all TYPE_STRING/scalars of shape [1]; every input is optional, but one of `messages`/`prompt` is needed)
    messages      TYPE_STRING  JSON array of OpenAI chat messages; the model's chat template is applied here
    prompt        TYPE_STRING  raw prompt text, used as is (no template) when `messages` is absent
    max_tokens    TYPE_INT32   tokens to generate at most (default: generation.json's; capped by the context left)
    min_tokens    TYPE_INT32   tokens to generate at least: end-of-sequence is masked out until then (default 0;
                               stop strings still end the text; vLLM's `min_tokens`, transformers' `min_new_tokens`)
    temperature   TYPE_FP32    0 = greedy; default from generation.json
    top_p         TYPE_FP32    nucleus sampling mass; default from generation.json
    seed          TYPE_INT64   sampling seed (same seed + same prompt + same settings → same text)
    presence_penalty  TYPE_FP32  -2..2 (default 0): OpenAI's; subtracted from the logit of each token generated so far
    frequency_penalty TYPE_FP32  -2..2 (default 0): OpenAI's; subtracted once per time a token was generated so far
    logprobs      TYPE_INT32   0..20: return the sampled tokens' log-probabilities with this many alternatives each
                               (`llm_logprobs`; absent: none)
    stop          TYPE_STRING  JSON array of up to 4 stop strings (the text ends before the first match)
    max_stream_interval TYPE_INT32  tokens one response may carry at most (default: the `max_stream_interval`
                               parameter, 4; 1 = a response per token). Under load the scheduler coalesces a
                               stream's tokens (`llm_scheduler`); the first token always comes alone
Outputs (every response)
    text              TYPE_STRING  the text delta of this response (one token's, or several coalesced)
    finish_reason     TYPE_STRING  "" until the final response, then "stop" or "length"
    prompt_tokens     TYPE_INT32   prompt length in tokens
    completion_tokens TYPE_INT32   tokens generated so far
    step              TYPE_INT64   id of the forward pass that produced this token (shared by batched requests)
    batch_size        TYPE_INT32   rows in that forward pass (1 at prefill)
    logprobs          TYPE_STRING  JSON array of the log-probabilities of this response's tokens, OpenAI's shape
                                   ("" when the request did not ask for them)

Each request gets zero or more responses and exactly one final one (TRITONSERVER_RESPONSE_COMPLETE_FINAL,
carrying the finish reason and the counts). A full model rejects a request at once with UNAVAILABLE and a
message starting "overloaded:" (HTTP 503 on the generate endpoints); an invalid one with INVALID_ARG and
"invalid request:" (errors inside a gRPC stream carry only the message, so the prefix is the contract).
`execute` only parses and queues; the scheduler thread (`llm_scheduler`) generates. Tunables come from
`parameters` in config.pbtxt, and so does the decode mode (`llm_decode_mode`: exact, or int8 within the gate the
export recorded), which the model logs at load.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

# the llm_* modules and model_support are copied next to model.py
sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_support import error_response, param

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL






def _scalar(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise ValueError(f"input {name!r} must hold exactly one value")
    value = values[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value.item()


class PassCounts:
    """Forward-pass counters, added up in the scheduler thread and pushed to Triton's metrics together, at most every
    `interval` seconds and before each final response (each push is an IPC round trip of the python backend: three
    per decode step were a serial cost of every step)."""

    KEYS = ("forward_passes", "decode_steps", "decode_rows")

    def __init__(self, metrics: dict, interval: float = 0.5) -> None:
        self.metrics, self.interval = metrics, interval
        self.lock = threading.Lock()
        self.pending = dict.fromkeys(self.KEYS, 0)
        self.flushed = time.monotonic()

    def add(self, rows: int, decode: bool) -> None:
        with self.lock:
            self.pending["forward_passes"] += 1
            if decode:
                self.pending["decode_steps"] += 1
                self.pending["decode_rows"] += rows
        if time.monotonic() - self.flushed >= self.interval:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, dict.fromkeys(self.KEYS, 0)
            self.flushed = time.monotonic()
        for key, value in pending.items():
            if value and key in self.metrics:
                self.metrics[key].increment(value)


class ResponseSink:
    """A request's response sender, as the scheduler's `Sink`; `ended` runs after its final response."""

    def __init__(self, sender, metrics: dict, ended: Callable[[], None], counts: PassCounts) -> None:
        self.sender = sender
        self.metrics = metrics
        self.ended = ended
        self.counts = counts

    def _response(self, text: str, reason: str, info) -> pb_utils.InferenceResponse:
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("text", np.array([text.encode("utf-8")], dtype=np.object_)),
            pb_utils.Tensor("finish_reason", np.array([reason.encode("utf-8")], dtype=np.object_)),
            pb_utils.Tensor("prompt_tokens", np.array([info.prompt_tokens], dtype=np.int32)),
            pb_utils.Tensor("completion_tokens", np.array([info.completion_tokens], dtype=np.int32)),
            pb_utils.Tensor("step", np.array([info.step], dtype=np.int64)),
            pb_utils.Tensor("batch_size", np.array([info.batch_size], dtype=np.int32)),
            pb_utils.Tensor("logprobs", np.array([info.logprobs.encode("utf-8")], dtype=np.object_)),
        ])

    def token(self, text: str, info) -> None:
        self.sender.send(self._response(text, "", info), flags=0)

    def finish(self, text: str, reason: str, info) -> None:
        if "completion_tokens" in self.metrics:  # counted first: a client that saw the final response sees them
            self.metrics["completion_tokens"].increment(info.completion_tokens)
            self.metrics["requests"].increment(1)
            self.counts.flush()
        try:
            self.sender.send(self._response(text, reason, info), flags=FINAL)
        finally:
            self.ended()

    def fail(self, message: str) -> None:
        try:
            self.sender.send(error_response(message, "INTERNAL"), flags=FINAL)
        finally:
            self.ended()

    def cancelled(self) -> bool:
        return bool(self.sender.is_cancelled())


def _place(provider: str, args: dict):
    """Where the decoder runs: the CPU, or the GPU Triton gave this instance (`KIND_GPU`)."""
    from llm_engine import HOST, Place

    if provider == "cpu":
        return HOST
    if provider != "cuda":
        raise ValueError(f"parameter execution_provider {provider!r}: expected cpu or cuda")
    if args.get("model_instance_kind") != "GPU":
        raise ValueError("execution_provider cuda needs a KIND_GPU instance group (tritonstack export --target gpu)")
    return Place("cuda", int(args["model_instance_device_id"]))


def _log(message: str, warning: bool = False) -> None:
    """To Triton's log (the python backend's Logger where this Triton has one)."""
    logger = getattr(pb_utils, "Logger", None)
    if logger is None:
        logging.getLogger("tritonstack.generation").log(logging.WARNING if warning else logging.INFO, message)
    else:
        (logger.log_warn if warning else logger.log_info)(message)


def _decode_mode(config: dict):
    """The decode mode in the parameters (`llm_decode_mode`), logged with its gate; unknown modes are refused."""
    from llm_decode_mode import DecodeMode, cpu_int8_features

    mode = DecodeMode.from_parameters(lambda key, default: param(config, key, default),
                                      list(config.get("parameters", {})))
    _log(mode.describe())
    if (warning := mode.warning(cpu_int8_features())) is not None:
        _log(warning, warning=True)
    return mode


def _metrics(model: str) -> tuple[list, dict]:
    """Custom Prometheus metrics on Triton's metrics endpoint: (families to keep alive, metrics by name)."""
    family_type = getattr(pb_utils, "MetricFamily", None)
    if family_type is None:
        return [], {}
    counter, gauge = family_type.COUNTER, family_type.GAUGE
    specs = {
        "forward_passes": ("tritonstack_llm_forward_passes_total", "Decoder forward passes (prefill + decode)",
                           counter),
        "decode_steps": ("tritonstack_llm_decode_steps_total", "Decode passes (one token for every running row)",
                         counter),
        "decode_rows": ("tritonstack_llm_decode_rows_total", "Rows over all decode passes (sum of batch sizes)",
                        counter),
        "completion_tokens": ("tritonstack_llm_completion_tokens_total", "Tokens generated", counter),
        "requests": ("tritonstack_llm_requests_total", "Generation requests completed", counter),
        "in_flight": ("tritonstack_llm_requests_in_flight",
                      "Accepted generation requests not finished yet (waiting, being prefilled or decoding)", gauge),
    }
    families, metrics = [], {}
    for key, (name, description, kind) in specs.items():
        family = family_type(name=name, description=description, kind=kind)
        families.append(family)  # a Metric is only valid while its family lives
        metrics[key] = family.Metric(labels={"model": model})
    return families, metrics


class TritonPythonModel:
    """Parses requests in `execute`, generates in the scheduler thread, streams the text back (a token at a time,
    several under load)."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        from llm_engine import Decoder, ModelInfo
        from llm_logprobs import TokenNames
        from llm_scheduler import Limits, Scheduler
        from llm_text import PromptBuilder

        self.decode_mode = _decode_mode(config)
        info = ModelInfo.load(version_dir / param(config, "generation_file", "generation.json"))
        generation = json.loads((version_dir / "generation.json").read_text(encoding="utf-8"))
        self.defaults = info.defaults
        self.prompts = PromptBuilder(
            version_dir / param(config, "tokenizer_file", "tokenizer.json"),
            version_dir / param(config, "chat_template_file", "chat_template.jinja"),
            generation.get("bos_token", ""),
            generation.get("eos_token", ""),
        )
        self.token_names = TokenNames(self.prompts.tokenizer)
        single_row = param(config, "single_row_onnx_file", "")
        decode_graph = param(config, "decode_onnx_file", "")  # --decode int8: every decode step runs it
        if (self.decode_mode.mode == "int8") != bool(decode_graph):
            raise ValueError("parameter decode int8 goes with decode_onnx_file (and only it): re-export the model")
        decoder = Decoder(
            version_dir / param(config, "onnx_file", "model.onnx"),
            info,
            intra_op_threads=int(param(config, "intra_op_num_threads", "0")),
            inter_op_threads=int(param(config, "inter_op_num_threads", "1")),
            single_row_path=version_dir / single_row if single_row else None,
            decode_path=version_dir / decode_graph if decode_graph else None,
            allow_spinning=param(config, "allow_spinning", "0") == "1",
            place=_place(param(config, "execution_provider", "cpu"), args),
        )
        self.limits = Limits(
            max_batch_size=int(param(config, "max_batch_rows", "8")),
            max_kv_tokens=int(param(config, "max_kv_tokens", "16384")),
            max_context=int(param(config, "max_context", str(info.defaults.get("max_context", 2048)))),
            prefix_cache_tokens=int(param(config, "prefix_cache_tokens", "4096")),
            prefill_chunk=int(param(config, "prefill_chunk_tokens", "256")),
            max_stream_interval=int(param(config, "max_stream_interval", "4")),
        )
        if self.limits.max_stream_interval < 1:
            raise ValueError("parameter max_stream_interval must be >= 1")
        _, warm = decoder.prefill(self.prompts.encode("Hello"))  # first ORT runs allocate; do it before traffic
        decoder.decode([0], warm)
        self._metric_families, self.metrics = _metrics(args["model_name"])
        self.counts = PassCounts(self.metrics)
        self.scheduler = Scheduler(decoder, self.limits, info.eos_token_ids, observer=self._observe).start()

    def _observe(self, rows: int, decode: bool) -> None:
        if self.metrics:
            self.counts.add(rows, decode)

    def _in_flight_changed(self) -> None:
        """Requests were accepted or ended: the in-flight gauge follows."""
        if self.metrics:
            self.metrics["in_flight"].set(self.scheduler.in_flight())

    def _sequence(self, request, sink: ResponseSink):
        from llm_logprobs import Logprobs
        from llm_requests import Sequence
        from llm_text import RequestError, TextStream

        messages, prompt = _scalar(request, "messages"), _scalar(request, "prompt")
        if messages is not None:
            try:
                parsed = json.loads(messages)
            except json.JSONDecodeError as exc:
                raise RequestError(f"'messages' is not valid JSON: {exc}") from None
            if not isinstance(parsed, list) or not parsed:
                raise RequestError("'messages' must be a non-empty JSON array")
            ids = self.prompts.chat_ids(parsed)
        elif prompt is not None:
            ids = self.prompts.encode(prompt)
        else:
            raise RequestError("one of the inputs 'messages' or 'prompt' is required")
        if not ids:
            raise RequestError("the prompt is empty")
        params = self._params(request, len(ids))
        rng = np.random.default_rng(None if params.seed is None else params.seed & 0xFFFFFFFFFFFFFFFF)  # any int64
        logprobs = Logprobs(self.token_names, params.logprobs) if params.logprobs is not None else None
        return Sequence(ids, params, sink, TextStream(self.prompts.tokenizer, params.stop), rng, logprobs=logprobs)

    def _params(self, request, prompt_tokens: int):
        from llm_text import RequestError, SamplingParams

        stop = _scalar(request, "stop")
        try:
            stops = json.loads(stop) if stop else []
        except json.JSONDecodeError as exc:
            raise RequestError(f"'stop' is not valid JSON: {exc}") from None
        if isinstance(stops, str):
            stops = [stops]
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise RequestError("'stop' must be a JSON array of strings")
        room = self.limits.max_context - prompt_tokens
        if room < 1:
            raise RequestError(f"the prompt ({prompt_tokens} tokens) fills the context of {self.limits.max_context}")
        max_tokens = _scalar(request, "max_tokens")
        if max_tokens is not None and int(max_tokens) < 1:
            raise RequestError("max_tokens must be >= 1")
        temperature, top_p, seed, min_tokens, interval, presence, frequency, logprobs = (
            _scalar(request, n) for n in ("temperature", "top_p", "seed", "min_tokens", "max_stream_interval",
                                          "presence_penalty", "frequency_penalty", "logprobs"))
        return SamplingParams(  # max_tokens beyond the context is capped: the answer ends with "length"
            max_tokens=min(int(max_tokens) if max_tokens is not None else int(self.defaults["max_tokens"]), room),
            min_tokens=int(min_tokens) if min_tokens is not None else 0,
            temperature=float(temperature) if temperature is not None else float(self.defaults["temperature"]),
            top_p=float(top_p) if top_p is not None else float(self.defaults["top_p"]),
            seed=int(seed) if seed is not None else None,
            stop=tuple(stops),
            max_stream_interval=int(interval) if interval is not None else None,
            presence_penalty=float(presence) if presence is not None else 0.0,
            frequency_penalty=float(frequency) if frequency is not None else 0.0,
            logprobs=int(logprobs) if logprobs is not None else None,
        ).validate()

    def execute(self, requests: list) -> None:
        from llm_scheduler import OverloadedError

        for request in requests:
            sender = request.get_response_sender()
            try:
                sink = ResponseSink(sender, self.metrics, self._in_flight_changed, self.counts)
                self.scheduler.submit(self._sequence(request, sink))
            except OverloadedError as exc:
                sender.send(error_response(f"overloaded: {exc}", "UNAVAILABLE"), flags=FINAL)
            except (ValueError, UnicodeDecodeError) as exc:
                sender.send(error_response(f"invalid request: {exc}", "INVALID_ARG"), flags=FINAL)
            except Exception as exc:  # e.g. a chat template error: this request fails, never hangs
                sender.send(error_response(f"request failed: {exc}", "INTERNAL"), flags=FINAL)
        self._in_flight_changed()
        return None

    def finalize(self) -> None:
        self.scheduler.stop()
        self.metrics = {}
        self._metric_families = []
