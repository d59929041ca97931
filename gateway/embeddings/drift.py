"""Input drift of embedding models: what the gateway serves, compared with the reference recorded at export.

Per embedding model (the public model name, all versions together), over every item served — cache hits
included, since drift concerns the traffic users send, not what happened to miss the cache:

- a running mean of the served embedding vectors: an exponentially weighted sum with a half-life counted in
  items (`half_life_items`, default 2,000): after H more items, an item weighs half as much. Within one request
  every item weighs the same. The sum S and the weight W (Σ of the item weights, at most ≈ 1.44 H) are kept; no
  prior, so the first request alone defines the mean. With no traffic the mean stays where it was;
- its cosine with the reference centroid, `S · c / |S|` (c has unit norm) → `gateway_embedding_drift_cosine`,
  labelled with the reference set (`parity_sentences`, the export's default, or `file:<name>`, a traffic sample:
  only the latter makes the absolute value meaningful for your traffic — docs/deploy.md);
- the token count of each item (Triton's `token_count`, stored with cached vectors) → the histogram
  `gateway_embedding_input_tokens`, and the running mean length (same weights) →
  `gateway_embedding_input_tokens_mean`, next to the reference's `gateway_embedding_reference_tokens_mean`;
- W → `gateway_embedding_drift_weight`, so alerts can ignore a mean backed by a handful of items.

The reference comes from the model's config parameters (`export/encoder/drift_reference.py` writes them; the backend
reads them with the model config into `ModelInfo.extra`). Models without one get the token metrics only.

Cost: `observe` runs on the request path, so it only keeps the request's vectors and updates a few scalars and
the token buckets; the vectors are folded into S every `FOLD_ITEMS` items (each request's rows weighted by the
decay of the items after it: the same sum as folding each request; no BLAS, see `_fold_rows`) and before anything
reads S: numpy calls per request were a visible share of a cache hit's CPU. Cosines and the exposition are
computed only when Prometheus scrapes (`collect`).

One process's state: each gateway replica tracks the traffic it serves (alerts aggregate by model).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

log = logging.getLogger("gateway.embeddings.drift")

# config.pbtxt parameter keys (the contract with export/encoder/drift_reference.py)
CENTROID_PARAM = "drift_reference_centroid"
TOKENS_MEAN_PARAM = "drift_reference_tokens_mean"
SET_PARAM = "drift_reference_set"  # `parity_sentences` (the export's default) or `file:<name>` (a traffic sample)

DEFAULT_HALF_LIFE_ITEMS = 2000
TOKEN_BUCKETS = (2, 4, 8, 16, 32, 64, 128, 256, 512)  # MiniLM truncates at 256; 512 covers larger windows
MAX_MODELS = 64  # bounded label cardinality: model names are validated, but a repository may hold many
_BOUNDS = np.array(TOKEN_BUCKETS, dtype=np.int64)
_PYTHON_LOOP_MAX = 32
FOLD_ITEMS = 64  # pending items that trigger a fold of the vectors into the running sum


class HasTokens(Protocol):
    """An item with its real token count (a `gateway.cache.keys.CachedItem`)."""

    tokens: int


def decode_centroid(text: str) -> np.ndarray | None:
    """The unit-norm centroid from its base64 float32 form; None when it is malformed or zero."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if not raw or len(raw) % 4:
        return None
    vector = np.frombuffer(raw, dtype="<f4").astype(np.float64)
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0.0:
        return None
    return vector / norm


