"""What the server does, without HTTP: validate, score, persist, queue for review, record human decisions.

Kept apart from FastAPI so that the web page, the CSV batch jobs, the agents jobs and the tests all go
through the same code, and so that its guarantees are stated once:

* **validation before writing** - :meth:`ScoringService.validate` checks a whole batch (task ids, texts,
  duplicate keys) and nothing is written when any item fails;
* **idempotent, exactly-once storage** - a response is identified by ``(task_id, response_id)``; replaying
  a request (a client retrying after a timeout or a server crash) returns the stored result instead of
  adding a row, and the same key with a *different* text is a conflict, never an overwrite;
* **acknowledged means durable** - every write goes through :meth:`rubricate.serve.db.Database.write`,
  which raises :class:`~rubricate.serve.db.DatabaseUnavailable` (HTTP 503) unless the commit reached the
  database file the next start will open;
* **review queue** - a student result whose confidence is below ``review_confidence`` and a response on
  which the student and the agents differ by ``disagreement_threshold`` or more on any scale enter the
  queue (decisions: :mod:`rubricate.serve.reviews`).
"""

from __future__ import annotations

import csv
import io
import json
import threading
import uuid
from dataclasses import asdict, is_dataclass
from typing import Any, Callable, Iterable, Protocol, Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rubricate.data.records import Record
from rubricate.serve import db
from rubricate.serve.batcher import Batcher
from rubricate.serve.reviews import review_threshold, route_by_source
from rubricate.serve.settings import ServeSettings
from rubricate.serve.validation import Conflict, Item, NotFound, Problem, ValidationFailed, validate_items
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
BATCH_RESULT_COLUMNS = ["task_id", "response_id", "scores", "confidence", "needs_review", "model_version"]


def _pred_field(pred: Any, name: str, default: Any = None) -> Any:
    return pred.get(name, default) if isinstance(pred, dict) else getattr(pred, name, default)


def _as_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if is_dataclass(obj) and not isinstance(obj, type):
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


def find_responses(s: Session, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], db.Response]:
    """Stored responses by ``(task_id, response_id)``, queried in chunks (IN lists stay small)."""
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


def _conflicts(items: Sequence[Item], keys: list[tuple[str, str]], existing: dict[tuple[str, str], db.Response],
               field: str) -> list[Problem]:
    problems = []
    for i, (it, key) in enumerate(zip(items, keys)):
        row = existing.get(key)
        if row is not None and row.text_sha256 != db.text_digest(it.text):
            problems.append(Problem(("body", field, i, "response_id"),
                                    f"response '{key[1]}' of task '{key[0]}' is already stored with a "
                                    "different text", "conflict"))
    return problems


