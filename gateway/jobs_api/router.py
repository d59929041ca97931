"""`/v1/jobs` — thin: parse, call the service, serialize.

- `POST /v1/jobs` → 202 job object (`Location` header; `Idempotent-Replayed: true` on a replay). A JSON body
  (see `gateway.jobs_api.protocol`), or JSONL (`Content-Type: application/x-ndjson`): one item per line — a
  string or `{id, text}` for embeddings and classify, `{custom_id, body}` for chat, a group `{id, query,
  documents}` for rerank — with `type` (default embeddings), `model`, `max_tokens`, `overlap`,
  `encoding_format`, `top_k` and `webhook_url` as query parameters.
- `GET /v1/jobs/{id}` → the job object; `GET /v1/jobs/{id}/result` → JSONL of the units stored so far
  (`x-job-status` tells whether more will come); `DELETE /v1/jobs/{id}` → the job object after the cancel.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import TypeAdapter, ValidationError
from starlette.responses import Response, StreamingResponse

from gateway.auth import Principal
from gateway.deps import get_jobs_service, get_principal, rate_limited_principal
from gateway.errors import InvalidRequestError, validation_error
from gateway.http.openapi import inline_defs
from gateway.http.responses import dumps
from gateway.jobs_api.protocol import JobObject, JobRequest
from gateway.jobs_api.service import JobsService

router = APIRouter(tags=["jobs"])

_REQUEST = TypeAdapter(JobRequest)
_JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-lines", "application/x-jsonlines")
_MAX_IDEMPOTENCY_KEY = 255
_JSON_BODY = {
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": inline_defs(_REQUEST.json_schema())},
        "application/x-ndjson": {"schema": {"type": "string", "description": "one item per line"}}}}
}


def _jsonl_job(request: Request, raw: bytes) -> dict[str, Any]:
    """A JSONL upload → the equivalent JSON job body."""
    q = request.query_params
    try:
        lines = [orjson.loads(line) for line in raw.splitlines() if line.strip()]
    except orjson.JSONDecodeError:
        raise InvalidRequestError("every non-empty line of a JSONL upload must be JSON", code="invalid_jsonl") from None
    job: dict[str, Any] = {"type": q.get("type", "embeddings")}
    if q.get("webhook_url"):
        job["webhook"] = {"url": q["webhook_url"]}
    if job["type"] == "chat":
        return {**job, "requests": [x if "body" in x else {"body": x} for x in lines]}
    if job["type"] == "rerank":
        return {**job, "model": q.get("model"), "groups": lines}
    if job["type"] == "classify":
        documents = [{"id": i, "text": x} if isinstance(x, str) else x for i, x in enumerate(lines)]
        return {**job, "model": q.get("model"), "documents": documents, "top_k": q.get("top_k")}
    job.update(model=q.get("model"), encoding_format=q.get("encoding_format", "float"),
               documents=[{"id": i, "text": x} if isinstance(x, str) else x for i, x in enumerate(lines)])
    if q.get("max_tokens"):
        job["chunking"] = {"max_tokens": q["max_tokens"], "overlap": q.get("overlap", 0)}
    return job


def parse_job(request: Request, raw: bytes) -> JobRequest:
    """The validated job request (400 envelope naming the first bad field)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type in _JSONL_TYPES:
            return _REQUEST.validate_python(_jsonl_job(request, raw))
        return _REQUEST.validate_json(raw)
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False)) from None


def idempotency_key(request: Request) -> str | None:
    """The `Idempotency-Key` header (≤ 255 printable characters) or None."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not key or len(key) > _MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise InvalidRequestError("'Idempotency-Key' must be 1-255 printable characters", param="Idempotency-Key",
                                  code="invalid_idempotency_key")
    return key


@router.post("/v1/jobs", status_code=202, response_model=JobObject, response_class=Response,
             openapi_extra=_JSON_BODY)
async def create_job(request: Request, principal: Principal = Depends(rate_limited_principal),
                     service: JobsService = Depends(get_jobs_service)) -> Response:
    """Submit a background job (honours `Idempotency-Key`)."""
    body = parse_job(request, await request.body())
    accepted = await service.submit(body, principal, idempotency_key(request))
    headers = {"location": f"/v1/jobs/{accepted.job['id']}"}
    if accepted.replayed:
        headers["idempotent-replayed"] = "true"
    return Response(dumps(accepted.job), status_code=202, media_type="application/json", headers=headers)


@router.get("/v1/jobs/{job_id}", response_model=JobObject, response_class=Response)
async def get_job(job_id: str, principal: Principal = Depends(get_principal),
                  service: JobsService = Depends(get_jobs_service)) -> Response:
    """Status, progress, timestamps, usage and error of a job."""
    return Response(dumps(await service.get(job_id, principal)), media_type="application/json")


@router.get("/v1/jobs/{job_id}/result")
async def get_job_result(job_id: str, principal: Principal = Depends(get_principal),
                         service: JobsService = Depends(get_jobs_service)) -> StreamingResponse:
    """The results as JSONL, streamed; partial while the job runs (see `x-job-status`)."""
    record, body = await service.results(job_id, principal)
    headers = {"x-job-status": record.status.value, "x-job-progress": f"{record.done}/{record.total or 0}"}
    return StreamingResponse(body, media_type="application/x-ndjson", headers=headers)


@router.delete("/v1/jobs/{job_id}", response_model=JobObject, response_class=Response)
async def cancel_job(job_id: str, principal: Principal = Depends(rate_limited_principal),
                     service: JobsService = Depends(get_jobs_service)) -> Response:
    """Cancel: a queued job is removed from the queue; a running one stops between batches, keeping results."""
    return Response(dumps(await service.cancel(job_id, principal)), media_type="application/json")
