"""The `rerank` section of docs/BENCHMARKS.md from one `bench rerank` run (`loadtest.bench.rerank` measures)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from loadtest.bench.closed_loop import LoopResult
from loadtest.bench.report import machine_description, markdown_table

GATEWAY, DIRECT = "gateway POST /v1/rerank", "direct Triton (KServe v2 JSON, one batch)"
PATHS = (DIRECT, GATEWAY)


@dataclass
class Results:
    """Everything one run recorded: (path, documents per request, concurrency) → one wrk run per round."""

    runs: dict[tuple[str, int, int], list[LoopResult]]
    docs: tuple[int, ...]
    concurrency: tuple[int, ...]
    duration_s: int
    tokens_per_pair: float  # what the model read per (query, document) pair, as the gateway's usage counts it
    max_score_diff: float  # largest |gateway score - direct score| over the pairs of the check request
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at the start and the end (other users)
    serving: str = "its default serving options"  # what the export's config.pbtxt says (instances, batching)

    def settings(self) -> list[tuple[int, int]]:
        """(documents per request, concurrency), in the order they are reported."""
        return [(n, c) for c in self.concurrency for n in self.docs]

    def pairs_per_s(self, path: str, docs: int, c: int) -> list[float]:
        """Pairs/s of each round: answered requests/s (`LoopResult.rps`) × documents per request."""
        return [docs * r.rps for r in self.runs.get((path, docs, c), [])]

    def ratios(self, docs: int, c: int) -> list[float]:
        """Gateway / direct pairs/s of each round (both paths ran back to back in that round)."""
        pairs = zip(self.pairs_per_s(GATEWAY, docs, c), self.pairs_per_s(DIRECT, docs, c), strict=False)
        return [g / d for g, d in pairs if d > 0]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _row(res: Results, path: str, docs: int, c: int) -> list[str]:
    runs = res.runs.get((path, docs, c), [])
    pct = {name: _median([getattr(r, name) for r in runs if r.requests]) for name in ("p50_ms", "p99_ms")}
    return [path, str(docs), str(c), f"{_median(res.pairs_per_s(path, docs, c)):.0f}",
            f"{pct['p50_ms']:.0f}", f"{pct['p99_ms']:.0f}", str(sum(r.requests for r in runs)),
            str(sum(r.errors for r in runs))]


def _ratio_row(res: Results, docs: int, c: int) -> list[str]:
    ratios = res.ratios(docs, c)
    rounds = ", ".join(f"{r:.2f}" for r in ratios) or "—"
    return [str(docs), str(c), f"{_median(ratios):.2f}×" if ratios else "—", rounds]


def _rounds(n: int) -> str:
    return f"{n} round{'s' if n != 1 else ''}"


def render(res: Results, command: str) -> str:
    """The section: command, machine and load, the table, the ratio per setting."""
    rounds = max((len(v) for v in res.runs.values()), default=0)
    rows = [_row(res, path, n, c) for n, c in res.settings() for path in PATHS]
    return "\n\n".join([
        "## Rerank: gateway `/v1/rerank` vs direct Triton, pairs/s",
        f"Command: `{command}`  \nMachine: {machine_description()}; 1-minute load average {res.load[0]:.1f} at the "
        f"start, {res.load[1]:.1f} at the end (the machine may be shared: compare the ratios, not the numbers "
        "across sections)",
        "Model: a cross-encoder with MiniLM's architecture and size (`BertForSequenceClassification`, one label, "
        "hidden 384, 6 layers, 12 heads, intermediate 1536, all-MiniLM-L6-v2's vocabulary and tokenizer), "
        "randomly initialised with a fixed seed (`loadtest/bench/cross_encoder.py`) and exported with "
        f"`tritonstack export hf --task rerank` (CPU target, default flags: {res.serving}): the scores are "
        "meaningless, the cost per pair is that of a real MiniLM cross-encoder such as ms-marco-MiniLM-L-6-v2. "
        "Each document is a passage of about 35 words, made unique by a prefix; a (query, document) pair is "
        f"{res.tokens_per_pair:.0f} tokens long (the gateway's usage), and the two paths scored the check "
        f"request's pairs alike (largest score difference {res.max_score_diff:.1e}).",
        f"Load: a closed loop of {' or '.join(map(str, res.concurrency))} clients "
        "(`loadtest/bench/closed_loop.py`, httpx, in the benchmark's "
        "process) on one Triton, one gateway process (rate limits on, too high to refuse; its Redis cache on; "
        "backend timeout raised so that a long queue is not cut) and one redis-server, all on this machine. "
        "Every request carries one query and N documents, all new (the run, the client and the request are in "
        "every text): nothing is ever a cache hit. Direct: `POST /v2/models/<model>/infer` with the request's N "
        "(query, document) pairs as one batch (`query` and `document` BYTES inputs [N, 1]); gateway: "
        "`POST /v1/rerank` with the query and the N documents (Cohere's request), which the gateway sends to "
        f"Triton over gRPC. {_rounds(rounds)} of {res.duration_s} s per run; in every round each setting runs "
        "both paths back to back, the order reversed each round; cells are medians over rounds. A client sends "
        "nothing after the run's duration but waits for the request it has started, so each run ends with the "
        "servers idle; pairs/s = N × the sum over clients of each client's answers / its busy time (first send "
        "to last answer); p50 and p99 are milliseconds per request; `requests`: answered requests over all "
        "rounds (with few of them, p99 is close to the slowest).",
        markdown_table(["path", "docs/request", "concurrency", "pairs/s", "p50 ms", "p99 ms", "requests",
                        "errors"], rows),
        "Gateway / direct pairs/s, per setting: the median of the per-round ratios, and each round's ratio.",
        markdown_table(["docs/request", "concurrency", "gateway / direct", "per round"],
                       [_ratio_row(res, n, c) for n, c in res.settings()]),
    ])
