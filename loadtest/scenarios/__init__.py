"""Locust scenarios, one per file; run with `tritonstack loadtest NAME` or `locust -f loadtest/scenarios/NAME.py`."""
