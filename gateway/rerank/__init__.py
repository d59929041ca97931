"""`POST /v1/rerank` (Cohere, Jina) and TEI's `POST /rerank`: (query, document) pairs scored by a rerank model."""
