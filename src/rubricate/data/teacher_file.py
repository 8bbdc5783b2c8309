"""Teacher-outputs files: soft labels for distillation, keyed by (task_id, response_id).

Format: JSONL, one object per response::

    {"task_id": "asap-sas-1", "response_id": "17", "label_names": ["score>=1", "score>=2", "score>=3"],
     "probs": [0.97, 0.81, 0.12], "source": "specialist-minilm-kfold5"}

Either ``probs`` (per-label probabilities in [0, 1]) or ``logits`` (pre-sigmoid) must be present.
``label_names`` must equal the task's label encoding (``LabelEncoding.names``), in order: this is how
a file written for another rubric version is caught instead of being silently misread.
Rows are joined to training records by key, never by row order.

Alignment policy when loading against a set of records (see :func:`align_teacher`):

* ``"strict"`` (default) - a training record without a teacher row, or a teacher row without a record,
  is an error that lists the first offending keys.
* ``"ignore_extra"`` - teacher rows for unknown responses are allowed (e.g. a file covering all splits).
* ``"allow_missing"`` - records without a teacher row get no distillation term (masked), extras allowed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np

from rubricate.data.tables import read_rows
from rubricate.errors import InputError

AlignPolicy = Literal["strict", "ignore_extra", "allow_missing"]


@dataclass
class TeacherRow:
    task_id: str
    response_id: str
    label_names: list[str]
    probs: list[float] | None = None
    logits: list[float] | None = None
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.task_id, self.response_id)

    def as_logits(self, eps: float = 1e-6) -> np.ndarray:
        """Logits of this row; probabilities are clipped to [eps, 1-eps] before the inverse sigmoid."""
        if self.logits is not None:
            return np.asarray(self.logits, dtype=np.float32)
        p = np.clip(np.asarray(self.probs, dtype=np.float64), eps, 1 - eps)
        return np.log(p / (1 - p)).astype(np.float32)

    def as_probs(self) -> np.ndarray:
        if self.probs is not None:
            return np.asarray(self.probs, dtype=np.float32)
        return (1 / (1 + np.exp(-np.asarray(self.logits, dtype=np.float64)))).astype(np.float32)


def write_teacher_file(rows: Iterable[TeacherRow], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            d = {"task_id": r.task_id, "response_id": r.response_id, "label_names": list(r.label_names)}
            if r.probs is not None:
                d["probs"] = [float(x) for x in r.probs]
            if r.logits is not None:
                d["logits"] = [float(x) for x in r.logits]
            if r.source:
                d["source"] = r.source
            if r.extra:
                d["extra"] = r.extra
            f.write(json.dumps(d) + "\n")
    return path


def read_teacher_file(path: str | Path, label_names: dict[str, list[str]] | None = None) -> dict[tuple[str, str], TeacherRow]:
    """Load and validate a teacher file.

    ``label_names`` (task id -> expected names) checks every row against the current label encodings.
    Errors name the file, line and field; a duplicate (task_id, response_id) is an error.
    """
    path = Path(path)
    out: dict[tuple[str, str], TeacherRow] = {}
    for lineno, d in read_rows(path, "jsonl"):
        for col in ("task_id", "response_id", "label_names"):
            if col not in d:
                raise InputError("missing field", file=path, line=lineno, column=col)
        if ("probs" in d) == ("logits" in d):
            raise InputError("exactly one of 'probs' or 'logits' is required", file=path, line=lineno,
                             column="probs")
        col = "probs" if "probs" in d else "logits"
        values = d[col]
        names = d["label_names"]
        if not isinstance(values, list) or len(values) != len(names):
            raise InputError(f"expected {len(names)} values (one per label name)", file=path, line=lineno,
                             column=col)
        for v in values:
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise InputError(f"non-numeric or non-finite value {v!r}", file=path, line=lineno, column=col)
            if col == "probs" and not 0.0 <= v <= 1.0:
                raise InputError(f"probability {v} outside [0, 1]", file=path, line=lineno, column=col)
        task_id, rid = str(d["task_id"]), str(d["response_id"])
        if label_names is not None:
            if task_id not in label_names:
                raise InputError(f"unknown task '{task_id}'", file=path, line=lineno, column="task_id")
            if list(names) != list(label_names[task_id]):
                raise InputError(
                    f"label_names {names} do not match the task's label encoding {label_names[task_id]}",
                    file=path, line=lineno, column="label_names")
        row = TeacherRow(task_id, rid, list(names), probs=d.get("probs"), logits=d.get("logits"),
                         source=d.get("source", ""), extra=d.get("extra") or {})
        if row.key in out:
            raise InputError(f"duplicate row for task '{task_id}', response '{rid}'", file=path, line=lineno,
                             column="response_id")
        out[row.key] = row
    return out


def align_teacher(
    teacher: dict[tuple[str, str], TeacherRow],
    keys: Sequence[tuple[str, str]],
    policy: AlignPolicy = "strict",
    source: str | Path = "<teacher>",
) -> list[TeacherRow | None]:
    """Return one teacher row per record key (None where missing and allowed), by key, never by order."""
    wanted = set(keys)
    missing = [k for k in keys if k not in teacher]
    extra = [k for k in teacher if k not in wanted]
    if missing and policy != "allow_missing":
        raise InputError(f"{len(missing)} training responses have no teacher row, e.g. "
                         f"{missing[:5]} (use policy 'allow_missing' to train them without distillation)",
                         file=source)
    if extra and policy == "strict":
        raise InputError(f"{len(extra)} teacher rows match no training response, e.g. {extra[:5]} "
                         f"(use policy 'ignore_extra' if the file covers other splits)", file=source)
    return [teacher.get(k) for k in keys]