class _ModelDrift:
    """Running state of one model (see the module docstring)."""

    __slots__ = (
        "buckets",
        "centroid",
        "count",
        "counts",
        "decay",
        "pending_items",
        "raw_reference",
        "reference_set",
        "reference_tokens",
        "rows",
        "token_sum",
        "token_total",
        "total",
        "warned",
        "weight",
    )

    def __init__(self, decay: float) -> None:
        self.decay = decay  # per item
        self.rows = np.empty((FOLD_ITEMS, 0), dtype=np.float32)  # rows of requests not yet folded into `total`
        self.counts: list[int] = []  # their requests' item counts
        self.pending_items = 0
        self.raw_reference: str | None = None
        self.centroid: np.ndarray | None = None
        self.reference_tokens: float | None = None
        self.reference_set = ""
        self.total: np.ndarray | None = None  # S: decayed sum of vectors (float64)
        self.weight = 0.0  # W: decayed number of items
        self.token_total = 0.0  # decayed sum of token counts
        self.buckets = [0] * (len(TOKEN_BUCKETS) + 1)  # items per bucket, +Inf last (not cumulative)
        self.count = 0
        self.token_sum = 0
        self.warned = False

    def set_reference(self, extra: Mapping[str, str]) -> None:
        raw = extra.get(CENTROID_PARAM)
        if raw is self.raw_reference or raw == self.raw_reference:
            return
        self.raw_reference = raw
        self.reference_set = extra.get(SET_PARAM, "unknown")
        self.centroid = decode_centroid(raw) if raw is not None else None
        if raw is not None and self.centroid is None:
            log.warning("ignoring a malformed %s parameter in a model config", CENTROID_PARAM)
        try:
            self.reference_tokens = float(extra[TOKENS_MEAN_PARAM])
        except (KeyError, ValueError):
            self.reference_tokens = None

    def add(self, vectors: np.ndarray, n: int) -> None:
        """Queue one request's vectors (a new dimension restarts the mean, as a new model would)."""
        dim = vectors.shape[1]
        if self.rows.shape[1] != dim:
            self.fold()
            self.rows = np.empty((FOLD_ITEMS, dim), dtype=np.float32)
            self.total, self.weight, self.token_total = None, 0.0, 0.0
        if self.pending_items + n > FOLD_ITEMS:
            self.fold()
        if n > FOLD_ITEMS:  # a large request folds on its own
            self._fold_rows(vectors, np.full(1, float(n)))
            return
        self.rows[self.pending_items : self.pending_items + n] = vectors
        self.counts.append(n)
        self.pending_items += n

    def fold(self) -> None:
        """Fold the queued rows into S: each request's rows weighted by the decay of the items after it."""
        if self.counts:
            self._fold_rows(self.rows[: self.pending_items], np.array(self.counts, dtype=np.float64))
            self.counts.clear()
            self.pending_items = 0

    def _fold_rows(self, rows: np.ndarray, counts: np.ndarray) -> None:
        if len(counts) == 1:  # one request: its items weigh the same (float32 column sum, pairwise: exact enough)
            added = rows.sum(axis=0).astype(np.float64)
        else:
            after = counts[::-1].cumsum()[::-1] - counts  # items observed after each request
            weights = np.repeat(self.decay ** after, counts.astype(np.int64)).astype(np.float32)
            # an elementwise product and a column sum, not `weights @ rows`: a matrix product goes to OpenBLAS,
            # whose threads spin after each call and took the event loop's CPU (hit-path CPU per request doubled)
            added = (rows * weights[:, None]).sum(axis=0, dtype=np.float64)
        decay = self.decay ** float(counts.sum())
        self.total = added if self.total is None else self.total * decay + added

    def cosine(self) -> float | None:
        self.fold()
        if self.centroid is None or self.total is None or self.weight <= 0.0:
            return None
        if self.total.shape != self.centroid.shape:
            if not self.warned:
                log.warning("drift reference has %d dimensions, served embeddings %d: no cosine",
                            self.centroid.shape[0], self.total.shape[0])
                self.warned = True
            return None
        norm = float(np.linalg.norm(self.total))
        return float(self.total @ self.centroid) / norm if norm > 0.0 else None


