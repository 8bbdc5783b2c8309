"""What the metrics read: predictions from any scorer, and the checks that match them to gold records.

:class:`Predicted` is the one form every scorer's output is adapted to (:func:`as_predicted`,
:func:`read_predictions`). The matching checks (:func:`index_predictions`, :func:`index_gold`,
:func:`require_predicted`, ...) are shared by :func:`~rubricate.metrics.evaluate` and
:func:`~rubricate.metrics.compare_systems`, so both reject the same inputs with the same messages. ``who``
names the scorer in a comparison (``"A: duplicate prediction ..."``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rubricate.data.records import Record
from rubricate.errors import InputError
from rubricate.tasks import Task, TaskRegistry

Key = tuple[str, str]


@dataclass
class Predicted:
    """What the report needs from any scorer: decoded scores and, optionally, per-label probabilities.

    ``scores`` maps scale ids and criterion ids to integers (the student's ``Prediction.scores``, the
    agents' ``AgentResult.scores``); ``probs`` maps label names (``"E1"``, ``"score>=2"``) to probabilities.
    A key missing from ``scores`` (e.g. a failed agent call) is a missing prediction, never a 0.
    """

    task_id: str
    response_id: str
    scores: dict[str, int] = field(default_factory=dict)
    probs: dict[str, float] | None = None
    origin: str = ""  # where the row came from (file:line), for error messages (not the score source)

    @property
    def key(self) -> Key:
        return (self.task_id, self.response_id)


def as_predicted(obj: Any) -> Predicted:
    """Adapt a dict, a student ``Prediction`` or an agent ``AgentResult`` to :class:`Predicted`.

    An agent result with ``status == "failed"`` has no scores: it becomes a prediction without scores.
    A plain ``score`` is read as ``{"score": score}`` only when there is no ``scores`` field at all.
    """
    if isinstance(obj, Predicted):
        return obj
    get = obj.get if isinstance(obj, Mapping) else (lambda k, d=None: getattr(obj, k, d))
    for key in ("task_id", "response_id"):
        if get(key) in (None, ""):
            raise InputError(f"a prediction has no {key}: {str(obj)[:200]}", column=key)
    raw = get("scores")
    if raw is None and get("score") is not None:
        raw = {"score": get("score")}
    scores = {} if get("status") == "failed" else dict(raw or {})
    probs = get("probs")
    return Predicted(
        task_id=str(get("task_id")),
        response_id=str(get("response_id")),
        scores={k: int(v) for k, v in scores.items() if v is not None},
        probs=dict(probs) if probs else None,
        origin=str(get("origin", "") or ""),
    )


def rater2_as_predictions(records: Sequence[Record]) -> tuple[list[Record], list[Predicted]]:
    """Human-human mode: rater 2 in the machine's seat, rater 1 as gold.

    Returns the gold records that have a second rater, with their labels restricted to the keys rater 2
    scored (a criterion only rater 1 judged has nothing to be compared with), and rater 2 as predictions.
    """
    gold, preds = [], []
    for r in records:
        if not r.rater2:
            continue
        gold.append(replace(r, labels={k: v for k, v in r.labels.items() if k in r.rater2}))
        preds.append(Predicted(r.task_id, r.response_id, dict(r.rater2), None, "rater2"))
    return gold, preds


# --------------------------------------------------------------------------------------------------------
# Matching checks (shared by evaluate and compare_systems)
# --------------------------------------------------------------------------------------------------------
def _prefix(who: str) -> str:
    return f"{who}: " if who else ""


def index_predictions(predictions: Iterable[Any], tasks: TaskRegistry, who: str = "") -> dict[Key, Predicted]:
    """Predictions by ``(task_id, response_id)``; a duplicate or an unknown task is an :class:`InputError`."""
    by_key: dict[Key, Predicted] = {}
    for p in map(as_predicted, predictions):
        if p.key in by_key:
            raise InputError(
                f"{_prefix(who)}duplicate prediction for task '{p.task_id}', response '{p.response_id}'",
                file=p.origin or None,
                column="response_id",
            )
        if p.task_id not in tasks:
            raise InputError(
                f"{_prefix(who)}prediction for unknown task '{p.task_id}' (known: {tasks.ids[:20]})",
                file=p.origin or None,
                column="task_id",
            )
        by_key[p.key] = p
    return by_key


def index_gold(gold: Iterable[Record], only_tasks: set[str] | None = None) -> dict[str, list[Record]]:
    """Gold records by task, in first-seen order (of ``only_tasks`` when given); duplicates are errors."""
    by_task: dict[str, list[Record]] = {}
    seen: set[Key] = set()
    for r in gold:
        if r.key in seen:
            raise InputError(
                f"duplicate gold record for task '{r.task_id}', response '{r.response_id}'",
                column="response_id",
            )
        seen.add(r.key)
        if only_tasks is None or r.task_id in only_tasks:
            by_task.setdefault(r.task_id, []).append(r)
    return by_task


def check_gold_labels(task: Task, records: Iterable[Record]) -> None:
    """Every gold label must be a valid value of the task's rubric."""
    for r in records:
        problems = task.check_labels(r.labels)
        if problems:
            raise InputError(
                f"gold labels of response '{r.response_id}': {'; '.join(problems)}", column="labels"
            )


def check_predicted_scores(task: Task, predictions: Iterable[Predicted], who: str = "") -> None:
    """Every predicted score must be a valid value of the task's rubric (e.g. inside the scale)."""
    for p in predictions:
        problems = task.check_labels(p.scores)
        if problems:
            raise InputError(
                f"{_prefix(who)}prediction for response '{p.response_id}': {'; '.join(problems)}",
                file=p.origin or None,
                column="scores",
            )


def unpredicted_error(task_id: str, response_ids: Sequence[str], who: str = "", hint: str = "") -> InputError:
    """The error for gold responses without a prediction (``hint``: how to leave them out instead)."""
    return InputError(
        f"{_prefix(who)}task '{task_id}': {len(response_ids)} gold responses have no prediction, e.g. "
        f"{list(response_ids)[:5]}{hint}"
    )


def missing_score_error(
    task_id: str, scale_id: str, response_ids: Sequence[str], who: str = "", hint: str = ""
) -> InputError:
    """The error for predictions that lack a score for a scale the gold record has."""
    return InputError(
        f"{_prefix(who)}task '{task_id}': {len(response_ids)} predictions have no '{scale_id}' score, "
        f"e.g. responses {list(response_ids)[:5]}{hint}",
        column="scores",
    )


# --------------------------------------------------------------------------------------------------------
# Predictions files
# --------------------------------------------------------------------------------------------------------
def _int_score(v: object, path: Path, line: int, column: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise InputError(f"score must be an integer, got {v!r}", file=path, line=line, column=column)
    try:
        f = float(v)
    except ValueError:
        raise InputError(
            f"score must be an integer, got {v!r}", file=path, line=line, column=column
        ) from None
    if not math.isfinite(f) or f != int(f):
        raise InputError(f"score must be an integer, got {v!r}", file=path, line=line, column=column)
    return int(f)


def _jsonl_prediction(d: dict[str, Any], path: Path, line: int) -> Predicted:
    """One JSONL row: ``scores`` (or a lone ``score``), ``probs``; a failed agent row has no scores."""
    for col in ("task_id", "response_id"):
        if d.get(col) in (None, ""):
            raise InputError("missing field", file=path, line=line, column=col)
    scores_raw = d.get("scores")
    if scores_raw is None and "score" in d:
        scores_raw = {"score": d["score"]}
    if scores_raw is None:
        scores_raw = {}
    if not isinstance(scores_raw, dict):
        raise InputError("'scores' must be an object", file=path, line=line, column="scores")
    scores = (
        {}
        if d.get("status") == "failed"
        else {
            str(k): _int_score(v, path, line, f"scores.{k}") for k, v in scores_raw.items() if v is not None
        }
    )
    probs_raw = d.get("probs")
    probs = None
    if probs_raw:
        if not isinstance(probs_raw, dict):
            raise InputError("'probs' must be an object", file=path, line=line, column="probs")
        probs = {}
        for k, v in probs_raw.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise InputError(
                    f"probability must be a number in [0, 1], got {v!r}",
                    file=path,
                    line=line,
                    column=f"probs.{k}",
                )
            probs[str(k)] = float(v)
    return Predicted(str(d["task_id"]), str(d["response_id"]), scores, probs, f"{path}:{line}")


def _blank(v: object) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))


