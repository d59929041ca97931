"""The `rerank` job: (query, document) pairs → the rerank model in full batches → one JSONL line per pair.

Input (stored by the gateway): `{"model", "groups": [{"id", "query", "documents": [{"id", "text"}]}],
"model_version"?}` — a job with one `query` is one group. The pairs of every group, in order, are the job's items
(`progress` counts pairs); see `jobs.scoring` for units, the plan and the cache.

Result lines, in input order: `{"query_id", "document_id", "index", "relevance_score", "tokens"}` (`index`: the
document's position in its group; `relevance_score`: the model's `score`, the sigmoid of its logit; `tokens`:
what the model read for the pair). Lines are not sorted by score: a ranking needs every line of a group, e.g.
`jq -s 'group_by(.query_id) | map(sort_by(-.relevance_score))'`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.cache import CachedItem
from gateway.jobqueue.records import JobRecord
from gateway.models.tasks import RERANK
from gateway.rerank.compute import pair_keys, score_and_logit, score_pairs
from jobs.runner import UnitResult, run_job
from jobs.runtime import Runtime
from jobs.scoring import Plan, cached_items, plan_scoring

_LINE = orjson.OPT_APPEND_NEWLINE


@dataclass(frozen=True, slots=True)
class _Pair:
    group: int
    index: int


@dataclass
class RerankWork:
    """A planned rerank job: pairs grouped into units of `plan.batch_size`."""

    rt: Runtime
    model: str
    plan: Plan
    groups: list[dict[str, Any]]
    pairs: list[_Pair]

    @property
    def units(self) -> int:
        """Number of batches."""
        return self.plan.units

    async def run_unit(self, index: int) -> UnitResult:
        """Score batch `index` (the cache first) and render its lines."""
        size = self.plan.batch_size
        part = self.pairs[index * size : (index + 1) * size]
        queries = [self.groups[p.group]["query"] for p in part]
        documents = [self.groups[p.group]["documents"][p.index]["text"] for p in part]

        async def compute(rows: list[int]) -> list[CachedItem]:
            return await score_pairs(self.rt.backend, self.model, self.plan.model_version, [queries[i] for i in rows],
                                     [documents[i] for i in rows])

        keys = pair_keys(self.model, self.plan.model_version, queries, documents) if self.rt.cache else [""] * len(part)
        items = await cached_items(self.rt, keys, compute)
        lines = []
        for pair, item in zip(part, items, strict=True):
            group = self.groups[pair.group]
            lines.append(orjson.dumps({"query_id": group["id"], "document_id": group["documents"][pair.index]["id"],
                                       "index": pair.index, "relevance_score": score_and_logit(item)[0],
                                       "tokens": item.tokens}, option=_LINE))
        return UnitResult(b"".join(lines), items=len(part), tokens=sum(item.tokens for item in items))


async def plan_rerank(rt: Runtime, record: JobRecord, raw: bytes) -> RerankWork:
    """Flatten the groups into pairs and fix the plan (a retry reuses the stored one)."""
    job = orjson.loads(raw)
    groups = job["groups"]
    pairs = [_Pair(g, i) for g, group in enumerate(groups) for i in range(len(group["documents"]))]
    plan = await plan_scoring(rt, record, job["model"], RERANK, job.get("model_version"), len(pairs))
    return RerankWork(rt, job["model"], plan, groups, pairs)


async def rerank(ctx: dict[str, Any], job_id: str) -> dict[str, Any]:
    """arq job: run or resume rerank job `job_id`."""
    return await run_job(ctx["runtime"], job_id, ctx["job_try"], plan_rerank)
