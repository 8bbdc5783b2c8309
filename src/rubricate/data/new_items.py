"""Datasets of many items -> task files + records: SemEval-2013 2-way, Mohler, SAF; folds by question.

These corpora hold a few dozen answers to each of many questions, which is what training and evaluating
a scorer of *unseen* questions needs (issue 19). Each converter returns ``(tasks, records)``: one
:class:`~rubricate.tasks.Task` per question (question text, reference answers, a rubric) and the
:class:`~rubricate.data.records.Record` of every answer. :func:`write_task_files` saves the tasks as YAML
task files. Errors are :class:`~rubricate.errors.InputError` naming the file, the line and the XML
element/attribute or CSV column; nothing is skipped silently.

Label choices (also in ``docs/task-files.md``):

* **SemEval-2013 2-way** (Beetle + SciEntsBank): one binary criterion ``correct`` (``accuracy="correct"``
  -> 1, ``"incorrect"`` -> 0); task ids ``semeval-beetle-<qid>`` / ``semeval-scientsbank-<qid>``.
* **Mohler**: an ordinal ``score`` on half points, ``0..10`` = ``score_avg`` x ``points_per_unit`` (2),
  rounded half *up* (``score_avg`` is a mean of two graders and has quarter and eighth points; Python's
  ``round`` would round halves to even). The graders' raw scores stay in ``metadata``.
* **SAF** (v2.0, English): an ordinal ``score`` 0-2 from the verification label (Incorrect / Partially
  correct / Correct); the points (question-dependent, 0-3.5) and the tutor's feedback stay in ``metadata``.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence
from xml.parsers import expat

import yaml

from rubricate.data.records import Record
from rubricate.data.tables import require_columns, strict_rows
from rubricate.data.text import text_problem
from rubricate.errors import InputError, TaskFileError
from rubricate.tasks import _ID as TASK_ID_PATTERN
from rubricate.tasks import Task, task_from_dict

Converted = tuple[list[Task], list[Record]]
_TASK_ID = re.compile(TASK_ID_PATTERN)  # the id rule of task files, checked early for a message with a line


# --- XML with line numbers ------------------------------------------------------------------------------
@dataclass
class _XmlFile:
    """A parsed XML file that remembers each element's line, so errors can point at it."""

    path: Path
    root: ET.Element
    lines: dict[ET.Element, int]

    def error(self, message: str, element: ET.Element | None, field: str) -> InputError:
        line = self.lines.get(element) if element is not None else None
        return InputError(message, file=self.path, line=line, column=field)

    def attr(self, element: ET.Element, name: str) -> str:
        value = (element.get(name) or "").strip()
        if not value:
            raise self.error(f"missing attribute '{name}'", element, f"{element.tag}@{name}")
        return value

    def child_text(self, element: ET.Element, tag: str) -> str:
        """The text of the required child ``tag`` (must be a usable text, see ``text_problem``)."""
        child = element.find(tag)
        if child is None:
            raise self.error(f"missing element <{tag}>", element, tag)
        return self.text(child, tag)

    def text(self, element: ET.Element, field: str) -> str:
        value = "".join(element.itertext())
        bad = text_problem(value, f"<{element.tag}> text")
        if bad:
            raise self.error(bad, element, field)
        return value.strip()


def parse_xml(path: str | Path) -> _XmlFile:
    """Parse with expat into an ElementTree, keeping each element's start line (ElementTree drops it)."""
    path = Path(path)
    builder = ET.TreeBuilder()
    lines: dict[ET.Element, int] = {}
    parser = expat.ParserCreate()

    def start(tag: str, attrs: dict[str, str]) -> None:
        lines[builder.start(tag, attrs)] = parser.CurrentLineNumber

    parser.StartElementHandler = start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        with path.open("rb") as f:
            parser.ParseFile(f)
    except OSError as e:
        raise InputError(e.strerror or "cannot read", file=path) from None
    except expat.ExpatError as e:
        raise InputError(f"malformed XML: {expat.ErrorString(e.code)} (offset {e.offset})",
                         file=path, line=e.lineno) from None
    return _XmlFile(path, builder.close(), lines)