def _flat_prediction(
    d: dict[str, Any], header: Sequence[str], tasks: TaskRegistry | None, path: Path, line: int
) -> Predicted:
    """One CSV/TSV/Parquet row: an integer column per label key; an empty cell is a missing score."""
    tid = str(d["task_id"]).strip()
    keys = [c for c in header if c not in ("task_id", "response_id")]
    if tasks is not None and tid in tasks:
        keys = [c for c in keys if c in tasks.get(tid).label_keys]
    scores = {
        c: _int_score(d[c].strip() if isinstance(d[c], str) else d[c], path, line, c)
        for c in keys
        if not _blank(d[c])
    }
    return Predicted(tid, str(d["response_id"]).strip(), scores, None, f"{path}:{line}")


def read_predictions(path: str | Path, tasks: TaskRegistry | None = None) -> list[Predicted]:
    """Read a predictions file (any :mod:`rubricate.data.tables` format): JSONL rows or a flat table.

    * JSONL (``.jsonl``/``.ndjson``/``.json``): ``{task_id, response_id, scores: {key: int}, probs: {label:
      p}}`` - what ``rubricate predict`` and the agents write. Agent rows with ``status: "failed"`` (or a
      ``null`` score) are kept as predictions without scores: they count as missing, never as 0. A row with
      only ``score`` (no ``scores``) is read as ``{"score": score}``. Other fields are ignored.
    * CSV/TSV/Parquet: columns ``task_id, response_id`` plus one integer column per scale or criterion id.
      With a task registry, only the row's task's label keys are read (other columns such as ``text`` are
      ignored); without one, every other column is read as a score. An empty cell is a missing score.

    Errors name the file, (physical) line and field; a duplicate ``(task_id, response_id)`` is an error.
    """
    from rubricate.data.tables import detect_format, require_columns, strict_rows

    path = Path(path)
    header, rows = strict_rows(path)
    flat = detect_format(path) != "jsonl"
    if flat:
        require_columns(path, header or [], ["task_id", "response_id"])
    out: list[Predicted] = []
    seen: dict[Key, int] = {}
    for line, d in rows:
        if flat and all(_blank(v) for v in d.values()):
            continue
        p = _flat_prediction(d, header or [], tasks, path, line) if flat else _jsonl_prediction(d, path, line)
        if tasks is not None and p.task_id not in tasks:
            raise InputError(
                f"unknown task '{p.task_id}' (known: {tasks.ids[:20]})",
                file=path,
                line=line,
                column="task_id",
            )
        if p.key in seen:
            raise InputError(
                f"duplicate prediction (also on line {seen[p.key]})",
                file=path,
                line=line,
                column="response_id",
            )
        seen[p.key] = line
        out.append(p)
    return out
