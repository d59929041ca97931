"""The `classify` job: texts → the classify model in full batches → one JSONL line per text.

Input (stored by the gateway): `{"model", "documents": [{"id", "text"}], "top_k", "model_version"?}`; see
`jobs.scoring` for units, the plan and the cache (the keys of `/v1/classify`).

Result lines, in input order: `{"document_id", "labels": [{"label", "score"}], "tokens"}` (labels best first,
`top_k` of them, all by default; `tokens`: what the model read).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.backends.base import ModelInfo
from gateway.cache import CachedItem
from gateway.classify.compute import classify_texts, labels_of, ranked_labels, text_keys
from gateway.jobqueue.records import JobRecord
from gateway.models.tasks import CLASSIFY
from jobs.runner import UnitResult, run_job
from jobs.runtime import Runtime
from jobs.scoring import Plan, cached_items, plan_scoring

_LINE = orjson.OPT_APPEND_NEWLINE


@dataclass
class ClassifyWork:
    """A planned classify job: texts grouped into units of `plan.batch_size`."""

    rt: Runtime
    info: ModelInfo  # the label names
    plan: Plan
    documents: list[dict[str, Any]]
    top_k: int | None

    @property
    def units(self) -> int:
        """Number of batches."""
        return self.plan.units

    async def run_unit(self, index: int) -> UnitResult:
        """Classify batch `index` (the cache first) and render its lines."""
        size, model, version = self.plan.batch_size, self.info.name, self.plan.model_version
        part = self.documents[index * size : (index + 1) * size]
        texts = [d["text"] for d in part]

        async def compute(rows: list[int]) -> list[CachedItem]:
            return await classify_texts(self.rt.backend, model, version, [texts[i] for i in rows])

        items = await cached_items(self.rt, text_keys(model, version, texts) if self.rt.cache else [""] * len(part),
                                   compute)
        labels = labels_of(self.info, len(items[0].array()))
        data = b"".join(orjson.dumps({"document_id": d["id"], "labels": ranked_labels(item, labels, self.top_k),
                                      "tokens": item.tokens}, option=_LINE)
                        for d, item in zip(part, items, strict=True))
        return UnitResult(data, items=len(part), tokens=sum(item.tokens for item in items))


async def plan_classify(rt: Runtime, record: JobRecord, raw: bytes) -> ClassifyWork:
    """Fix the plan (a retry reuses the stored one)."""
    job = orjson.loads(raw)
    plan = await plan_scoring(rt, record, job["model"], CLASSIFY, job.get("model_version"), len(job["documents"]))
    info = await rt.backend.model_info(job["model"])
    return ClassifyWork(rt, info, plan, job["documents"], job.get("top_k"))


async def classify(ctx: dict[str, Any], job_id: str) -> dict[str, Any]:
    """arq job: run or resume classify job `job_id`."""
    return await run_job(ctx["runtime"], job_id, ctx["job_try"], plan_classify)