def _xml_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError("folder not found", file=folder)
    files = sorted(folder.glob("*.xml"))
    if not files:
        raise InputError("no .xml files in the folder", file=folder)
    return files


def _question(xf: _XmlFile, task_id: Callable[[str], str]) -> tuple[ET.Element, str, str]:
    """The root ``<question>``, its id and the task id made from it (checked against the task id rule)."""
    q = xf.root
    if q.tag != "question":
        raise xf.error(f"root element is <{q.tag}>, expected <question>", q, q.tag)
    qid = xf.attr(q, "id")
    tid = task_id(qid)
    if not _TASK_ID.match(tid):
        raise xf.error(f"question id '{qid}' cannot be a task id (letters, digits, '_', '.', '-')", q, "question@id")
    return q, qid, tid


def _make_task(data: dict[str, Any], source: Path) -> Task:
    try:
        return task_from_dict(data, source)
    except TaskFileError as e:  # a converter bug or an odd file: still name the file
        raise InputError("; ".join(e.problems), file=source) from None


_Question = tuple[Task, list[tuple[Record, "int | None"]]]


def _convert_xml_files(items: Iterable[tuple[Path, Callable[[_XmlFile], _Question]]]) -> Converted:
    """Parse each question file with its converter; refuse a task id or response id seen before."""
    tasks: list[Task] = []
    records: list[Record] = []
    task_files: dict[str, Path] = {}
    seen: dict[tuple[str, str], tuple[Path, int | None]] = {}
    for path, convert in items:
        xf = parse_xml(path)
        task, recs = convert(xf)
        if task.id in task_files:
            raise xf.error(f"question '{task.id}' already defined in {task_files[task.id]}", xf.root, "question@id")
        task_files[task.id] = path
        tasks.append(task)
        for rec, line in recs:
            if rec.key in seen:
                first = seen[rec.key]
                raise InputError(f"duplicate response id '{rec.response_id}' for task '{rec.task_id}' (first seen "
                                 f"in {first[0]}, line {first[1]})", file=path, line=line, column="studentAnswer@id")
            seen[rec.key] = (path, line)
            records.append(rec)
    return tasks, records


# --- SemEval-2013 task 7, 2-way ----------------------------------------------------------------------------
SEMEVAL_CORPORA = ("beetle", "sciEntsBank")
#: The label key of the SemEval tasks: one binary analytic criterion.
SEMEVAL_KEY = "correct"
SEMEVAL_LABELS = {"correct": 1, "incorrect": 0}
_SEMEVAL_CRITERION = ("The answer is correct: it states what a reference answer states "
                      "(SemEval-2013 task 7, 2-way label).")


def semeval_task_id(corpus: str, question_id: str) -> str:
    return f"semeval-{corpus.lower()}-{question_id}"


def load_semeval_2way(root: str | Path, corpora: Sequence[str] = SEMEVAL_CORPORA) -> Converted:
    """``.../semeval2013-task7-2way/training/2way`` -> one task per question XML, one record per answer.

    ``corpora`` are the sub-folders read (Beetle and SciEntsBank). Beetle's reference answers keep their
    ``category`` (BEST/GOOD/MINIMAL/KEYWORD); a record's ``metadata`` keeps Beetle's ``answerMatch`` (the
    reference a correct answer matches) and ``count``.
    """
    root = Path(root)
    return _convert_xml_files((path, partial(_semeval_question, corpus=corpus))
                              for corpus in corpora for path in _xml_files(root / corpus))


