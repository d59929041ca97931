"""Routes file validation: the example parses, errors name the place and the reason, secrets come from env."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.routing.config import OpenAIDeployment, RoutesConfigError, load_routes, parse_routes

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "routes.example.yaml"
SECRETS = {"OPENAI_API_KEY": "sk-openai", "AZURE_OPENAI_API_KEY": "sk-azure"}


def doc(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "deployments": {"a": {"kind": "openai", "base_url": "http://x/v1", "model": "m", "api_key_env": "KEY_A"},
                        "b": {"kind": "triton", "model": "llm"}},
        "routes": {"chat": {"deployments": ["b", "a"]}},
    }
    base.update(overrides)
    return base


def test_example_file_loads() -> None:
    config = load_routes(EXAMPLE, secrets=SECRETS.get)
    chat = config.routes["chat"]
    assert chat.tiers == [["local-llama"], ["openai-mini", "azure-mini"]]
    openai_mini = config.deployments["openai-mini"]
    assert isinstance(openai_mini, OpenAIDeployment)
    assert openai_mini.api_key is not None and openai_mini.api_key.get_secret_value() == "sk-openai"
    assert "sk-openai" not in config.model_dump_json()  # the key never serializes
    cloud_route = config.routes["chat-cloud"].policy
    assert cloud_route.total_timeout_s == 60 and cloud_route.breaker.failure_threshold == 3
    assert cloud_route.breaker.cooldown_s == 30  # merged field by field with the file's policy
    assert config.routes["chat"].policy.total_timeout_s == 30


def test_missing_secret_is_named() -> None:
    with pytest.raises(RoutesConfigError, match=r"deployments\.openai-mini\.api_key_env: environment variable "
                                                r"OPENAI_API_KEY is unset"):
        load_routes(EXAMPLE, secrets={"AZURE_OPENAI_API_KEY": "x"}.get)


@pytest.mark.parametrize(("document", "message"), [
    (doc(routes={"chat": {"deployments": ["a", "nope"]}}), r"route 'chat': unknown deployment\(s\) nope"),
    (doc(routes={"chat": {"deployments": ["a", "a"]}}), "listed twice"),
    (doc(routes={"chat": {"deployments": []}}), r"routes\.chat\.deployments"),
    (doc(deployments={"a": {"kind": "grpc", "model": "m"}}), r"deployments\.a"),
    (doc(deployments={"a": {"kind": "openai", "model": "m"}}), r"deployments\.a\.openai\.base_url: Field required"),
    (doc(deployments={"a": {"kind": "openai", "base_url": "ftp://x", "model": "m"}}), "base_url"),
    (doc(deployments={"a": {"kind": "openai", "base_url": "http://x", "model": "m", "api_key": "sk-inline"}}),
     "api_key"),
    (doc(policy={"total_timeout_s": -1}), r"routes\.chat\.policy\.total_timeout_s"),
    (doc(routes={"chat": {"deployments": ["a"], "redact_pii": "maybe"}}), "redact_pii"),
])
def test_invalid_documents(document: dict[str, Any], message: str) -> None:
    with pytest.raises(RoutesConfigError, match=message):
        parse_routes(document, secrets={"KEY_A": "k"}.get)


def test_unreadable_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(RoutesConfigError, match="cannot be read"):
        load_routes(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [unclosed\n")
    with pytest.raises(RoutesConfigError, match="not valid YAML"):
        load_routes(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(RoutesConfigError, match="must be a mapping"):
        load_routes(scalar)


def test_gateway_refuses_to_start_on_invalid_routes(tmp_path: Path) -> None:
    """The lifespan loads the file: an invalid one fails startup with the reason, not a crash later."""
    from gateway.chat.factory import build_chat
    from gateway.config import GatewaySettings
    from gateway.metrics import GatewayMetrics

    path = tmp_path / "routes.yaml"
    path.write_text("routes: {chat: {deployments: [ghost]}}\n")
    settings = GatewaySettings(auth_disabled=True, routes_file=path)
    with pytest.raises(RoutesConfigError, match="unknown deployment"):
        build_chat(settings, GatewayMetrics(), redis=None, triton=None)  # type: ignore[arg-type]
