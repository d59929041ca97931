"""The tracing rows of `bench gateway`'s section: what OpenTelemetry costs the gateway per cache-cold request, at 1 %
and 100 % sampling against tracing off, and with the collector down (`loadtest.bench.gateway` measures them)."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from typing import TYPE_CHECKING

from loadtest.bench.report import markdown_table
from loadtest.wrk import WrkResult

if TYPE_CHECKING:
    from loadtest.bench.gateway_report import Measured, Results

EMBED_OFF = "gateway /v1/embeddings"  # the rate-limited gateway, tracing off (gateway_report.EMBED)
TRACE_1, TRACE_100 = "gateway /v1/embeddings, tracing 1 %", "gateway /v1/embeddings, tracing 100 %"
TRACE_DOWN = "gateway /v1/embeddings, tracing 100 %, collector down"
TRACED_PATHS = (TRACE_1, TRACE_100, TRACE_DOWN)


def _spread(values: list[float], fmt: str) -> str:
    """Median [min, max] of per-round values."""
    return f"{format(statistics.median(values), fmt)} [{format(min(values), fmt)}, {format(max(values), fmt)}]"


def _per_round(a: Measured, b: Measured, fn: Callable[[WrkResult, WrkResult], float]) -> list[float]:
    return [fn(x, y) for x, y in zip(a.runs, b.runs, strict=True)]


def _rows(res: Results) -> list[list[str]]:
    rows = []
    for c, measured in ((1, res.c1), (32, res.c32)):
        off = measured[EMBED_OFF]
        for label in (EMBED_OFF, *TRACED_PATHS):
            m = measured[label]
            cpu = (m.cpu_us or 0.0) / 1e3
            ratio = f"{m.cpu_us / off.cpu_us:.2f}×" if m.cpu_us and off.cpu_us else "—"
            name = "off" if label == EMBED_OFF else label.removeprefix(EMBED_OFF + ", ")
            rows.append([name, str(c), f"{m.rps:.0f}", f"{m.pct('p50_ms'):.2f}", f"{m.pct('p99_ms'):.2f}",
                         f"{cpu:.2f}", ratio])
    return rows


def _paired_rows(res: Results) -> list[list[str]]:
    p50_diff = lambda x, y: x.p50_ms - y.p50_ms  # noqa: E731
    rps_ratio = lambda x, y: x.rps / y.rps  # noqa: E731
    rows = []
    for label, base in ((TRACE_1, EMBED_OFF), (TRACE_100, EMBED_OFF), (TRACE_DOWN, EMBED_OFF),
                        (TRACE_DOWN, TRACE_100)):
        rows.append([f"{label.removeprefix(EMBED_OFF + ', ')} − {'off' if base == EMBED_OFF else '100 %'}",
                     _spread(_per_round(res.c1[label], res.c1[base], p50_diff), "+.2f") + " ms",
                     _spread(_per_round(res.c32[label], res.c32[base], rps_ratio), ".2f") + "×"])
    off1, off32 = res.c1[EMBED_OFF].runs, res.c32[EMBED_OFF].runs
    rows.append(["noise: tracing off, one round against the next",
                 _spread([b.p50_ms - a.p50_ms for a, b in itertools.pairwise(off1)] or [0.0], "+.2f")
                 + " ms",
                 _spread([b.rps / a.rps for a, b in itertools.pairwise(off32)] or [1.0], ".2f") + "×"])
    return rows


def tracing_text(res: Results) -> list[str]:
    """The tracing subsection, when the run included the traced gateways."""
    if not all(label in res.c1 and label in res.c32 for label in TRACED_PATHS):
        return []
    sink = res.sink or {}
    return [
        "### Cost of tracing (OpenTelemetry)",
        "Three more gateways, configured like the rate-limited one, with tracing on "
        "(`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG` 0.01 or 1, "
        "`OTEL_BSP_SCHEDULE_DELAY` at its default): two export OTLP/HTTP to a sink on loopback that reads each "
        "body and answers 200 without decoding it (`loadtest/bench/otlp_sink.py`; a collector would take CPU "
        "from the processes measured), one to a closed port (collector down). wrk sends no `traceparent`, so the "
        "gateway's sampler decides. Their cache-cold `/v1/embeddings` runs (unique sentences, so each sampled "
        "request has the server, `single_flight`, Redis and `triton ModelInfer` spans) take part in the rounds "
        "above, interleaved with the untraced gateway's. Triton is not traced in this run: its exporter would "
        "send the 100 % row's spans while the next run is measured. Gateway CPU per request includes the "
        "exporter's thread (span encoding and export).",
        markdown_table(["tracing", "concurrency", "req/s", "p50 ms", "p99 ms", "gateway CPU ms/req",
                        "CPU vs off"], _rows(res)),
        "Per round, against the untraced gateway measured in the same round (median [min, max] over rounds), and "
        "the untraced gateway against itself from one round to the next (what noise alone moves):",
        markdown_table(["comparison", "p50 difference at c=1", "throughput ratio at c=32"], _paired_rows(res)),
        f"The sink received {sink.get('requests', 0)} export requests ({sink.get('bytes', 0) / 1e6:.1f} MB) over "
        "the whole run.",
    ]
