"""Background jobs API: `/v1/jobs` (submit, status, results, cancel); the worker is in `jobs/`."""
