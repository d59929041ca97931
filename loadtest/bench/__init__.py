"""Benchmarks: separate from tests, each ratio from the runs of one invocation, results written to
docs/BENCHMARKS.md."""
