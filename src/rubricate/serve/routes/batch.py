"""CSV batch jobs: upload (``/v1/batch``) and results (``/v1/jobs/{id}/results.csv``)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi import Path as FPath
from fastapi.responses import PlainTextResponse, Response

from rubricate.serve.http import ServerContext, context, need_student, require_auth
from rubricate.serve.schemas import MAX_JOB_ID_CHARS
from rubricate.serve.upload import parse_upload

router = APIRouter(dependencies=[Depends(require_auth)], tags=["jobs"])


@router.post("/v1/batch", status_code=202)
async def batch_upload(file: UploadFile = File(..., description="CSV with columns text, task_id (or the task form "
                                                                "field), response_id (optional)"),
                       task_id: str | None = Form(None), ctx: ServerContext = Depends(context)) -> dict[str, Any]:
    """Upload a CSV to score in the background; rows with problems are reported with their line.

    The rows go through the same validation as ``/v1/score``; an upload with no valid row is a 422.
    """
    need_student(ctx.service)
    raw = await file.read()
    name = file.filename or "upload.csv"
    up = await asyncio.to_thread(parse_upload, ctx.service, raw, name, task_id)
    keys = ctx.service.keys_for(up.items)
    job_id = await asyncio.to_thread(ctx.jobs.create, "batch", up.items, keys, problems=up.problems,
                                     filename=file.filename)
    return {"job_id": job_id, "status_url": f"/v1/jobs/{job_id}", "rows": len(up.items), "problems": up.problems}


@router.get("/v1/jobs/{job_id}/results.csv", response_class=PlainTextResponse)
def batch_results(job_id: str = FPath(..., max_length=MAX_JOB_ID_CHARS), ctx: ServerContext = Depends(context)
                  ) -> Response:
    """The scored rows of a finished batch job as CSV."""
    return Response(ctx.service.batch_results_csv(job_id), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="rubricate-{job_id}.csv"'})
