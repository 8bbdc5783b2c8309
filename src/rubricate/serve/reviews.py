"""The human review queue: list items with everything a rater needs, record decisions, export them.

Decisions are final unless replaced on purpose: a second decision on a decided review is a
:class:`~rubricate.serve.validation.Conflict` (HTTP 409, so a double submit stores one decision) unless
it says ``replace=True``; then it supersedes the first, and both stay in the history
(:class:`~rubricate.serve.db.ReviewDecision`), the latest one being the review's final scores.

New items: a result of an item the student scores zero-shot enters the queue below a stricter confidence
(:func:`review_threshold`, ``ServeSettings.review_confidence_zero_shot``); the queue can be read least
confident first (``order="uncertainty"``); :func:`next_to_score` picks the answers of one item a teacher
should score next (:func:`rubricate.student.active.select` over the stored student outputs).
"""

from __future__ import annotations

import csv
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select, update

from rubricate.data.records import Record, write_records
from rubricate.errors import InputError
from rubricate.serve import db
from rubricate.serve.settings import ServeSettings
from rubricate.serve.validation import Conflict, NotFound, Problem, ValidationFailed
from rubricate.student.active import SelectionOptions, Strategy, source_for, uncertainty
from rubricate.student.active import select as select_answers
from rubricate.tasks import TaskRegistry

REVIEW_FILTERS = ("pending", "accepted", "overridden", "all")
REVIEW_ORDERS = ("id", "uncertainty")  #: queue order: oldest first, or least confident student result first


def review_threshold(settings: ServeSettings, scorer: Any, task_id: str) -> float:
    """The confidence below which a student result of ``task_id`` enters the queue (stricter when zero-shot)."""
    if scorer is not None and source_for(scorer, task_id) == "zero_shot":
        return settings.review_confidence_zero_shot
    return settings.review_confidence


def route_by_source(results: list[dict[str, Any]], settings: ServeSettings, scorer: Any) -> list[dict[str, Any]]:
    """Set ``needs_review`` of scored rows (``batch.score_rows`` results) from each task's own threshold."""
    for r in results:
        r["needs_review"] = float(r["confidence"]) < review_threshold(settings, scorer, r["task_id"])
    return results


def _decision_out(d: db.ReviewDecision, index: int) -> dict[str, Any]:
    return {"action": d.action, "scores": d.scores, "rater_id": d.rater_id, "comment": d.comment,
            "replaces_previous": index > 0, "created_at": d.created_at.isoformat()}


class ReviewService:
    """Review items over one database; ``tasks`` checks override scores against the rubric."""

    def __init__(self, database: db.Database, tasks: TaskRegistry) -> None:
        self.db = database
        self.tasks = tasks

    def list_reviews(self, status: str | None = "pending", limit: int = 50, offset: int = 0, order: str = "id"
                     ) -> dict[str, Any]:
        """One page of the queue; each item carries the student's distribution and the agents' evidence.

        ``order="uncertainty"``: least confident student result first (``Prediction.confidence``, the measure
        the review threshold reads); items without a student result come last; ties by queue order.
        """
        if order not in REVIEW_ORDERS:
            raise ValidationFailed([Problem(("query", "order"), f"use one of {', '.join(REVIEW_ORDERS)}", "enum")])
        with self.db.read() as s:
            q = select(db.Review, db.Response).join(db.Response)
            cq = select(func.count(db.Review.id))
            if status:
                q = q.where(db.Review.status == status)
                cq = cq.where(db.Review.status == status)
            if order == "uncertainty":
                q = q.outerjoin(db.Prediction, db.Review.prediction_id == db.Prediction.id).order_by(
                    db.Prediction.confidence.is_(None), db.Prediction.confidence)
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


# --- what to score next ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NextOptions:
    """``rubricate reviews next``: which answers of one item a teacher should score next."""

    n: int = 10  #: answers to pick
    strategy: Strategy = "uncertainty"  #: rubricate.student.active.STRATEGIES
    seed: int = 0  #: random / diversity start
    max_joint_criteria: int = 12
    """An analytic item (criteria, no scale) is ranked on the joint distribution of its criteria (independent,
    2^C patterns); more criteria than this is refused (the matrix would not fit)."""
    selection: SelectionOptions = SelectionOptions()


@dataclass
class NextBatch:
    """The picks, in the order to score them, and what they were chosen from."""

    task_id: str
    items: list[dict[str, Any]]
    n_candidates: int  #: responses of the task with a student result and no human decision
    n_scored: int  #: responses already decided by a human (never picked; diversity keeps away from them)
    label_keys: list[str] = field(default_factory=list)
    n_without_student: int = 0  #: responses of the task with no student result (nothing to rank them by)


