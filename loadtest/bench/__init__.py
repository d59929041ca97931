"""Benchmarks: separate from tests, ratios measured in one run, results written to docs/BENCHMARKS.md."""
