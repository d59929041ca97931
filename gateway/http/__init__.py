"""HTTP plumbing shared by the gateway's routes: the uvicorn protocol, JSON responses, OpenAPI schema helpers."""
