"""Scoring: the student (``/v1/score``) and the LLM agents as a job (``/v1/agents/score``), job status."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi import Path as FPath

from rubricate.serve.http import SafeJSONResponse, ServerContext, check_batch, context, need_student, require_auth
from rubricate.serve.schemas import MAX_JOB_ID_CHARS, AgentsRequest, JobStatus, ScoreRequest, ScoreResponse
from rubricate.serve.validation import Item

router = APIRouter(dependencies=[Depends(require_auth)])


@router.post("/v1/score", response_model=ScoreResponse, tags=["scoring"])
def score(req: ScoreRequest, ctx: ServerContext = Depends(context)) -> dict[str, Any]:
    """Score a batch with the student; low-confidence results enter the review queue.

    200 only once the rows are durably stored; 503 (with the reason) when the database cannot take them.
    """
    need_student(ctx.service)
    check_batch(ctx.settings, len(req.items))
    return {"results": ctx.service.score([Item(i.task_id, i.text, i.response_id) for i in req.items])}


@router.post("/v1/agents/score", tags=["scoring"], responses={202: {"description": "Still running: poll status_url."}})
async def agents_score(req: AgentsRequest, ctx: ServerContext = Depends(context)) -> SafeJSONResponse:
    """The LLM path with evidence, run as a job; answers inline when it finishes quickly."""
    if not ctx.service.agents_enabled():
        raise HTTPException(503, "the LLM path is not configured (start the server with --agents-backend)")
    check_batch(ctx.settings, len(req.items))
    items = [Item(i.task_id, i.text, i.response_id) for i in req.items]
    keys = await asyncio.to_thread(ctx.service.prepare_agent_items, items)
    job_id = await asyncio.to_thread(ctx.jobs.create, "agents", items, keys,
                                     mode=req.mode or ctx.settings.agents_mode, with_student=req.with_student)
    fut = ctx.jobs.futures.get(job_id)
    if fut is not None:
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), ctx.settings.agents_sync_wait_s)
        except asyncio.TimeoutError:
            pass
    status = await asyncio.to_thread(ctx.service.job, job_id)
    return SafeJSONResponse(status, status_code=200 if status["status"] in ("done", "failed") else 202)


@router.get("/v1/jobs/{job_id}", response_model=JobStatus, tags=["jobs"])
def get_job(job_id: str = FPath(..., max_length=MAX_JOB_ID_CHARS), ctx: ServerContext = Depends(context)
            ) -> dict[str, Any]:
    """Status (and, when done, results) of an agents or batch job."""
    return ctx.service.job(job_id)