def _semeval_question(xf: _XmlFile, corpus: str) -> _Question:
    q, qid, tid = _question(xf, partial(semeval_task_id, corpus))
    refs = [{"text": xf.text(r, "referenceAnswer"), "category": r.get("category"), "id": r.get("id")}
            for r in q.iterfind("referenceAnswers/referenceAnswer")]
    if not refs:
        raise xf.error("no <referenceAnswer>", q, "referenceAnswers")
    meta = {"source": "SemEval-2013 task 7 (2-way)", "corpus": corpus, "question_id": qid, "file": xf.path.name}
    meta |= {k: q.get(k) for k in ("module", "qtype", "stype") if q.get(k)}
    task = _make_task({
        "id": tid, "title": f"SemEval {corpus} {qid}", "question": xf.child_text(q, "questionText"),
        "subject": meta.get("module"), "rubric": {"criteria": [{"id": SEMEVAL_KEY, "description": _SEMEVAL_CRITERION}]},
        "reference_answers": refs, "metadata": meta,
    }, xf.path)
    out = []
    for sa in q.iterfind("studentAnswers/studentAnswer"):
        accuracy = xf.attr(sa, "accuracy")
        if accuracy not in SEMEVAL_LABELS:
            raise xf.error(f"accuracy '{accuracy}' is not one of {sorted(SEMEVAL_LABELS)}", sa,
                           "studentAnswer@accuracy")
        extra: dict[str, Any] = {"answerMatch": sa.get("answerMatch")} if sa.get("answerMatch") else {}
        if sa.get("count") is not None:
            if not sa.get("count", "").strip().isdigit():
                raise xf.error(f"count '{sa.get('count')}' is not a whole number", sa, "studentAnswer@count")
            extra["count"] = int(sa.get("count", ""))
        rec = Record(response_id=xf.attr(sa, "id"), task_id=tid, text=xf.text(sa, "studentAnswer"),
                     labels={SEMEVAL_KEY: SEMEVAL_LABELS[accuracy]}, metadata={"corpus": corpus, **extra})
        out.append((rec, xf.lines.get(sa)))
    if not out:
        raise xf.error("no <studentAnswer>", q, "studentAnswers")
    return task, out


# --- Mohler (2011) ------------------------------------------------------------------------------------------
MOHLER_COLUMNS = ("id", "question", "desired_answer", "student_answer", "score_me", "score_other", "score_avg")
MOHLER_MAX = 5
#: ``score_avg`` must equal ``(score_me + score_other) / 2`` within this (the file has eighths at most).
MOHLER_AVG_TOLERANCE = 1e-6


def mohler_task_id(question_id: str) -> str:
    return f"mohler-{question_id}"


def round_half_up(x: float) -> int:
    """``floor(x + 0.5)``: 8.5 -> 9 (Python's ``round`` gives 8, halves to even)."""
    return math.floor(x + 0.5)


def load_mohler(path: str | Path, points_per_unit: int = 2) -> Converted:
    """``mohler_dataset_edited.csv`` -> tasks ``mohler-<id>`` (ordinal ``score`` 0..5*points_per_unit).

    ``score`` = ``round_half_up(score_avg * points_per_unit)``: with the default 2, half points survive
    (the README's agreement is computed on this scale). The file has no answer ids: a response id is
    ``<question id>.<k>``, ``k`` counting that question's rows from 1 in file order. ``rater2`` is empty
    (the label is the graders' mean); ``metadata`` keeps ``score_me``, ``score_other``, ``score_avg`` and
    the physical ``line``.
    """
    path = Path(path)
    if points_per_unit < 1:
        raise ValueError(f"points_per_unit must be >= 1, got {points_per_unit}")
    header, rows = strict_rows(path, "csv")
    require_columns(path, header, MOHLER_COLUMNS, 1)
    questions: dict[str, dict[str, Any]] = {}
    counts: Counter[str] = Counter()
    records: list[Record] = []
    for line, row in rows:
        qid = str(row["id"]).strip()
        if not _TASK_ID.match(mohler_task_id(qid)) or not qid:
            raise InputError(f"question id '{qid}' cannot be part of a task id", file=path, line=line, column="id")
        first = questions.setdefault(qid, {"question": row["question"], "desired_answer": row["desired_answer"],
                                           "line": line})
        for col in ("question", "desired_answer"):
            if row[col] != first[col]:
                raise InputError(f"differs from the {col} of question {qid} on line {first['line']}",
                                 file=path, line=line, column=col)
        scores = {c: _mohler_score(path, line, c, row[c]) for c in ("score_me", "score_other", "score_avg")}
        if abs(scores["score_avg"] - (scores["score_me"] + scores["score_other"]) / 2) > MOHLER_AVG_TOLERANCE:
            raise InputError(f"score_avg {scores['score_avg']} is not the mean of score_me and score_other",
                             file=path, line=line, column="score_avg")
        bad = text_problem(row["student_answer"], "response text")
        if bad:
            raise InputError(bad, file=path, line=line, column="student_answer")
        counts[qid] += 1
        records.append(Record(response_id=f"{qid}.{counts[qid]}", task_id=mohler_task_id(qid),
                              text=row["student_answer"].strip(),
                              labels={"score": round_half_up(scores["score_avg"] * points_per_unit)},
                              metadata={**scores, "line": line}))
    tasks = [_mohler_task(path, qid, q, points_per_unit) for qid, q in questions.items()]
    return tasks, records


