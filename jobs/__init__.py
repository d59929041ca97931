"""Background jobs on arq (bulk embeddings, batch chat): the worker process that runs them off the request path."""
