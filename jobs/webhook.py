"""Webhooks: when a job ends, POST its job object to the job's URL, signed, retried with backoff.

Body: `{"event": "job.<status>", "job": <the GET /v1/jobs/{id} object>}`. Headers:
`X-Tritonstack-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes, keyed by the job's secret>`,
`X-Tritonstack-Event`, `X-Tritonstack-Delivery` (job id and attempt). Any 2xx is delivered; anything else
(other status, connection error, timeout) is retried as its own arq job with delays of `webhook_backoff_s`,
doubling, for `webhook_max_attempts` attempts in all; the outcome is kept in the job's `webhook` field
(`status`, `attempts`, `delivered`, and `last_error`: why the latest failed attempt failed).
Redirects are not followed, and by default only public addresses are reached (`gateway.jobqueue.egress`: SSRF guard).

A receiver verifies a delivery by recomputing the HMAC over the raw body it received and comparing it with the
header in constant time (`hmac.compare_digest`); the body must not be re-serialized first.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

import aiohttp
import orjson
from arq.worker import Retry

from jobs.runtime import Runtime

log = logging.getLogger("jobs.webhook")

SIGNATURE_HEADER = "X-Tritonstack-Signature"
_MAX_ERROR_CHARS = 500  # a job's `webhook.last_error` (exception texts can be long)


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for `body`."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


async def _post(http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str],
                timeout_s: float) -> str | None:
    """None when delivered; otherwise why not."""
    try:
        async with http.post(url, data=body, headers=headers, allow_redirects=False,
                             timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            if 200 <= response.status < 300:
                return None
            return f"HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"


async def deliver_webhook(ctx: dict[str, Any], job_id: str) -> str:
    """arq job: one delivery attempt of job `job_id`'s webhook; raises Retry while attempts are left."""
    rt: Runtime = ctx["runtime"]
    attempt: int = ctx["job_try"]
    record = await rt.store.get(job_id)
    if record is None or record.webhook_url is None or record.webhook_secret is None:
        return "gone"
    if record.webhook_status == "delivered":
        return "delivered"
    record.webhook_attempts = attempt
    body = orjson.dumps({"event": f"job.{record.status.value}", "job": record.public()})
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(record.webhook_secret, body),
               "X-Tritonstack-Event": f"job.{record.status.value}", "X-Tritonstack-Delivery": f"{job_id}:{attempt}"}
    refused = rt.config.webhook_policy.refusal(record.webhook_url)
    if refused is not None:  # submitted to a gateway whose policy differs from this worker's
        log.warning("webhook of %s refused: %s", job_id, refused)
        rt.metrics.webhooks.labels("failed").inc()
        await rt.store.update(job_id, {"webhook_status": "failed", "webhook_attempts": attempt,
                                       "webhook_last_error": refused})
        return "failed"
    failure = await _post(rt.http, record.webhook_url, body, headers, rt.config.webhook_timeout_s)
    last = attempt >= rt.config.webhook_max_attempts
    status = "delivered" if failure is None else ("failed" if last else "retrying")
    rt.metrics.webhooks.labels("delivered" if failure is None else "failed").inc()
    fields: dict[str, str | int] = {"webhook_status": status, "webhook_attempts": attempt}
    if failure is not None:
        fields["webhook_last_error"] = failure[:_MAX_ERROR_CHARS]
    await rt.store.update(job_id, fields)
    if failure is None or last:
        if failure is not None:
            log.warning("webhook of %s failed for good after %d attempts: %s", job_id, attempt, failure)
        return status
    delay = rt.config.webhook_backoff_s * 2 ** (attempt - 1)
    log.info("webhook of %s attempt %d failed (%s); next in %.1fs", job_id, attempt, failure, delay)
    raise Retry(defer=delay)