def _mohler_score(path: Path, line: int, column: str, value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"expected a number, got {value!r}", file=path, line=line, column=column) from None
    if not 0 <= x <= MOHLER_MAX:
        raise InputError(f"score {x} outside 0-{MOHLER_MAX}", file=path, line=line, column=column)
    return x


def _mohler_task(path: Path, qid: str, q: dict[str, Any], points_per_unit: int) -> Task:
    top = MOHLER_MAX * points_per_unit
    scale = {"id": "score", "name": f"mean of two graders, 0-{MOHLER_MAX} in steps of 1/{points_per_unit}",
             "min": 0, "max": top, "levels": [
                 {"score": 0, "description": "Completely incorrect."},
                 {"score": top, "description": "A perfect answer: everything the desired answer says."}]}
    return _make_task({
        "id": mohler_task_id(qid), "title": f"Mohler {qid}", "question": q["question"].strip(), "subject": "Computer science",
        "rubric": {"scales": [scale]},
        "reference_answers": [{"text": q["desired_answer"].strip(), "id": f"{qid}.desired"}],
        "metadata": {"source": "Mohler et al. (2011)", "question_id": qid, "points_per_unit": points_per_unit},
    }, path)


# --- SAF (Filighera et al. 2022) ------------------------------------------------------------------------------
#: SAF's verification labels as the ordinal score.
SAF_LEVELS = {"Incorrect": 0, "Partially correct": 1, "Correct": 2}
_SAF_DESCRIPTIONS = {
    0: "Incorrect: the response does not answer the question correctly.",
    1: "Partially correct: parts of the answer are right, but it is incomplete or partly wrong.",
    2: "Correct: the response answers the question completely and correctly.",
}


def saf_task_id(question_id: str) -> str:
    return f"saf-{question_id}"


def load_saf(root: str | Path) -> Converted:
    """A folder of SAF question XMLs (``.../saf/v2.0/training``; a v1 folder's ``english/`` is used when
    ``root`` has one) -> tasks ``saf-<qid>`` with an ordinal ``score`` 0-2 from the verification label.

    ``metadata`` of a record keeps ``points`` (the tutor's numeric score, question-dependent) and
    ``feedback`` (the elaborated feedback text).
    """
    root = Path(root)
    if not any(root.glob("*.xml")) and (root / "english").is_dir():
        root = root / "english"
    return _convert_xml_files((path, _saf_question) for path in _xml_files(root))


