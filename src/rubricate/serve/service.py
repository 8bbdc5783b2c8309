"""What the server does, without HTTP: validate, score, persist, queue for review, record human decisions.

Kept apart from FastAPI so that the web page, the CSV batch jobs, the agents jobs and the tests all go
through the same code, and so that its guarantees are stated once:

* **validation before writing** - :meth:`ScoringService.validate` checks a whole batch (task ids, texts,
  duplicate keys) and nothing is written when any item fails;
* **idempotent, exactly-once storage** - a response is identified by ``(task_id, response_id)``; replaying
  a request (a client retrying after a timeout or a server crash) returns the stored result instead of
  adding a row, and the same key with a *different* text is a conflict, never an overwrite;
* **review queue** - a student result whose confidence is below ``review_confidence`` and a response on
  which the student and the agents differ by ``disagreement_threshold`` or more on any scale enter the
  queue; every human decision is kept (:class:`~rubricate.serve.db.ReviewDecision`).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from rubricate.data.records import Record, write_records
from rubricate.serve import db
from rubricate.serve.settings import ServeSettings
from rubricate.tasks import Task, TaskRegistry


class ScorerLike(Protocol):
    """The part of ``rubricate.student.scorer.Scorer`` the server uses (see docs/DEVELOPING.md)."""

    tasks: TaskRegistry
    model_id: str
    model_version: str

    def predict(self, task_ids: list[str], texts: list[str], batch_size: int = 64,
                response_ids: list[str] | None = None) -> list[Any]: ...


# (task, records, mode) -> one AgentResult (pydantic model or dict) per record, in order
AgentRunner = Callable[[Task, list[Record], str], list[Any]]


@dataclass
class Problem:
    """One validation problem, located like FastAPI's own errors: ``("body", "items", 3, "task_id")``."""

    loc: tuple[Any, ...]
    msg: str
    type: str

    def to_dict(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type}


class ValidationFailed(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems[:5]))


class Conflict(ValidationFailed):
    """A ``(task_id, response_id)`` already stored with a different text (HTTP 409)."""


class NotFound(Exception):
    pass


@dataclass
class Item:
    task_id: str
    text: str
    response_id: str | None = None


def _text_problem(value: str, what: str) -> str | None:
    """Texts that no database can store faithfully are refused up front (a 422, never a 500)."""
    if "\x00" in value:
        return f"{what} contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{what} is not valid Unicode (lone surrogate)"
    return None


def _pred_field(pred: Any, name: str, default: Any = None) -> Any:
    return pred.get(name, default) if isinstance(pred, dict) else getattr(pred, name, default)


def _as_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    raise TypeError(f"cannot convert {type(obj).__name__} to a dict")


