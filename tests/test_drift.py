"""Drift: the reference recorded at export, the gateway's running mean and token lengths, budget usage ratio.

Real components throughout: the session's exported repository and Triton, a gateway of its own (its drift state
must not carry other tests' traffic), Redis; the `DriftMonitor` and `BudgetUsage` collectors fed directly for the
arithmetic (exponential weights, buckets, period rollover) that end-to-end traffic cannot pin down exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from export.config import validate
from export.encoder import drift_reference
from export.encoder.sentences import PARITY_SENTENCES
from gateway.config import GatewaySettings, KeyBudget
from gateway.embeddings.drift import CENTROID_PARAM, SET_PARAM, TOKENS_MEAN_PARAM, DriftMonitor
from gateway.usage.budget import BudgetUsage, period_window
from stack.redis import RedisServer
from stack.triton import TritonServer
from tests.fixtures.gateway import GatewayKeys, RunningGateway, settings_for

ROOT = Path(__file__).resolve().parents[1]
DIM = 384


def _config(repository: Path, model: str = "minilm"):  # -> ModelConfig
    return validate((repository / model / "config.pbtxt").read_text())


def _param(cfg, key: str) -> str:  # cfg: ModelConfig
    return cfg.parameters[key].string_value


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) → value of a Prometheus exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# ---------------------------------------------------------------------------------------------- export


def _triton_embed(triton: TritonServer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and token counts straight from Triton over gRPC (the empty string too, which /v1 refuses)."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    vectors, counts = [], []
    try:
        for start in range(0, len(texts), 64):
            chunk = texts[start : start + 64]
            tensor = grpcclient.InferInput("text", [len(chunk), 1], "BYTES")
            tensor.set_data_from_numpy(np.array([t.encode() for t in chunk], dtype=object).reshape(-1, 1))
            result = client.infer("minilm", [tensor])
            vectors.append(result.as_numpy("embedding"))
            counts.append(result.as_numpy("token_count").reshape(-1))
    finally:
        client.close()
    return np.concatenate(vectors), np.concatenate(counts)


def test_export_records_the_centroid_of_the_models_own_embeddings(
    minilm_repository: Path, triton_server: TritonServer
) -> None:
    cfg = _config(minilm_repository)
    centroid = drift_reference.decode_vector(_param(cfg, CENTROID_PARAM))
    assert centroid.shape == (DIM,) and abs(float(np.linalg.norm(centroid)) - 1.0) < 1e-5
    assert _param(cfg, SET_PARAM) == "parity_sentences"
    assert _param(cfg, "drift_reference_items") == str(len(PARITY_SENTENCES))

    served, tokens = _triton_embed(triton_server, list(PARITY_SENTENCES))  # what Triton serves from this config
    mean = served.astype(np.float64).mean(axis=0)
    assert float(mean @ centroid) / float(np.linalg.norm(mean)) > 0.999
    assert float(_param(cfg, TOKENS_MEAN_PARAM)) == pytest.approx(float(tokens.mean()), abs=1e-3)


def test_committed_config_carries_the_reference_of_the_default_export(minilm_repository: Path) -> None:
    committed = _config(ROOT / "model_repository")
    fresh = _config(minilm_repository)
    for key in (CENTROID_PARAM, TOKENS_MEAN_PARAM, "drift_reference_tokens_p50", "drift_reference_tokens_p95",
                "drift_reference_items", SET_PARAM):
        assert _param(committed, key) == _param(fresh, key), key  # deterministic: bit-identical centroid


def test_drift_reference_file_is_validated_before_any_work(tmp_path: Path) -> None:
    from export.encoder.pipeline import MinilmRequest, validate_minilm
    from export.errors import OptionError

    short = tmp_path / "short.txt"
    short.write_text("one\n\ntwo\n", encoding="utf-8")
    with pytest.raises(OptionError, match="2 non-empty lines"):
        validate_minilm(MinilmRequest(repository=tmp_path / "repo", drift_reference=short))
    with pytest.raises(OptionError, match="cannot read"):
        validate_minilm(MinilmRequest(repository=tmp_path / "repo", drift_reference=tmp_path / "missing.txt"))
    sample = tmp_path / "traffic.txt"
    sample.write_text("\n".join(f"question {i} about the weather" for i in range(10)), encoding="utf-8")
    texts, label = drift_reference.reference_texts(sample)
    assert len(texts) == 10 and label == "file:traffic.txt"


# ---------------------------------------------------------------------------------------------- gateway, end to end


def _digit_strings(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("0123456789") for _ in range(rng.randint(20, 60))) for _ in range(count)]


def _drift(gateway: RunningGateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return _samples(httpx.get(f"{gateway.url}/metrics", timeout=10).text)


def _cosine(samples: dict) -> float:
    (value,) = [v for (name, labels), v in samples.items()
                if name == "gateway_embedding_drift_cosine" and ("model", "minilm") in labels]
    return value


def test_drift_cosine_near_one_in_distribution_and_falls_for_other_inputs(
    triton_server: TritonServer, redis_server: RedisServer, gateway_keys: GatewayKeys,
    gateway_factory: Callable[[GatewaySettings], RunningGateway],
) -> None:
    gw = gateway_factory(settings_for(triton_server, redis_server, gateway_keys, requests_per_minute=100_000,
                                      tokens_per_minute=100_000_000))
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gateway_keys.user, max_retries=0)

    # in distribution: the reference set itself, shuffled, over several requests (the first one computes, the
    # repeats are cache hits, which count: drift is about what is served)
    texts = [t for t in PARITY_SENTENCES if t]  # /v1/embeddings refuses the empty string, as OpenAI does
    random.Random(1).shuffle(texts)
    for _ in range(3):
        for start in range(0, len(texts), 25):
            client.embeddings.create(model="minilm", input=texts[start : start + 25])
    before = _drift(gw)
    cosine_in = _cosine(before)
    labels = (("model", "minilm"),)
    assert cosine_in > 0.9
    assert ("gateway_embedding_drift_cosine", (("model", "minilm"), ("reference", "parity_sentences"))) in before
    assert before[("gateway_embedding_input_tokens_count", labels)] == 3 * len(texts)
    reference_tokens = before[("gateway_embedding_reference_tokens_mean", labels)]
    # the same set three times: the running (weighted) mean is the reference mean up to the weights' spread
    assert before[("gateway_embedding_input_tokens_mean", labels)] == pytest.approx(reference_tokens, rel=0.05)

    # out of distribution: 64 strings of digits, 4,096 items served (half-life 2,000 items → ~76 % of the weight)
    digits = _digit_strings(64, seed=2)
    for _ in range(64):
        client.embeddings.create(model="minilm", input=digits)
    after = _drift(gw)
    cosine_out = _cosine(after)
    assert cosine_out < cosine_in - 0.2, (cosine_in, cosine_out)
    assert after[("gateway_embedding_input_tokens_count", labels)] == 3 * len(texts) + 64 * 64
    weight = after[("gateway_embedding_drift_weight", labels)]
    assert 2000 < weight < 1.443 * 2000


# ---------------------------------------------------------------------------------------------- the arithmetic


@dataclass(frozen=True)
class Item:
    tokens: int


def _unit(index: int) -> np.ndarray:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[index] = 1.0
    return vector


def _reference(vector: np.ndarray, label: str = "file:traffic.txt") -> dict[str, str]:
    return {CENTROID_PARAM: drift_reference.encode_vector(vector), TOKENS_MEAN_PARAM: "10.0", SET_PARAM: label}


def test_running_mean_uses_exponential_weights_with_the_configured_half_life() -> None:
    monitor = DriftMonitor(half_life_items=100)
    extra = _reference(_unit(0))
    monitor.observe("m", extra, np.tile(_unit(0), (50, 1)), [Item(8)] * 50)
    assert monitor.snapshot("m")["cosine"] == pytest.approx(1.0)
    # 100 items later (one half-life), the first 50 weigh half: S = 25 e0 + 100 e1
    monitor.observe("m", extra, np.tile(_unit(1), (100, 1)), [Item(40)] * 100)
    snap = monitor.snapshot("m")
    assert snap["cosine"] == pytest.approx(25 / np.hypot(25, 100), rel=1e-6)
    assert snap["weight"] == pytest.approx(125.0)
    assert snap["tokens_mean"] == pytest.approx((25 * 8 + 100 * 40) / 125)
    assert snap["reference_tokens_mean"] == 10.0
    # one item at a time decays the same way as a batch
    single = DriftMonitor(half_life_items=100)
    for _ in range(150):
        single.observe("m", extra, _unit(2)[None, :], [Item(3)])
    assert single.snapshot("m")["weight"] == pytest.approx(sum(0.5 ** (k / 100) for k in range(150)), rel=1e-9)


def test_deferred_folding_equals_folding_every_request() -> None:
    """`observe` queues vectors and folds them every 64 items or when read: the sum must be the per-request one."""
    rng = np.random.default_rng(7)
    decay = 0.5 ** (1 / 50)
    monitor, expected = DriftMonitor(half_life_items=50), np.zeros(384)
    centroid = rng.normal(size=384).astype(np.float32)
    for n in rng.integers(1, 30, size=40):  # 40 requests of 1..29 items: folds land mid-stream and at the end
        vectors = rng.normal(size=(int(n), 384)).astype(np.float32)
        monitor.observe("m", _reference(centroid), vectors, [Item(4)] * int(n))
        expected = expected * decay ** int(n) + vectors.sum(axis=0, dtype=np.float64)
    unit = centroid / np.linalg.norm(centroid)
    assert monitor.snapshot("m")["cosine"] == pytest.approx(float(expected @ unit) / np.linalg.norm(expected), rel=1e-5)
    # a model whose vectors change size (a new export) starts a new mean
    monitor.observe("m", _reference(centroid), np.ones((2, 8), dtype=np.float32), [Item(4)] * 2)
    assert monitor.snapshot("m")["weight"] == 2.0 and monitor.snapshot("m")["cosine"] is None


def test_exposition_histogram_and_labels() -> None:
    registry = CollectorRegistry()
    monitor = DriftMonitor(registry, half_life_items=1000)
    monitor.observe("a", _reference(_unit(0)), np.tile(_unit(0), (3, 1)), [Item(1), Item(16), Item(300)])
    monitor.observe("a", _reference(_unit(0)), _unit(0)[None, :], [Item(600)])
    monitor.observe("b", {}, np.tile(_unit(1), (40, 1)), [Item(5)] * 40)  # no reference: token metrics only
    samples = _samples(generate_latest(registry).decode())
    assert samples[("gateway_embedding_drift_cosine", (("model", "a"), ("reference", "file:traffic.txt")))] == 1.0
    assert not [k for k in samples if k[0] == "gateway_embedding_drift_cosine" and ("model", "b") in k[1]]
    bucket = {le: samples[("gateway_embedding_input_tokens_bucket", (("le", le), ("model", "a")))]
              for le in ("2.0", "16.0", "256.0", "512.0", "+Inf")}
    assert bucket == {"2.0": 1, "16.0": 2, "256.0": 2, "512.0": 3, "+Inf": 4}
    assert samples[("gateway_embedding_input_tokens_sum", (("model", "a"),))] == 917
    assert samples[("gateway_embedding_input_tokens_count", (("model", "b"),))] == 40
    assert ("gateway_embedding_reference_tokens_mean", (("model", "b"),)) not in samples


def test_malformed_or_mismatched_reference_gives_no_cosine() -> None:
    monitor = DriftMonitor()
    monitor.observe("bad", {CENTROID_PARAM: "not base64!"}, _unit(0)[None, :], [Item(4)])
    assert monitor.snapshot("bad")["cosine"] is None
    monitor.observe("short", _reference(np.ones(8, dtype=np.float32)), _unit(0)[None, :], [Item(4)])
    assert monitor.snapshot("short")["cosine"] is None and monitor.snapshot("short")["weight"] == 1.0
    # a new reference (re-export) is picked up from the next request's metadata
    monitor.observe("short", _reference(_unit(0)), _unit(0)[None, :], [Item(4)])
    assert monitor.snapshot("short")["cosine"] == pytest.approx(1.0)


def test_budget_used_ratio_per_configured_key_resets_with_the_period() -> None:
    now = [1_780_000_000.0]
    registry = CollectorRegistry()
    budgets = {"alice": KeyBudget(usd=2.0, tokens=1000, period="day"), "bob": KeyBudget(tokens=100, period="month")}
    usage = BudgetUsage(budgets, clock=lambda: now[0], registry=registry)
    day, ends = period_window("day", now[0])
    usage.record("alice", day, 1_000_000, 900)  # $1 of $2 (50 %), 900 of 1,000 tokens (90 %): the larger
    usage.record("mallory", day, 10, 10)  # not a configured budget: never exported
    samples = _samples(generate_latest(registry).decode())
    assert samples == {("gateway_budget_used_ratio", (("key", "alice"), ("period", "day"))): 0.9}
    now[0] = ends + 1  # next UTC day: nothing spent yet
    assert usage.ratio("alice") == 0.0


async def test_budget_ledger_exports_what_redis_answers(redis_server: RedisServer) -> None:
    import secrets

    import redis.asyncio as aioredis

    from gateway.auth import Principal
    from gateway.cache.guard import RedisGuard
    from gateway.config import ApiKeyConfig, hash_api_key
    from gateway.errors import RateLimitedError
    from gateway.usage.budget import BudgetLedger

    name = f"drift-budget-{secrets.token_hex(4)}"  # a fresh key: the session's Redis is shared
    settings = GatewaySettings(api_keys=[ApiKeyConfig(name=name, sha256=hash_api_key(secrets.token_hex(16)),
                                                      budget=KeyBudget(usd=1.0, tokens=1000))])
    registry = CollectorRegistry()
    client = aioredis.Redis.from_url(redis_server.url)
    ledger = BudgetLedger(client, RedisGuard(timeout_ms=500), settings, registry=registry)
    principal = Principal(name=name, identity=f"key:{name}", scopes=frozenset())
    try:
        held = await ledger.reserve(principal, 850_000, 100)  # $0.85 of $1 reserved
        assert ledger.usage.ratio(name) == pytest.approx(0.85)
        samples = _samples(generate_latest(registry).decode())
        assert samples[("gateway_budget_used_ratio", (("key", name), ("period", "day")))] == pytest.approx(0.85)
        await ledger.settle(held, 300_000, 900)  # really $0.30 and 900 tokens: tokens are now the larger share
        assert ledger.usage.ratio(name) == pytest.approx(0.9)
        with pytest.raises(RateLimitedError):
            await ledger.reserve(principal, 100_000, 200)  # refused: the ratio stays what Redis holds
        assert ledger.usage.ratio(name) == pytest.approx(0.9)
    finally:
        await client.aclose()
