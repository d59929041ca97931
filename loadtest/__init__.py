"""Load tests (Locust scenarios, SLO gates) and reproducible benchmarks that write docs/BENCHMARKS.md."""