def _saf_question(xf: _XmlFile) -> _Question:
    q, qid, tid = _question(xf, saf_task_id)
    refs = [{"text": xf.text(r, "referenceAnswer"), "id": r.get("id")}
            for r in q.iterfind("referenceAnswers/referenceAnswer")]
    out = []
    for sa in q.iterfind("studentAnswers/studentAnswer"):
        label = xf.child_text(sa, "verification_feedback")
        if label not in SAF_LEVELS:
            raise xf.error(f"verification label '{label}' is not one of {list(SAF_LEVELS)}",
                           sa.find("verification_feedback"), "verification_feedback")
        points_text = xf.child_text(sa, "score")
        try:
            points = float(points_text)
        except ValueError:
            raise xf.error(f"score '{points_text}' is not a number", sa.find("score"), "score") from None
        feedback = sa.find("response_feedback")
        rec = Record(response_id=xf.attr(sa, "id"), task_id=tid, text=xf.child_text(sa, "response"),
                     labels={"score": SAF_LEVELS[label]},
                     metadata={"points": points, "verification": label,
                               "feedback": "".join(feedback.itertext()).strip() if feedback is not None else None})
        out.append((rec, xf.lines.get(sa)))
    if not out:
        raise xf.error("no <studentAnswer>", q, "studentAnswers")
    scale = {"id": "score", "name": "verification label", "min": 0, "max": 2,
             "levels": [{"score": s, "description": d} for s, d in _SAF_DESCRIPTIONS.items()]}
    task = _make_task({
        "id": tid, "title": f"SAF {qid}", "question": xf.child_text(q, "questionText"),
        "subject": "Computer networking", "rubric": {"scales": [scale]}, "reference_answers": refs,
        "metadata": {"source": "SAF (Filighera et al. 2022)", "question_id": qid, "file": xf.path.name,
                     "max_points_seen": max(r.metadata["points"] for r, _ in out)},
    }, xf.path)
    return task, out


# --- task files, folds ------------------------------------------------------------------------------------------
def write_task_files(tasks: Sequence[Task], out_dir: str | Path) -> list[Path]:
    """One YAML task file per task (``<id>.yaml``), readable by ``TaskRegistry.from_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in tasks:
        doc = t.model_dump(mode="json", exclude_defaults=True, exclude={"metadata": {"source_dir"}})
        p = out / f"{t.id}.yaml"
        p.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=110), encoding="utf-8")
        paths.append(p)
    return paths


def question_folds(records: Sequence[Record], n_folds: int = 5, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Group k-fold by task id: ``n_folds`` pairs ``(train indices, test indices)`` into ``records``.

    No task has records on both sides of a fold, so every test question is unseen in training. The folds
    depend only on the records' task ids, their order and ``seed`` (sklearn ``GroupKFold`` with shuffled
    groups).
    """
    from sklearn.model_selection import GroupKFold

    groups = [r.task_id for r in records]
    n_groups = len(set(groups))
    if not 2 <= n_folds <= n_groups:
        raise ValueError(f"n_folds must be between 2 and the number of tasks ({n_groups}), got {n_folds}")
    splitter = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [(train.tolist(), test.tolist()) for train, test in splitter.split(groups, groups=groups)]


def fold_tasks(tasks: Sequence[Task], records: Sequence[Record], indices: Sequence[int]) -> Converted:
    """The tasks and records of one side of a fold (tasks in their original order)."""
    recs = [records[i] for i in indices]
    ids = {r.task_id for r in recs}
    return [t for t in tasks if t.id in ids], recs


def summary(records: Sequence[Record]) -> dict[str, Any]:
    """Counts per label value and per task, to compare a conversion with the dataset's README."""
    labels: dict[str, Counter[int]] = defaultdict(Counter)
    for r in records:
        for k, v in r.labels.items():
            labels[k][v] += 1
    return {"records": len(records), "tasks": len({r.task_id for r in records}),
            "labels": {k: dict(sorted(c.items())) for k, c in labels.items()}}


#: ``--format`` names of ``rubricate data convert/validate/split`` -> converter (path -> tasks, records).
CONVERTERS: dict[str, Callable[[Path], Converted]] = {
    "semeval-2way": load_semeval_2way,
    "mohler": load_mohler,
    "saf": load_saf,
}