class DriftMonitor:
    """Tracks served embeddings and token counts per model; a Prometheus collector of the drift metrics."""

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 half_life_items: float = DEFAULT_HALF_LIFE_ITEMS) -> None:
        if half_life_items <= 0:
            raise ValueError("half_life_items must be > 0")
        self.half_life_items = half_life_items
        self._decay = 0.5 ** (1.0 / half_life_items)
        self._models: dict[str, _ModelDrift] = {}
        if registry is not None:
            registry.register(self)

    def observe(self, model: str, extra: Mapping[str, str], vectors: np.ndarray, items: Sequence[HasTokens]) -> None:
        """Fold one request's served items in: `vectors` [n, d] in item order, `items` with their token counts.

        `extra` is the model's `ModelInfo.extra` (its config parameters), which carries the reference.
        """
        n = len(items)
        if n == 0 or vectors.ndim != 2 or vectors.shape[0] != n:
            return
        state = self._models.get(model)
        if state is None:
            if len(self._models) >= MAX_MODELS:
                return
            state = self._models[model] = _ModelDrift(self._decay)
        state.set_reference(extra)
        decay = self._decay ** n
        buckets = state.buckets
        if n <= _PYTHON_LOOP_MAX:  # a Python loop beats numpy's per-call overhead on small requests
            token_sum = 0
            for item in items:
                token_sum += item.tokens
                buckets[bisect.bisect_left(TOKEN_BUCKETS, item.tokens)] += 1
        else:
            counts = np.fromiter((item.tokens for item in items), dtype=np.int64, count=n)
            for index, added in enumerate(np.bincount(np.searchsorted(_BOUNDS, counts), minlength=len(buckets))):
                buckets[index] += int(added)
            token_sum = int(counts.sum())
        state.add(vectors, n)
        state.weight = state.weight * decay + n
        state.token_total = state.token_total * decay + token_sum
        state.count += n
        state.token_sum += token_sum

    def snapshot(self, model: str) -> dict[str, float | None]:
        """The exported values of one model (cosine, weight, mean tokens, reference mean), for tests and admin."""
        state = self._models.get(model)
        if state is None:
            return {"cosine": None, "weight": 0.0, "tokens_mean": None, "reference_tokens_mean": None}
        return {
            "cosine": state.cosine(),
            "weight": state.weight,
            "tokens_mean": state.token_total / state.weight if state.weight > 0 else None,
            "reference_tokens_mean": state.reference_tokens,
        }

    def describe(self) -> Iterable[Metric]:
        """The metric families (no samples), so registering needs no collect."""
        return self._families()

    def collect(self) -> Iterator[Metric]:
        """The drift metrics of every tracked model (computed now: scrapes pay for the cosines)."""
        cosine, weight, tokens_mean, reference, histogram = self._families()
        for model, state in sorted(self._models.items()):
            value = state.cosine()
            if value is not None:
                cosine.add_metric([model, state.reference_set], value)
            weight.add_metric([model], state.weight)
            if state.weight > 0:
                tokens_mean.add_metric([model], state.token_total / state.weight)
            if state.reference_tokens is not None:
                reference.add_metric([model], state.reference_tokens)
            cumulative = list(itertools.accumulate(state.buckets))
            bounds = [*(str(float(b)) for b in TOKEN_BUCKETS), "+Inf"]
            histogram.add_metric([model], list(zip(bounds, cumulative, strict=True)), float(state.token_sum))
        yield from (cosine, weight, tokens_mean, reference, histogram)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily,
                             HistogramMetricFamily]:
        labels = ["model"]
        return (
            GaugeMetricFamily("gateway_embedding_drift_cosine", "Cosine between the running mean of served "
                              "embeddings and the reference centroid recorded at export (1 = same direction); "
                              "`reference` names the reference set.", labels=["model", "reference"]),
            GaugeMetricFamily("gateway_embedding_drift_weight", "Effective number of items behind the running "
                              "mean (exponential weights; at most about 1.44 x the half-life).", labels=labels),
            GaugeMetricFamily("gateway_embedding_input_tokens_mean", "Running mean token count per served item "
                              "(same weights as the embedding mean).", labels=labels),
            GaugeMetricFamily("gateway_embedding_reference_tokens_mean", "Mean token count of the export's "
                              "reference set.", labels=labels),
            HistogramMetricFamily("gateway_embedding_input_tokens", "Token count per served embedding item "
                                  "(cache hits included).", labels=labels),
        )
