"""The human review queue: list items with everything a rater needs, record decisions, export them.

Decisions are final unless replaced on purpose: a second decision on a decided review is a
:class:`~rubricate.serve.validation.Conflict` (HTTP 409, so a double submit stores one decision) unless
it says ``replace=True``; then it supersedes the first, and both stay in the history
(:class:`~rubricate.serve.db.ReviewDecision`), the latest one being the review's final scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update

from rubricate.data.records import Record, write_records
from rubricate.serve import db
from rubricate.serve.validation import Conflict, NotFound, Problem, ValidationFailed
from rubricate.tasks import TaskRegistry

REVIEW_FILTERS = ("pending", "accepted", "overridden", "all")


def _decision_out(d: db.ReviewDecision, index: int) -> dict[str, Any]:
    return {"action": d.action, "scores": d.scores, "rater_id": d.rater_id, "comment": d.comment,
            "replaces_previous": index > 0, "created_at": d.created_at.isoformat()}


class ReviewService:
    """Review items over one database; ``tasks`` checks override scores against the rubric."""

    def __init__(self, database: db.Database, tasks: TaskRegistry) -> None:
        self.db = database
        self.tasks = tasks

    def list_reviews(self, status: str | None = "pending", limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """One page of the queue; each item carries the student's distribution and the agents' evidence."""
        with self.db.read() as s:
            q = select(db.Review, db.Response).join(db.Response)
            cq = select(func.count(db.Review.id))
            if status:
                q = q.where(db.Review.status == status)
                cq = cq.where(db.Review.status == status)
            total = s.scalar(cq) or 0
            rows = s.execute(q.order_by(db.Review.id).limit(limit).offset(offset)).all()
            return {"total": total, "items": [self._item(s, rv, resp) for rv, resp in rows]}

    @staticmethod
    def _item(s: Any, rv: db.Review, resp: db.Response) -> dict[str, Any]:
        ar = s.get(db.AgentResultRow, rv.agent_result_id) if rv.agent_result_id is not None else None
        pred = s.get(db.Prediction, rv.prediction_id) if rv.prediction_id is not None else None
        return {
            "id": rv.id, "task_id": resp.task_id, "response_id": resp.response_id, "text": resp.text,
            "reason": rv.reason, "status": rv.status, "proposed_scores": rv.proposed_scores,
            "final_scores": rv.final_scores, "details": rv.details,
            "evidence": ar.components if ar is not None else None,
            "student": None if pred is None else {"confidence": pred.confidence,
                                                  "score_distribution": pred.score_distribution},
            "created_at": rv.created_at.isoformat(),
            "decided_at": rv.decided_at.isoformat() if rv.decided_at is not None else None,
            "decisions": [_decision_out(d, i) for i, d in enumerate(rv.decisions)],
        }

    def _final_scores(self, review_id: int, action: str, scores: dict[str, int] | None, source: str
                      ) -> tuple[dict[str, Any], str, str]:
        """The scores a decision stores, checked against the rubric; also the review's task and response ids."""
        with self.db.read() as s:
            rv = s.get(db.Review, review_id)
            if rv is None:
                raise NotFound(f"review {review_id} not found")
            resp = s.get(db.Response, rv.response_pk)
            proposed, details = dict(rv.proposed_scores), dict(rv.details or {})
            task_id, response_id = resp.task_id, resp.response_id
        if action == "accept":
            agents = dict(details.get("agent_scores") or {}) if source == "agents" else {}
            if source == "agents" and not agents:
                raise ValidationFailed([Problem(("body", "source"), "this review has no agent scores",
                                                "no_agent_scores")])
            final = {**proposed, **agents}
        elif action == "override":
            if not scores:
                raise ValidationFailed([Problem(("body", "scores"), "an override needs scores", "missing")])
            final = {**proposed, **scores}
        else:
            raise ValidationFailed([Problem(("body", "action"), f"unknown action '{action}'", "enum")])
        bad = self.tasks.get(task_id).check_labels(final)
        if bad:
            raise ValidationFailed([Problem(("body", "scores"), "; ".join(bad), "invalid_scores")])
        return final, task_id, response_id

    def decide(self, review_id: int, action: str, rater_id: str, comment: str = "",
               scores: dict[str, int] | None = None, source: str = "student", replace: bool = False
               ) -> dict[str, Any]:
        """Accept the proposed scores (``source`` student or agents) or override them; returns the review.

        A decided review answers :class:`Conflict` unless ``replace``; the claim is one conditional UPDATE,
        so two concurrent first decisions cannot both succeed.
        """
        final, task_id, response_id = self._final_scores(review_id, action, scores, source)
        status = "accepted" if action == "accept" else "overridden"
        with self.db.write() as s:
            cond = [db.Review.id == review_id] + ([] if replace else [db.Review.status == "pending"])
            claimed = s.execute(update(db.Review).where(*cond).values(
                status=status, final_scores=final, decided_at=db.utcnow())).rowcount
            if not claimed:
                raise Conflict([Problem(("path", "review_id"), f"review {review_id} is already decided; send "
                                        '"replace": true to replace its decision (the history is kept)',
                                        "already_decided")])
            s.add(db.ReviewDecision(review_id=review_id, action=action, scores=final, rater_id=rater_id,
                                    comment=comment))
        return {"id": review_id, "status": status, "final_scores": final, "task_id": task_id,
                "response_id": response_id}

    def decided_records(self) -> list[Record]:
        """Human decisions as labeled records (latest decision per response wins)."""
        with self.db.read() as s:
            rows = s.execute(select(db.ReviewDecision, db.Review, db.Response)
                             .join(db.Review, db.ReviewDecision.review_id == db.Review.id)
                             .join(db.Response, db.Review.response_pk == db.Response.id)
                             .order_by(db.ReviewDecision.created_at, db.ReviewDecision.id)).all()
            latest: dict[tuple[str, str], Record] = {}
            for dec, rv, resp in rows:
                latest[(resp.task_id, resp.response_id)] = Record(
                    response_id=resp.response_id, task_id=resp.task_id, text=resp.text,
                    labels={k: int(v) for k, v in dec.scores.items()},
                    metadata={"source": "human-review", "review_id": rv.id, "reason": rv.reason,
                              "action": dec.action, "rater_id": dec.rater_id, "comment": dec.comment,
                              "decided_at": dec.created_at.isoformat()})
            return list(latest.values())


def export_reviews(database_url: str, out: str | Path) -> tuple[Path, int]:
    """Write every human review decision as labeled records (``Record`` JSONL, the loader format).

    A read path: a missing SQLite file is an error, never a new empty database.
    """
    db.require_existing(database_url)
    database = db.Database(database_url)
    try:
        records = ReviewService(database, TaskRegistry()).decided_records()
        return write_records(records, out), len(records)
    finally:
        database.dispose()