class ScoringService:
    """The server's behaviour over one database, one (optional) student and an (optional) agent runner."""

    def __init__(self, settings: ServeSettings, database: db.Database, scorer: ScorerLike | None = None,
                 tasks: TaskRegistry | None = None, agent_runner: AgentRunner | None = None) -> None:
        self.settings = settings
        self.db = database
        self.scorer = scorer
        self.agent_runner = agent_runner
        if tasks is None:
            tasks = scorer.tasks if scorer is not None else TaskRegistry()
        self.tasks = tasks
        self._model_pk: int | None = None
        self._score_lock = threading.Lock()  # one predict() at a time: the model already uses every core
        # concurrent /v1/score requests share one forward pass (serve/batcher.py); 0 ms: each runs alone
        self._batcher: Batcher[Any, Any] | None = (
            Batcher(self._score_gathered, settings.max_wait_ms, settings.max_batch) if settings.max_wait_ms > 0
            else None)

    # -- what the server offers -----------------------------------------------------------------------
    def task_list(self) -> list[dict[str, Any]]:
        """Every task with its question and rubric, and whether the served student scores it."""
        student = set(self.scorer.tasks.ids) if self.scorer is not None else set()
        return [{**t.model_dump(mode="json", exclude={"metadata"}), "student": t.id in student} for t in self.tasks]

    def health(self) -> dict[str, Any]:
        """Liveness and readiness: database (answers, takes durable writes), model, agents."""
        database = self.db.health()
        sc = self.scorer
        return {"status": "ok" if database["ok"] else "unhealthy",
                "model": None if sc is None else {"model_id": sc.model_id, "model_version": sc.model_version,
                                                  "backend": str(getattr(sc, "backend", ""))},
                "agents": self.agents_enabled(), "database": database, "database_revision": database["revision"],
                "auth": "bearer" if not self.settings.local_only else "local-only"}

    # -- model version ------------------------------------------------------------------------------------
    def model_pk(self) -> int:
        """Primary key of the served model version (created on first use, safe against concurrent starts)."""
        if self._model_pk is not None:
            return self._model_pk
        if self.scorer is None:
            raise RuntimeError("no student model is loaded")
        mid, ver = str(self.scorer.model_id), str(self.scorer.model_version)
        where = (db.ModelVersion.model_id == mid, db.ModelVersion.model_version == ver)
        for _ in range(3):
            with self.db.read() as s:
                row = s.scalar(select(db.ModelVersion).where(*where))
            if row is not None:
                self._model_pk = row.id
                return row.id
            try:
                with self.db.write() as s:
                    s.add(db.ModelVersion(model_id=mid, model_version=ver, backend=str(getattr(self.scorer,
                                                                                               "backend", ""))))
            except IntegrityError:
                continue  # a concurrent start registered it: read it back
        raise RuntimeError("could not register the model version")  # pragma: no cover

    # -- validation -------------------------------------------------------------------------------------
    def validate(self, items: Sequence[Item], field: str = "items", need_student: bool = True) -> list[Problem]:
        """Every problem of a batch (see :func:`rubricate.serve.validation.validate_items`)."""
        student = self.scorer.tasks if need_student and self.scorer is not None else None
        return validate_items(items, self.tasks, self.settings.max_text_chars, field=field, student_tasks=student)

    @staticmethod
    def keys_for(items: Sequence[Item]) -> list[tuple[str, str]]:
        """``(task_id, response_id)`` per item; a missing response id is generated."""
        return [(it.task_id, it.response_id if it.response_id is not None else uuid.uuid4().hex) for it in items]

    def find_conflicts(self, items: Sequence[Item], keys: list[tuple[str, str]], field: str = "items"
                       ) -> list[Problem]:
        """Items whose key is already stored with a different text (a 409, never an overwrite)."""
        with self.db.read() as s:
            return _conflicts(items, keys, find_responses(s, keys), field)

    def _existing(self, s: Session, items: Sequence[Item], keys: list[tuple[str, str]], field: str
                  ) -> dict[tuple[str, str], db.Response]:
        existing = find_responses(s, keys)
        problems = _conflicts(items, keys, existing, field)
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

        Raises :class:`ValidationFailed` or :class:`Conflict` (nothing written), or
        :class:`~rubricate.serve.db.DatabaseUnavailable` when the rows could not be stored durably.
        """
        if self.scorer is None:
            raise RuntimeError("no student model is loaded; start the server with --model")
        problems = self.validate(items, field)
        if problems:
            raise ValidationFailed(problems)
        keys = self.keys_for(items)
        for attempt in range(3):
            try:
                return self._score_once(items, keys, field)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _predict_missing(self, items: Sequence[Item], keys: list[tuple[str, str]], field: str
                         ) -> tuple[dict[tuple[str, str], db.Response], dict[int, db.Prediction], dict[int, Any]]:
        """Stored responses, their stored predictions, and new predictions for the items that lack one."""
        assert self.scorer is not None
        mpk = self.model_pk()
        with self.db.read() as s:
            existing = self._existing(s, items, keys, field)
            resp_pks = [r.id for r in existing.values()]
            stored = {p.response_pk: p for p in s.scalars(select(db.Prediction).where(
                db.Prediction.model_version_pk == mpk, db.Prediction.response_pk.in_(resp_pks)))} if resp_pks else {}
        todo = [i for i, k in enumerate(keys) if k not in existing or existing[k].id not in stored]
        if not todo:
            return existing, stored, {}
        from rubricate.batch import InputRow

        rows = [InputRow(line=i + 1, task_id=items[i].task_id, text=items[i].text, response_id=keys[i][1])
                for i in todo]
        scored = self._batcher.submit(rows) if self._batcher is not None else self._score_gathered(rows)
        out = [r for r in scored if isinstance(r, dict)]
        bad = [r for r in scored if not isinstance(r, dict)]
        route_by_source(out, self.settings, self.scorer)  # zero-shot items: the stricter review threshold
        if bad:  # validate() applies the same rules first; a difference is a bug, never a silent skip
            raise ValidationFailed([Problem(("body", field, r.line - 1, f), m, "invalid") for r, f, m in bad])
        return existing, stored, dict(zip(todo, out))

    def _score_gathered(self, rows: list[Any]) -> list[Any]:
        """One forward over ``rows`` (one request's, or several gathered by the batcher): per row its result
        dict, or ``(row, field, message)`` when the row is a problem."""
        from rubricate.batch import score_rows  # the one scoring function (predict uses it too)

        assert self.scorer is not None
        with self._score_lock:
            out, bad = score_rows(self.scorer, rows, batch_size=self.settings.score_batch_size,
                                  review_confidence=self.settings.review_confidence)
        problems = {id(b[0]): b for b in bad}
        results = iter(out)
        return [problems[id(r)] if id(r) in problems else next(results) for r in rows]

    def _new_prediction(self, s: Session, resp: db.Response, p: Any) -> db.Prediction:
        conf = float(_pred_field(p, "confidence"))
        row = db.Prediction(
            response_pk=resp.id, model_version_pk=self.model_pk(), scores=_jsonable(_pred_field(p, "scores", {})),
            probs=_jsonable(_pred_field(p, "probs", {})),
            score_distribution=_jsonable(_pred_field(p, "score_distribution", {})),
            confidence=conf, gate_weights=_jsonable(_pred_field(p, "gate_weights", [])),
            needs_review=bool(_pred_field(p, "needs_review")))
        s.add(row)
        s.flush()
        return row

    def _score_once(self, items: Sequence[Item], keys: list[tuple[str, str]], field: str) -> list[dict[str, Any]]:
        existing, stored, preds = self._predict_missing(items, keys, field)
        results: list[dict[str, Any]] = []
        with self.db.write() as s:
            for i, (it, key) in enumerate(zip(items, keys)):
                resp = existing.get(key)
                if resp is not None:
                    resp = s.merge(resp, load=False)
                else:
                    resp = db.Response(task_id=key[0], response_id=key[1], text=it.text,
                                       text_sha256=db.text_digest(it.text))
                    s.add(resp)
                    s.flush()
                row = self._new_prediction(s, resp, preds[i]) if i in preds else s.merge(stored[resp.id], load=False)
                review_id = None
                if row.needs_review:
                    review_id = self._enqueue(s, resp, "low_confidence", row.scores,
                                              {"confidence": row.confidence,
                                               "threshold": review_threshold(self.settings, self.scorer,
                                                                             resp.task_id)},
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
        keys = self.keys_for(items)
        conflicts = self.find_conflicts(items, keys, field)
        if conflicts:
            raise Conflict(conflicts)
        return keys

    def _student_for_agents(self, items: Sequence[Item], keys: list[tuple[str, str]]
                            ) -> dict[tuple[str, str], dict[str, Any]]:
        if self.scorer is None:
            return {}
        idx = [i for i, it in enumerate(items) if it.task_id in self.scorer.tasks]
        if not idx:
            return {}
        outs = self.score([Item(items[i].task_id, items[i].text, keys[i][1]) for i in idx])
        return {keys[i]: o for i, o in zip(idx, outs)}

    def _agent_groups(self, job_id: str, items: Sequence[Item], keys: list[tuple[str, str]]
                      ) -> tuple[dict[str, list[int]], int]:
        """Store every response row (the student may not have), then group the items still to run by task."""
        with self.db.write() as s:
            existing = self._existing(s, items, keys, "items")
            for it, key in zip(items, keys):
                if key not in existing:
                    s.add(db.Response(task_id=key[0], response_id=key[1], text=it.text,
                                      text_sha256=db.text_digest(it.text)))
        with self.db.read() as s:
            done_keys = {(r.task_id, r.response_id) for r in s.scalars(
                select(db.Response).join(db.AgentResultRow).where(db.AgentResultRow.job_id == job_id))}
        groups: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            if keys[i] not in done_keys:
                groups.setdefault(it.task_id, []).append(i)
        return groups, len(done_keys)

    def run_agents(self, job_id: str, items: Sequence[Item], keys: list[tuple[str, str]], mode: str,
                   with_student: bool, progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
        """Score with the agents (and the student), store results and evidence, queue disagreements.

        Resumable: items that already have a result for ``job_id`` are not run again.
        """
        if self.agent_runner is None:
            raise RuntimeError("the LLM path is not configured (set agents_backend)")
        student = self._student_for_agents(items, keys) if with_student else {}
        groups, n_done = self._agent_groups(job_id, items, keys)
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
            with self.db.write() as s:
                resp_rows = find_responses(s, [keys[i] for i in idx])
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
        with self.db.read() as s:
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
        with self.db.write() as s:
            s.add(db.Job(id=job_id, kind=kind, status="queued", total=total, done=0, failed=0, params=params))
        return job_id

    def update_job(self, job_id: str, **fields: Any) -> None:
        with self.db.write() as s:
            job = s.get(db.Job, job_id)
            if job is None:
                raise NotFound(f"job {job_id}")
            for k, v in fields.items():
                setattr(job, k, v)
            job.updated_at = db.utcnow()

    def job(self, job_id: str) -> dict[str, Any]:
        """A job's status; a batch job also lists its upload's problem rows and, when done, its results URL."""
        with self.db.read() as s:
            job = s.get(db.Job, job_id)
            if job is None:
                raise NotFound(f"job '{job_id}' not found")
            out = {"id": job.id, "kind": job.kind, "status": job.status, "total": job.total, "done": job.done,
                   "failed": job.failed, "error": job.error, "created_at": job.created_at.isoformat(),
                   "updated_at": job.updated_at.isoformat(), "status_url": f"/v1/jobs/{job_id}"}
            if job.kind == "batch":
                out["problems"] = job.params.get("problems", [])
                if job.status == "done":
                    out["results_url"] = f"/v1/jobs/{job_id}/results.csv"
        if out["kind"] == "agents" and out["status"] == "done":
            out["results"] = self.agent_results_for_job(job_id)
        return out

    def unfinished_jobs(self) -> list[tuple[str, str, dict[str, Any]]]:
        with self.db.read() as s:
            return [(j.id, j.kind, j.params) for j in s.scalars(
                select(db.Job).where(db.Job.status.in_(("queued", "running"))).order_by(db.Job.created_at))]

    def batch_results_csv(self, job_id: str) -> str:
        """The scored rows of a batch job as CSV (latest prediction per response), in upload order."""
        with self.db.read() as s:
            job = s.get(db.Job, job_id)
            if job is None or job.kind != "batch":
                raise NotFound(f"batch job '{job_id}' not found")
            keys = [(d["task_id"], d["response_id"]) for d in job.params["items"]]
            rows = find_responses(s, keys)
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(BATCH_RESULT_COLUMNS)
            for k in keys:
                resp = rows.get(k)
                pred = None if resp is None else s.scalar(
                    select(db.Prediction).where(db.Prediction.response_pk == resp.id).order_by(db.Prediction.id.desc()))
                if pred is not None:
                    w.writerow([k[0], k[1], json.dumps(pred.scores), f"{pred.confidence:.4f}", pred.needs_review,
                                pred.model.model_version])
        return buf.getvalue()
