"""Raw benchmark series as JSON next to the plots (`docs/img/<bench>.json`) and the PNG plots drawn from them.

A series is one configuration run at several concurrencies: `{label: [{concurrency, rps, p50_ms, p95_ms,
p99_ms}, …]}`. Each bench saves its own file; `draw` plots every file present, so the figures compare whatever
the benches last wrote here.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from loadtest.wrk import WrkResult

Series = dict[str, list[dict[str, float]]]
PERCENTILES = ("p50_ms", "p95_ms", "p99_ms")


def from_wrk_runs(runs: dict[str, dict[int, list[WrkResult]]]) -> Series:
    """`{label: {concurrency: [runs]}}` → per-concurrency medians (errors summed)."""

    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    return {
        label: [
            {"concurrency": c, "rps": med([r.rps for r in rs]), "p50_ms": med([r.p50_ms for r in rs]),
             "p95_ms": med([r.p95_ms for r in rs]), "p99_ms": med([r.p99_ms for r in rs]),
             "errors": sum(r.errors + r.non2xx for r in rs)}
            for c, rs in sorted(by_c.items())
        ]
        for label, by_c in runs.items()
    }


def save_series(img_dir: Path, bench: str, series: Series, meta: dict[str, Any] | None = None) -> Path:
    """Write `img_dir/<bench>.json`."""
    img_dir.mkdir(parents=True, exist_ok=True)
    path = img_dir / f"{bench}.json"
    path.write_text(json.dumps({"bench": bench, "meta": meta or {}, "series": series}, indent=2) + "\n")
    return path


def load_all(img_dir: Path) -> Series:
    """Every series of every bench JSON in `img_dir`, labelled `bench: label`."""
    merged: Series = {}
    for path in sorted(img_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            for label, points in data["series"].items():
                merged[f"{data['bench']}: {label}"] = sorted(points, key=lambda p: p["concurrency"])
        except (ValueError, KeyError, TypeError):
            continue  # not one of ours
    return merged


def draw(img_dir: Path) -> list[Path]:
    """throughput.png (req/s vs concurrency) and latency.png (p50/p95/p99 vs concurrency); returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = load_all(img_dir)
    if not series:
        return []
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, points in series.items():
        ax.plot([p["concurrency"] for p in points], [p["rps"] for p in points], marker="o", label=label)
    _axes(ax, "throughput vs concurrency (closed loop, wrk)", "requests/s (log scale)")
    ax.set_yscale("log")  # cache hits are orders of magnitude above the naive baseline: a linear axis flattens the rest
    throughput = img_dir / "throughput.png"
    fig.savefig(throughput, dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(15, 5), sharey=True)
    for ax, key in zip(axes, PERCENTILES, strict=True):
        for label, points in series.items():
            ax.plot([p["concurrency"] for p in points], [p[key] for p in points], marker="o", label=label)
        _axes(ax, key.removesuffix("_ms"), "latency (ms)")
        ax.set_yscale("log")
    axes[0].legend().remove()
    axes[1].legend().remove()
    latency = img_dir / "latency.png"
    fig.savefig(latency, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [throughput, latency]


def _axes(ax: Any, title: str, ylabel: str) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("concurrency")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
