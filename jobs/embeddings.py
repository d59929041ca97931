"""The `embeddings` job: documents → token chunks with overlap → Triton in full batches → JSONL per chunk.

Input (stored by the gateway): `{"model", "documents": [{"id", "text"}], "chunking": {"max_tokens",
"overlap"}, "encoding_format"}`. Chunks are grouped into units of `batch_size` (the model's
`max_batch_size` unless the worker overrides it) and `batch_concurrency` units are in flight at once, so
Triton's dynamic batcher always has a full batch queued. Each chunk is looked up in the gateway's per-item
embedding cache first (same keys as `POST /v1/embeddings`), and fresh vectors are stored there.

Result lines: `{"document_id", "chunk_index", "start", "end", "tokens", "embedding"}` (`start`/`end` are
character offsets into the document; `tokens` is what the model embedded; `embedding` is a float list or
base64 of little-endian float32).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from gateway.backends.base import ModelInfo
from gateway.cache import CachedItem, EmbeddingCache
from gateway.embeddings.encoding import base64_rows
from gateway.embeddings.service import CACHE_PARAMS
from gateway.jobqueue.records import JobRecord
from jobs.chunking import Chunk
from jobs.runner import JobFailedError, UnitResult, run_job
from jobs.runtime import Runtime

_LINE = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
_DEFAULT_BATCH = 64


async def embed_texts(rt: Runtime, model: str, version: str, texts: Sequence[str]) -> list[CachedItem]:
    """One item (vector + token count) per text, from `version` of `model`: the cache first, the misses in one
    backend call pinned to that version (a version loaded in mid-job never mixes into a job's output)."""
    keys = EmbeddingCache.keys(model, version, CACHE_PARAMS, texts) if rt.cache else []
    found: list[CachedItem | None] = await rt.cache.get_keys(keys) if rt.cache else [None] * len(texts)
    missing = [i for i, item in enumerate(found) if item is None]
    if missing:
        result = await rt.backend.embed(model, [texts[i] for i in missing], version=version)
        fresh = [CachedItem.from_array(vector, tokens)
                 for vector, tokens in zip(result.vectors, result.token_counts.tolist(), strict=True)]
        for i, item in zip(missing, fresh, strict=True):
            found[i] = item
        if rt.cache is not None:
            await rt.cache.set_keys([keys[i] for i in missing], fresh)
    return found  # type: ignore[return-value]


@dataclass
class EmbeddingWork:
    """A planned embeddings job: chunks grouped into units of `batch_size`."""

    rt: Runtime
    model: str
    version: str  # every unit is computed by this version (the plan's)
    ids: list[Any]
    texts: list[str]
    chunks: list[Chunk]
    batch_size: int
    encoding_format: str

    @property
    def units(self) -> int:
        """Number of batches."""
        return math.ceil(len(self.chunks) / self.batch_size)

    async def run_unit(self, index: int) -> UnitResult:
        """Embed batch `index` and render its lines."""
        part = self.chunks[index * self.batch_size : (index + 1) * self.batch_size]
        items = await embed_texts(self.rt, self.model, self.version,
                                  [self.texts[c.document][c.start : c.end] for c in part])
        matrix = np.frombuffer(b"".join(item.vector for item in items), dtype="<f4").reshape(len(items), -1)
        rows: Sequence[Any] = base64_rows(matrix) if self.encoding_format == "base64" else matrix
        data = b"".join(
            orjson.dumps({"document_id": self.ids[c.document], "chunk_index": c.index, "start": c.start,
                          "end": c.end, "tokens": item.tokens, "embedding": row}, option=_LINE)
            for c, item, row in zip(part, items, rows, strict=True)
        )
        return UnitResult(data, items=len(part), tokens=sum(item.tokens for item in items))


async def plan_embeddings(rt: Runtime, record: JobRecord, raw: bytes) -> EmbeddingWork:
    """Chunk the documents and fix the batch size and model version (a retry reuses the stored plan): the version
    the gateway chose for the job's owner under the rollout table (`_first_version`), else the newest version Triton
    serves when the job is first planned, computes all of it; if that version is unloaded before the job ends, the
    job fails (`model_not_found`) rather than mixing two models' vectors."""
    job = orjson.loads(raw)
    model, chunking = job["model"], job["chunking"]
    ids = [d["id"] for d in job["documents"]]
    texts = [d["text"] for d in job["documents"]]
    info = await rt.backend.model_info(model)
    plan = record.plan or {
        "batch_size": rt.config.batch_size or info.max_batch_size or _DEFAULT_BATCH,
        "model_version": _first_version(job.get("model_version"), info),
    }
    chunker = rt.chunkers.get(model, plan["model_version"])
    chunks = await asyncio.to_thread(chunker.chunks, texts, chunking["max_tokens"], chunking["overlap"])
    candidate = {"batch_size": plan["batch_size"], "model_version": plan["model_version"],
                 "chunker": chunker.name, "total": len(chunks),
                 "units": math.ceil(len(chunks) / plan["batch_size"])}
    stored = await rt.store.set_plan(record.id, candidate)
    if stored is None:
        raise JobFailedError("the job's record is gone", "job_missing")
    if stored != candidate:
        if record.plan is not None:
            raise JobFailedError("the chunking changed between runs of this job (tokenizer file added or removed)",
                            "plan_changed")
        record.plan = stored  # another run planned first: follow its plan
        return await plan_embeddings(rt, record, raw)
    return EmbeddingWork(rt, model, str(stored["model_version"]), ids, texts, chunks, int(stored["batch_size"]),
                         job.get("encoding_format", "float"))


def _first_version(chosen: str | None, info: ModelInfo) -> str:
    """The version that computes a job being planned: the one the gateway chose while it is still served (a
    rollback may have unloaded it since: nothing is computed yet, so nothing mixes), else the newest."""
    return chosen if chosen and chosen in info.versions else info.version


async def embeddings(ctx: dict[str, Any], job_id: str) -> dict[str, Any]:
    """arq job: run or resume embeddings job `job_id`."""
    return await run_job(ctx["runtime"], job_id, ctx["job_try"], plan_embeddings)
