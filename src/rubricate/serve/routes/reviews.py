"""The review queue API: list, decide (409 on a second decision unless it replaces the first)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi import Path as FPath

from rubricate.serve.http import ServerContext, context, require_auth
from rubricate.serve.schemas import MAX_DB_INT, ReviewDecisionIn, ReviewOut

router = APIRouter(dependencies=[Depends(require_auth)], tags=["reviews"])


@router.get("/v1/reviews")
def reviews(status: str | None = Query("pending", pattern="^(pending|accepted|overridden|all)$"),
            limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_DB_INT),
            order: str = Query("id", pattern="^(id|uncertainty)$", description="id: queue order; uncertainty: "
                               "least confident student result first"),
            ctx: ServerContext = Depends(context)) -> dict[str, Any]:
    """The review queue (pending by default; status=all for everything; order=uncertainty: least confident first)."""
    return ctx.reviews.list_reviews(None if status == "all" else status, limit, offset, order=order)


@router.post("/v1/reviews/{review_id}", response_model=ReviewOut)
def decide(body: ReviewDecisionIn, review_id: int = FPath(..., ge=1, le=MAX_DB_INT),
           ctx: ServerContext = Depends(context)) -> dict[str, Any]:
    """Accept or override a queued result, with a comment and the rater's id.

    A decided review answers 409 unless the body says ``"replace": true`` (the earlier decision is kept in
    the history).
    """
    return ctx.reviews.decide(review_id, body.action, body.rater_id, body.comment, body.scores, body.source,
                              replace=body.replace)
