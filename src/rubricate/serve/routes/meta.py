"""Health (no auth) and the task list."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from rubricate import __version__
from rubricate.serve.http import SafeJSONResponse, ServerContext, context, require_auth

router = APIRouter(tags=["meta"])


@router.get("/healthz")
def healthz(ctx: ServerContext = Depends(context)) -> SafeJSONResponse:
    """Liveness + readiness (JSON): the database answers and can take durable writes, the model is loaded.

    503 when the database is unhealthy; ``database.reason`` says why in one line.
    """
    health = {**ctx.service.health(), "version": __version__}
    return SafeJSONResponse(health, status_code=200 if health["database"]["ok"] else 503)


@router.get("/v1/tasks", dependencies=[Depends(require_auth)], tags=["tasks"])
def list_tasks(ctx: ServerContext = Depends(context)) -> dict[str, Any]:
    """Every task the server can score, with its question and rubric."""
    return {"tasks": ctx.service.task_list()}