def _jsonable(value: Any) -> Any:
    """Plain JSON types (numpy scalars and tuples from scorers become floats/ints/lists)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


class ScoringService:
    """The server's behaviour over one database, one (optional) student and an (optional) agent runner."""

    def __init__(self, settings: ServeSettings, Session: sessionmaker, scorer: ScorerLike | None = None,
                 tasks: TaskRegistry | None = None, agent_runner: AgentRunner | None = None) -> None:
        self.settings = settings
        self.Session = Session
        self.scorer = scorer
        self.agent_runner = agent_runner
        if tasks is None:
            tasks = scorer.tasks if scorer is not None else TaskRegistry()
        self.tasks = tasks
        self._model_pk: int | None = None
        self._score_lock = threading.Lock()  # one predict() at a time: the model already uses every core

    # -- model version ------------------------------------------------------------------------------------
    def model_pk(self) -> int:
        """Primary key of the served model version (created on first use, safe against concurrent starts)."""
        if self._model_pk is not None:
            return self._model_pk
        if self.scorer is None:
            raise RuntimeError("no student model is loaded")
        mid, ver = str(self.scorer.model_id), str(self.scorer.model_version)
        backend = str(getattr(self.scorer, "backend", ""))
        for _ in range(3):
            with self.Session() as s:
                row = s.scalar(select(db.ModelVersion).where(db.ModelVersion.model_id == mid,
                                                              db.ModelVersion.model_version == ver))
                if row is not None:
                    self._model_pk = row.id
                    return row.id
                try:
                    s.add(db.ModelVersion(model_id=mid, model_version=ver, backend=backend))
                    s.commit()
                except IntegrityError:
                    s.rollback()
        raise RuntimeError("could not register the model version")  # pragma: no cover

    # -- validation -------------------------------------------------------------------------------------
    def validate(self, items: Sequence[Item], field: str = "items", need_student: bool = True) -> list[Problem]:
        """Every problem of a batch (not just the first), so a client can fix them all at once."""
        problems: list[Problem] = []
        seen: dict[tuple[str, str], int] = {}
        for i, it in enumerate(items):
            loc = ("body", field, i)
            if it.task_id not in self.tasks:
                known = ", ".join(self.tasks.ids[:20])
                problems.append(Problem(loc + ("task_id",), f"unknown task '{it.task_id}' (known: {known})",
                                        "unknown_task"))
            elif need_student and self.scorer is not None and it.task_id not in self.scorer.tasks:
                problems.append(Problem(loc + ("task_id",), f"task '{it.task_id}' is not in the served model",
                                        "unknown_task"))
            bad = _text_problem(it.task_id, "task_id")
            if bad:
                problems.append(Problem(loc + ("task_id",), bad, "invalid_text"))
            if not it.text.strip():
                problems.append(Problem(loc + ("text",), "empty response text", "empty_text"))
            elif len(it.text) > self.settings.max_text_chars:
                problems.append(Problem(loc + ("text",), f"text has {len(it.text)} characters; the limit is "
                                        f"{self.settings.max_text_chars}", "text_too_long"))
            else:
                bad = _text_problem(it.text, "text")
                if bad:
                    problems.append(Problem(loc + ("text",), bad, "invalid_text"))
            if it.response_id is not None:
                bad = _text_problem(it.response_id, "response_id")
                if bad:
                    problems.append(Problem(loc + ("response_id",), bad, "invalid_text"))
                elif not it.response_id.strip():
                    problems.append(Problem(loc + ("response_id",), "empty response_id", "empty_text"))
                key = (it.task_id, it.response_id)
                if key in seen:
                    problems.append(Problem(loc + ("response_id",), f"duplicate of item {seen[key]} in this "
                                            "batch", "duplicate"))
                seen.setdefault(key, i)
        return problems

    # -- storage helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _find_responses(s: Session, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], db.Response]:
        by_task: dict[str, list[str]] = {}
        for t, r in keys:
            by_task.setdefault(t, []).append(r)
        out: dict[tuple[str, str], db.Response] = {}
        for t, rids in by_task.items():
            for i in range(0, len(rids), 500):
                rows = s.scalars(select(db.Response).where(db.Response.task_id == t,
                                                           db.Response.response_id.in_(rids[i:i + 500])))
                out.update({(row.task_id, row.response_id): row for row in rows})
        return out

    def _check_conflicts(self, s: Session, items: Sequence[Item], keys: list[tuple[str, str]], field: str
                         ) -> dict[tuple[str, str], db.Response]:
        existing = self._find_responses(s, keys)
        problems = []
        for i, (it, key) in enumerate(zip(items, keys)):
            row = existing.get(key)
            if row is not None and row.text_sha256 != db.text_digest(it.text):
                problems.append(Problem(("body", field, i, "response_id"),
                                        f"response '{key[1]}' of task '{key[0]}' is already stored with a "
                                        "different text", "conflict"))
        if problems:
            raise Conflict(problems)
        return existing

    def _pred_out(self, resp: db.Response, pred: db.Prediction, review_id: int | None) -> dict[str, Any]:
        assert self.scorer is not None
        return {
            "task_id": resp.task_id, "response_id": resp.response_id, "scores": pred.scores, "probs": pred.probs,
            "score_distribution": pred.score_distribution, "confidence": pred.confidence,
            "needs_review": pred.needs_review, "review_id": review_id, "gate_weights": pred.gate_weights,
            "model_id": str(self.scorer.model_id), "model_version": str(self.scorer.model_version),
            "prediction_id": pred.id,
        }

    # -- student scoring -------------------------------------------------------------------------------
    def score(self, items: Sequence[Item], field: str = "items") -> list[dict[str, Any]]:
        """Validate, score with the student, store, queue for review; one result per item, in order.

        Raises :class:`ValidationFailed` (nothing written) or :class:`Conflict` (nothing written).
        """
        if self.scorer is None:
            raise RuntimeError("no student model is loaded; start the server with --model")
        problems = self.validate(items, field)
        if problems:
            raise ValidationFailed(problems)
        keys = [(it.task_id, it.response_id if it.response_id is not None else uuid.uuid4().hex) for it in items]
        for attempt in range(3):
            try:
                return self._score_once(items, keys, field)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _score_once(self, items: Sequence[Item], keys: list[tuple[str, str]], field: str) -> list[dict[str, Any]]:
        assert self.scorer is not None
        mpk = self.model_pk()
        with self.Session() as s:
            existing = self._check_conflicts(s, items, keys, field)
            resp_pks = [r.id for r in existing.values()]
            stored = {p.response_pk: p for p in s.scalars(select(db.Prediction).where(
                db.Prediction.model_version_pk == mpk, db.Prediction.response_pk.in_(resp_pks)))} if resp_pks else {}
        todo = [i for i, k in enumerate(keys) if k not in existing or existing[k].id not in stored]
        preds: dict[int, Any] = {}
        if todo:
            with self._score_lock:
                out = self.scorer.predict([items[i].task_id for i in todo], [items[i].text for i in todo],
                                          batch_size=self.settings.score_batch_size,
                                          response_ids=[keys[i][1] for i in todo])
            preds = dict(zip(todo, out))
        results: list[dict[str, Any]] = []
        with self.Session.begin() as s:
            for i, (it, key) in enumerate(zip(items, keys)):
                resp = existing.get(key)
                if resp is not None:
                    resp = s.merge(resp, load=False)
                else:
                    resp = db.Response(task_id=key[0], response_id=key[1], text=it.text,
                                       text_sha256=db.text_digest(it.text))
                    s.add(resp)
                    s.flush()
                if i in preds:
                    p = preds[i]
                    conf = float(_pred_field(p, "confidence"))
                    row = db.Prediction(
                        response_pk=resp.id, model_version_pk=mpk, scores=_jsonable(_pred_field(p, "scores", {})),
                        probs=_jsonable(_pred_field(p, "probs", {})),
                        score_distribution=_jsonable(_pred_field(p, "score_distribution", {})),
                        confidence=conf, gate_weights=_jsonable(_pred_field(p, "gate_weights", [])),
                        needs_review=conf < self.settings.review_confidence)
                    s.add(row)
                    s.flush()
                else:
                    row = s.merge(stored[resp.id], load=False)
                review_id = None
                if row.needs_review:
                    review_id = self._enqueue(s, resp, "low_confidence", row.scores,
                                              {"confidence": row.confidence,
                                               "threshold": self.settings.review_confidence},
                                              prediction_id=row.id)
                results.append(self._pred_out(resp, row, review_id))
        return results

    @staticmethod
    def _enqueue(s: Session, resp: db.Response, reason: str, proposed: dict[str, Any], details: dict[str, Any],
                 prediction_id: int | None = None, agent_result_id: int | None = None) -> int:
        row = s.scalar(select(db.Review).where(db.Review.response_pk == resp.id, db.Review.reason == reason))
        if row is None:
            row = db.Review(response_pk=resp.id, reason=reason, status="pending", proposed_scores=proposed,
                            details=details, prediction_id=prediction_id, agent_result_id=agent_result_id)
            s.add(row)
            s.flush()
        return row.id

    # -- agents ------------------------------------------------------------------------------------------
    def agents_enabled(self) -> bool:
        return self.agent_runner is not None

    def prepare_agent_items(self, items: Sequence[Item], field: str = "items") -> list[tuple[str, str]]:
        """Validate an agents request and fix its keys; raises before anything is written."""
        problems = self.validate(items, field, need_student=False)
        if problems:
            raise ValidationFailed(problems)
        keys = [(it.task_id, it.response_id if it.response_id is not None else uuid.uuid4().hex) for it in items]
        with self.Session() as s:
            self._check_conflicts(s, items, keys, field)
        return keys

    def run_agents(self, job_id: str, items: Sequence[Item], keys: list[tuple[str, str]], mode: str,
                   with_student: bool, progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
        """Score with the agents (and the student), store results and evidence, queue disagreements.

        Resumable: items that already have a result for ``job_id`` are not run again.
        """
        if self.agent_runner is None:
            raise RuntimeError("the LLM path is not configured (set agents_backend)")
        student: dict[tuple[str, str], dict[str, Any]] = {}
        if with_student and self.scorer is not None:
            idx = [i for i, it in enumerate(items) if it.task_id in self.scorer.tasks]
            if idx:
                outs = self.score([Item(items[i].task_id, items[i].text, keys[i][1]) for i in idx])
                student = {keys[i]: o for i, o in zip(idx, outs)}
        # make sure every response row exists (the student may not have stored it)
        with self.Session.begin() as s:
            existing = self._check_conflicts(s, items, keys, "items")
            for it, key in zip(items, keys):
                if key not in existing:
                    s.add(db.Response(task_id=key[0], response_id=key[1], text=it.text,
                                      text_sha256=db.text_digest(it.text)))
        with self.Session() as s:
            done_keys = {(r.task_id, r.response_id) for r in s.scalars(
                select(db.Response).join(db.AgentResultRow).where(db.AgentResultRow.job_id == job_id))}
        groups: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            if keys[i] not in done_keys:
                groups.setdefault(it.task_id, []).append(i)
        n_done = len(done_keys)
        for task_id, idx in groups.items():
            task = self.tasks.get(task_id)
            records = [Record(response_id=keys[i][1], task_id=task_id, text=items[i].text) for i in idx]
            try:
                results = self.agent_runner(task, records, mode)
            except Exception as e:  # the LLM path failing is a per-item failure, never a lost job
                results = [{"task_id": task_id, "response_id": r.response_id, "status": "failed", "score": None,
                            "error": f"{type(e).__name__}: {e}", "mode": mode} for r in records]
            if len(results) != len(records):
                raise RuntimeError(f"agent runner returned {len(results)} results for {len(records)} responses")
            with self.Session.begin() as s:
                resp_rows = self._find_responses(s, [keys[i] for i in idx])
                for i, res in zip(idx, results):
                    self._store_agent_result(s, job_id, resp_rows[keys[i]], _as_dict(res), student.get(keys[i]))
            n_done += len(idx)
            if progress:
                progress(n_done, len(items))
        return self.agent_results_for_job(job_id)

    def _store_agent_result(self, s: Session, job_id: str, resp: db.Response, r: dict[str, Any],
                            student: dict[str, Any] | None) -> None:
        row = db.AgentResultRow(
            response_pk=resp.id, job_id=job_id, status=str(r.get("status", "failed")), score=r.get("score"),
            scores=_jsonable(r.get("scores") or {}), components=_jsonable(r.get("components") or {}),
            grounding_rate=r.get("grounding_rate"), rule_score=r.get("rule_score"), feedback=r.get("feedback"),
            raw_outputs=_jsonable(r.get("raw_outputs") or {}), error=r.get("error"), mode=str(r.get("mode", "multi")),
            backend=str(r.get("backend", "")), model=str(r.get("model", "")),
            tokens=_jsonable(r.get("tokens") or {}), latency_s=r.get("latency_s"), cost_usd=r.get("cost_usd"))
        s.add(row)
        s.flush()
        if student is None or row.status != "ok":
            return
        agent_scores = dict(row.scores or {})
        task = self.tasks.get(resp.task_id)
        if row.score is not None and task.primary_scale is not None:
            agent_scores.setdefault(task.primary_scale.id, row.score)
        diffs = {k: abs(int(v) - int(student["scores"][k])) for k, v in agent_scores.items()
                 if k in student["scores"] and v is not None}
        worst = max(diffs.values(), default=0)
        if worst >= self.settings.disagreement_threshold:
            self._enqueue(s, resp, "disagreement", student["scores"],
                          {"agent_scores": agent_scores, "student_scores": student["scores"], "differences": diffs,
                           "threshold": self.settings.disagreement_threshold},
                          prediction_id=student.get("prediction_id"), agent_result_id=row.id)

    def agent_results_for_job(self, job_id: str) -> list[dict[str, Any]]:
        with self.Session() as s:
            rows = s.execute(select(db.AgentResultRow, db.Response).join(db.Response)
                             .where(db.AgentResultRow.job_id == job_id).order_by(db.AgentResultRow.id)).all()
            out = []
            for ar, resp in rows:
                pred = s.scalar(select(db.Prediction).where(db.Prediction.response_pk == resp.id)
                                .order_by(db.Prediction.id.desc()))
                out.append({
                    "task_id": resp.task_id, "response_id": resp.response_id, "text": resp.text,
                    "status": ar.status, "score": ar.score, "scores": ar.scores, "components": ar.components,
                    "grounding_rate": ar.grounding_rate, "rule_score": ar.rule_score, "feedback": ar.feedback,
                    "error": ar.error, "mode": ar.mode, "backend": ar.backend, "model": ar.model,
                    "student_scores": pred.scores if pred is not None else None,
                    "review_ids": [r.id for r in resp.reviews],
                })
            return out

    # -- jobs -------------------------------------------------------------------------------------------
    def create_job(self, kind: str, total: int, params: dict[str, Any]) -> str:
        job_id = uuid.uuid4().hex
        with self.Session.begin() as s:
            s.add(db.Job(id=job_id, kind=kind, status="queued", total=total, done=0, failed=0, params=params))
        return job_id

    def update_job(self, job_id: str, **fields: Any) -> None:
        with self.Session.begin() as s:
            job = s.get(db.Job, job_id)
            if job is None:
                raise NotFound(f"job {job_id}")
            for k, v in fields.items():
                setattr(job, k, v)
            job.updated_at = db.utcnow()

    def job(self, job_id: str) -> dict[str, Any]:
        with self.Session() as s:
            job = s.get(db.Job, job_id)
            if job is None:
                raise NotFound(f"job '{job_id}' not found")
            return {"id": job.id, "kind": job.kind, "status": job.status, "total": job.total, "done": job.done,
                    "failed": job.failed, "error": job.error, "created_at": job.created_at.isoformat(),
                    "updated_at": job.updated_at.isoformat()}

    def unfinished_jobs(self) -> list[tuple[str, str, dict[str, Any]]]:
        with self.Session() as s:
            return [(j.id, j.kind, j.params) for j in s.scalars(
                select(db.Job).where(db.Job.status.in_(("queued", "running"))).order_by(db.Job.created_at))]

    # -- reviews ----------------------------------------------------------------------------------------
    def list_reviews(self, status: str | None = "pending", limit: int = 50, offset: int = 0) -> dict[str, Any]:
        with self.Session() as s:
            q = select(db.Review, db.Response).join(db.Response)
            cq = select(func.count(db.Review.id))
            if status:
                q = q.where(db.Review.status == status)
                cq = cq.where(db.Review.status == status)
            total = s.scalar(cq) or 0
            rows = s.execute(q.order_by(db.Review.id).limit(limit).offset(offset)).all()
            items = []
            for rv, resp in rows:
                evidence = None
                if rv.agent_result_id is not None:
                    ar = s.get(db.AgentResultRow, rv.agent_result_id)
                    evidence = ar.components if ar is not None else None
                items.append({
                    "id": rv.id, "task_id": resp.task_id, "response_id": resp.response_id, "text": resp.text,
                    "reason": rv.reason, "status": rv.status, "proposed_scores": rv.proposed_scores,
                    "final_scores": rv.final_scores, "details": rv.details, "evidence": evidence,
                    "created_at": rv.created_at.isoformat(),
                    "decisions": [{"action": d.action, "scores": d.scores, "rater_id": d.rater_id,
                                   "comment": d.comment, "created_at": d.created_at.isoformat()}
                                  for d in rv.decisions],
                })
            return {"total": total, "items": items}

    def decide(self, review_id: int, action: str, rater_id: str, comment: str = "",
               scores: dict[str, int] | None = None, source: str = "student") -> dict[str, Any]:
        """Accept the proposed scores (``source`` student or agents) or override them; returns the review.

        Override values are merged over the proposed scores and checked against the task's rubric.
        """
        with self.Session.begin() as s:
            rv = s.get(db.Review, review_id)
            if rv is None:
                raise NotFound(f"review {review_id} not found")
            resp = s.get(db.Response, rv.response_pk)
            task = self.tasks.get(resp.task_id)
            if action == "accept":
                if source == "agents":
                    final = dict(rv.details.get("agent_scores") or {})
                    if not final:
                        raise ValidationFailed([Problem(("body", "source"), "this review has no agent scores",
                                                        "no_agent_scores")])
                    final = {**rv.proposed_scores, **final}
                else:
                    final = dict(rv.proposed_scores)
            elif action == "override":
                if not scores:
                    raise ValidationFailed([Problem(("body", "scores"), "an override needs scores", "missing")])
                final = {**rv.proposed_scores, **scores}
            else:
                raise ValidationFailed([Problem(("body", "action"), f"unknown action '{action}'", "enum")])
            bad = task.check_labels({k: v for k, v in final.items()})
            if bad:
                raise ValidationFailed([Problem(("body", "scores"), "; ".join(bad), "invalid_scores")])
            s.add(db.ReviewDecision(review_id=rv.id, action=action, scores=final, rater_id=rater_id,
                                    comment=comment))
            rv.status = "accepted" if action == "accept" else "overridden"
            rv.final_scores = final
            rv.decided_at = db.utcnow()
            return {"id": rv.id, "status": rv.status, "final_scores": final, "task_id": resp.task_id,
                    "response_id": resp.response_id}

    def decided_records(self) -> list[Record]:
        """Human decisions as labeled records (latest decision per response wins)."""
        with self.Session() as s:
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
    """Write every human review decision as labeled records (``Record`` JSONL, the loader format)."""
    engine = db.make_engine(database_url)
    try:
        svc = ScoringService(ServeSettings(database_url=database_url), db.make_sessionmaker(engine))
        records = svc.decided_records()
        return write_records(records, out), len(records)
    finally:
        engine.dispose()