def distribution_matrix(preds: list[db.Prediction], max_joint_criteria: int = NextOptions.max_joint_criteria
                        ) -> np.ndarray:
    """(N, K): the student's distribution of each response's score: the first scale's ``score_distribution``;
    for an analytic item the joint distribution of its criteria (``probs`` of labels without ``>=``)."""
    first = preds[0]
    if first.score_distribution:
        key = next(iter(first.score_distribution))
        rows = [list((p.score_distribution or {}).get(key) or []) for p in preds]
    else:
        names = [k for k in first.probs if ">=" not in k]
        if not names or len(names) > max_joint_criteria:
            raise InputError(f"task '{first.response.task_id}': {len(names)} criteria; ranking needs 1 to "
                             f"{max_joint_criteria} (max_joint_criteria)")
        pos = np.array([[float(p.probs.get(c, np.nan)) for c in names] for p in preds])
        patterns = np.array(list(itertools.product((0, 1), repeat=len(names))), dtype=np.float64)
        rows = np.prod(np.where(patterns[None, :, :] == 1, pos[:, None, :], 1 - pos[:, None, :]), axis=2).tolist()
    if len({len(r) for r in rows}) != 1 or not np.all(np.isfinite(np.asarray(rows, dtype=np.float64))):
        raise InputError(f"task '{first.response.task_id}': the stored student distributions differ in shape or "
                         "have gaps (several model versions?)")
    return np.asarray(rows, dtype=np.float64)


def _latest_predictions(s: Any, task_id: str) -> list[tuple[db.Response, db.Prediction]]:
    """Each response of the task with its latest student result (the highest prediction id)."""
    rows = s.execute(select(db.Response, db.Prediction).join(db.Prediction)
                     .where(db.Response.task_id == task_id).order_by(db.Response.id, db.Prediction.id)).all()
    latest: dict[int, tuple[db.Response, db.Prediction]] = {}
    for resp, pred in rows:
        latest[resp.id] = (resp, pred)
    return list(latest.values())


def choose_next(s: Any, task_id: str, opt: NextOptions) -> NextBatch:
    """The picks over one open session (the responses without a human decision, ranked by ``opt.strategy``)."""
    pairs = _latest_predictions(s, task_id)
    if not pairs:
        raise InputError(f"no response of task '{task_id}' has a student result in this database")
    reviews = s.execute(select(db.Review.response_pk, db.Review.id, db.Review.status)
                        .join(db.Response).where(db.Response.task_id == task_id).order_by(db.Review.id)).all()
    decided = {pk for pk, _, status in reviews if status != "pending"}
    pending = {}
    for pk, rid, status in reviews:
        if status == "pending":
            pending.setdefault(pk, rid)
    probs = distribution_matrix([p for _, p in pairs], opt.max_joint_criteria)
    done = [i for i, (resp, _) in enumerate(pairs) if resp.id in decided]
    picks = select_answers(opt.strategy, probs, opt.n, seed=opt.seed, exclude=done, options=opt.selection)
    unc = uncertainty(probs, opt.selection.measure)
    items = [{"rank": rank, "task_id": task_id, "response_id": pairs[i][0].response_id,
              "review_id": pending.get(pairs[i][0].id), "confidence": pairs[i][1].confidence,
              "uncertainty": float(unc[i]), "scores": dict(pairs[i][1].scores), "text": pairs[i][0].text}
             for rank, i in enumerate(picks, start=1)]
    n_responses = s.scalar(select(func.count(db.Response.id)).where(db.Response.task_id == task_id)) or 0
    return NextBatch(task_id, items, len(pairs) - len(done), len(done), list(pairs[0][1].scores),
                     n_without_student=n_responses - len(pairs))


def next_to_score(database_url: str, task_id: str, options: NextOptions | None = None) -> NextBatch:
    """The answers of ``task_id`` to score next, from the server database (a read path: never creates it)."""
    db.require_existing(database_url)
    database = db.Database(database_url)
    try:
        with database.read() as s:
            return choose_next(s, task_id, options or NextOptions())
    finally:
        database.dispose()


def write_next(batch: NextBatch, out: str | Path) -> Path:
    """The picks as CSV for a teacher: one empty column per label key to fill in (``--format table`` reads it
    back), then the student's proposal; ``.jsonl``: one JSON object per pick."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix in (".jsonl", ".ndjson"):
        out.write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in batch.items), encoding="utf-8")
        return out
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["rank", "task_id", "response_id", "text", *batch.label_keys, "review_id", "confidence",
                    "uncertainty", "student_scores"])
        for it in batch.items:
            w.writerow([it["rank"], it["task_id"], it["response_id"], it["text"], *([""] * len(batch.label_keys)),
                        it["review_id"] or "", f"{it['confidence']:.4f}", f"{it['uncertainty']:.4f}",
                        json.dumps(it["scores"])])
    return out
