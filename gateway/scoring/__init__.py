"""What `/v1/rerank` and `/v1/classify` share: model and task check, version choice, the per-item cache, limits."""
