"""`model: "smollm2"` through the gateway's /v1/chat/completions with the official `openai` SDK: local Triton first,
the (fake) cloud behind it for overflow."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
import yaml

from gateway.routing.config import load_routes
from stack.redis import RedisServer
from stack.triton import TritonServer
from stack.up import DEFAULT_ROUTES
from tests.fixtures.fake_llm import FakeUpstream, clear_chat_state, cloud
from tests.fixtures.gateway import GatewayKeys, RunningGateway, settings_for
from tests.fixtures.llm import MAX_BATCH_ROWS, GenerationStream, chat

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def llm_gateway(gateway_factory: Callable[..., RunningGateway], smollm2_triton: TritonServer,
                redis_server: RedisServer, gateway_keys: GatewayKeys, fake_llm: FakeUpstream,
                tmp_path: Path) -> RunningGateway:
    routes = {
        "policy": {"cache_ttl_s": 0},  # every request reaches a deployment
        "deployments": {"local-smollm2": {"kind": "triton", "model": "smollm2", "timeout_s": 60},
                        "cloud": cloud(fake_llm, "up-cloud")},
        "routes": {"smollm2": {"deployments": ["local-smollm2", "cloud"]}},
    }
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(routes), encoding="utf-8")
    clear_chat_state(redis_server.url)
    return gateway_factory(settings_for(smollm2_triton, redis_server, gateway_keys, routes_file=path,
                                        requests_per_minute=100_000, tokens_per_minute=100_000_000))


@pytest.fixture
def client(llm_gateway: RunningGateway, gateway_keys: GatewayKeys) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{llm_gateway.url}/v1", api_key=gateway_keys.user, max_retries=0,
                       timeout=60) as sdk:
        yield sdk


def test_default_routes_file_serves_smollm2_locally() -> None:
    config = load_routes(DEFAULT_ROUTES)
    (name,) = config.routes["smollm2"].names
    assert config.deployments[name].kind == "triton" and config.deployments[name].model == "smollm2"


def test_non_stream_answer(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="smollm2", messages=QUESTION, temperature=0,
                                                           max_tokens=16)
    completion = raw.parse()
    assert raw.headers["x-served-by"] == "local-smollm2"
    assert "Paris" in completion.choices[0].message.content and completion.choices[0].finish_reason == "stop"
    assert completion.model == "smollm2"
    assert completion.usage.prompt_tokens > 10 and 0 < completion.usage.completion_tokens <= 16


def test_stream_answer_with_usage(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="smollm2", messages=QUESTION, temperature=0,
                                                           stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-served-by"] == "local-smollm2"
    chunks = list(raw.parse())
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 5 and "Paris" in "".join(pieces)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(pieces) + 1  # + <|im_end|>


def test_max_tokens_and_stop(client: openai.OpenAI) -> None:
    cut = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=3)
    assert cut.choices[0].message.content == "The capital of" and cut.choices[0].finish_reason == "length"
    stopped = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, stop="Paris")
    assert stopped.choices[0].message.content == "The capital of France is "
    assert stopped.choices[0].finish_reason == "stop"


def test_min_tokens_reaches_the_local_model(client: openai.OpenAI) -> None:
    natural = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=24)
    assert natural.choices[0].finish_reason == "stop" and natural.usage.completion_tokens < 20
    longer = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=20,
                                            extra_body={"min_tokens": 20})
    assert longer.choices[0].finish_reason == "length" and longer.usage.completion_tokens == 20
    assert longer.choices[0].message.content.startswith(natural.choices[0].message.content)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4,
                                       extra_body={"min_tokens": 5})
    assert refused.value.param == "min_tokens" and "must not exceed" in refused.value.message


def test_penalties_reach_the_local_model(client: openai.OpenAI, smollm2_triton: TritonServer) -> None:
    days = chat("List the days of the week, twice.")
    plain = client.chat.completions.create(model="smollm2", messages=days, temperature=0, max_tokens=24)
    penalized = client.chat.completions.create(model="smollm2", messages=days, temperature=0, max_tokens=24,
                                               frequency_penalty=1.5, presence_penalty=0.5)
    stream = GenerationStream(smollm2_triton)
    try:  # the model itself, asked directly with the same penalties
        stream.send("direct", days, temperature=0.0, max_tokens=24, frequency_penalty=1.5, presence_penalty=0.5)
        direct = stream.wait()["direct"]
    finally:
        stream.close()
    assert penalized.choices[0].message.content == direct.text != plain.choices[0].message.content


def test_logprobs_of_the_local_model(client: openai.OpenAI) -> None:
    """The model's own log-probabilities, OpenAI-shaped: one entry per generated token whose bytes make up the text,
    the greedy token the likeliest of its alternatives; the stream carries the same entries."""
    asked = {"model": "smollm2", "messages": QUESTION, "temperature": 0, "max_tokens": 6, "logprobs": True,
             "top_logprobs": 3}
    answer = client.chat.completions.create(**asked)
    entries = answer.choices[0].logprobs.content
    assert answer.choices[0].finish_reason == "length" and len(entries) == answer.usage.completion_tokens == 6
    assert bytes(b for e in entries for b in e.bytes).decode() == answer.choices[0].message.content
    for entry in entries:
        alternatives = [t.logprob for t in entry.top_logprobs]
        assert entry.logprob < 0 and len(alternatives) == 3 and alternatives == sorted(alternatives, reverse=True)
        assert entry.top_logprobs[0].token == entry.token and alternatives[0] == pytest.approx(entry.logprob)
    chunks = list(client.chat.completions.create(**asked, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in entries]


def test_full_local_model_overflows_to_cloud(client: openai.OpenAI, smollm2_triton: TritonServer,
                                             fake_llm: FakeUpstream) -> None:
    busy = GenerationStream(smollm2_triton)
    try:
        for i in range(MAX_BATCH_ROWS):
            busy.send(f"b{i}", chat(f"Count from {i} to 500, one number per line."), temperature=0.0, max_tokens=400)
        busy.wait(until=lambda gens: all(g.responses for g in gens.values()))
        raw = client.chat.completions.with_raw_response.create(model="smollm2", messages=QUESTION, max_tokens=8,
                                                               extra_body={"min_tokens": 2})
        assert raw.headers["x-served-by"] == "cloud"
        (call,) = fake_llm.state.calls("up-cloud")
        assert "min_tokens" not in call.body  # vLLM's extension stays with the local model
    finally:
        busy.close()
