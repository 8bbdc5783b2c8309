"""Deterministic, stratified train/validation/test splits, persisted as a file of ids.

Why a file: two runs (student vs. agents, today vs. next month) are only comparable when they score the
same test responses. A split is computed once, saved, and every later command reads it back.

Algorithm (per task, independently of the input order):

1. Each record gets a *stratum*: its primary score (the first scale), or for purely analytic tasks its
   criterion pattern (``"101"``), or ``"unlabelled"`` when labels are missing.
2. Records are sorted by response id, then shuffled with a generator seeded by ``sha256(seed, task_id)``;
   strata are laid out one after the other (largest first).
3. Walking through that order, each record goes to the split whose quota is most behind
   (``fraction * (i + 1) - count``; ties go to the earlier split). Every contiguous run of records, and so
   every stratum, is divided in the requested proportions to within one record, the totals per task are
   exact up to rounding, and a tiny class (even a single record) is handled without special cases.

The file is JSON: a header (``seed``, ``fractions``, ``stratify``, ``source``, counts) and the list of
``{task_id, response_id, split}`` assignments. It contains no timestamp, so the same inputs give a
byte-identical file.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np

from rubricate.data.records import Record
from rubricate.errors import InputError
from rubricate.tasks import TaskRegistry

SPLITS: tuple[str, ...] = ("train", "validation", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
DEFAULT_SEED = 13
FORMAT_NAME = "rubricate-split"
FORMAT_VERSION = 1

Stratify = Literal["auto", "none"]


@dataclass
class Split:
    """Assignment of every ``(task_id, response_id)`` to one of :data:`SPLITS`."""

    assignments: dict[tuple[str, str], str]
    seed: int = DEFAULT_SEED
    fractions: dict[str, float] = field(default_factory=lambda: dict(zip(SPLITS, DEFAULT_FRACTIONS)))
    stratify: str = "auto"
    source: str | None = None
    path: str | None = None  # where it was loaded from, for error messages

    def of(self, task_id: str, response_id: str) -> str | None:
        return self.assignments.get((task_id, response_id))

    def keys(self, split: str) -> list[tuple[str, str]]:
        return [k for k, v in self.assignments.items() if v == split]

    def counts(self) -> dict[str, dict[str, int]]:
        """Per task, the number of responses in each split."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: {s: 0 for s in SPLITS})
        for (task, _), s in self.assignments.items():
            out[task][s] += 1
        return {t: dict(c) for t, c in sorted(out.items())}

    @property
    def task_ids(self) -> list[str]:
        return sorted({t for t, _ in self.assignments})


def _normalise_fractions(fractions: Sequence[float] | Mapping[str, float]) -> dict[str, float]:
    if isinstance(fractions, Mapping):
        unknown = set(fractions) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split names {sorted(unknown)} (use {SPLITS})")
        values = [float(fractions.get(s, 0.0)) for s in SPLITS]
    else:
        values = [float(f) for f in fractions]
        if len(values) != len(SPLITS):
            raise ValueError(f"give {len(SPLITS)} fractions (train, validation, test), got {len(values)}")
    if any(v < 0 for v in values) or not np.isclose(sum(values), 1.0, atol=1e-6):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {values}")
    return dict(zip(SPLITS, values))


def stratum(record: Record, registry: TaskRegistry | None = None) -> str:
    """The stratification key of a record: primary score, else criterion pattern, else 'unlabelled'."""
    if registry is not None and record.task_id in registry:
        task = registry.get(record.task_id)
        primary = task.primary_scale
        if primary is not None:
            v = record.labels.get(primary.id)
            return "unlabelled" if v is None else f"{primary.id}={v}"
        crit = [c.id for c in task.criteria]
        if all(c in record.labels for c in crit):
            return "".join(str(record.labels[c]) for c in crit)
        return "unlabelled"
    # Without a registry: the 'score' label if present, else every label in key order.
    if "score" in record.labels:
        return f"score={record.labels['score']}"
    if record.labels:
        return ",".join(f"{k}={record.labels[k]}" for k in sorted(record.labels))
    return "unlabelled"


def _task_rng(seed: int, task_id: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{task_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _id_sort_key(response_id: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order, then the rest as strings (so '10' follows '9')."""
    return (0, int(response_id)) if response_id.isdigit() else (1, response_id)


def make_split(
    records: Iterable[Record],
    *,
    fractions: Sequence[float] | Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = DEFAULT_SEED,
    registry: TaskRegistry | None = None,
    stratify: Stratify = "auto",
    source: str | None = None,
) -> Split:
    """Split every task's records into train/validation/test (see the module docstring for the algorithm)."""
    fr = _normalise_fractions(fractions)
    by_task: dict[str, list[Record]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for r in records:
        if r.key in seen:
            raise InputError(f"duplicate response id '{r.response_id}' for task '{r.task_id}'", column="response_id")
        seen.add(r.key)
        by_task[r.task_id].append(r)

    weights = np.array([fr[s] for s in SPLITS])
    assignments: dict[tuple[str, str], str] = {}
    for task_id in sorted(by_task):
        recs = sorted(by_task[task_id], key=lambda r: _id_sort_key(r.response_id))
        rng = _task_rng(seed, task_id)
        order = rng.permutation(len(recs))
        groups: dict[str, list[Record]] = defaultdict(list)
        for i in order:
            key = stratum(recs[i], registry) if stratify == "auto" else "all"
            groups[key].append(recs[i])
        laid_out = [r for key in sorted(groups, key=lambda k: (-len(groups[k]), k)) for r in groups[key]]
        counts = np.zeros(len(SPLITS))
        for i, r in enumerate(laid_out):
            deficit = weights * (i + 1) - counts
            j = int(np.argmax(deficit))  # first maximum: ties go to the earlier split
            counts[j] += 1
            assignments[r.key] = SPLITS[j]
    return Split(assignments=assignments, seed=seed, fractions=fr, stratify=stratify, source=source)


def save_split(split: Split, path: str | Path) -> Path:
    """Write the split as JSON (header + sorted assignments); same split -> same bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(split.assignments.items(), key=lambda kv: (kv[0][0], _id_sort_key(kv[0][1])))
    doc = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "seed": split.seed,
        "fractions": split.fractions,
        "stratify": split.stratify,
        "source": split.source,
        "counts": split.counts(),
    }
    # Header pretty-printed, then one assignment per line: diffable and still plain JSON.
    head = json.dumps(doc, indent=1, ensure_ascii=False)[:-2]
    body = ",\n".join(
        "  " + json.dumps({"task_id": t, "response_id": r, "split": s}, ensure_ascii=False) for (t, r), s in rows
    )
    path.write_text(f'{head},\n "assignments": [\n{body}\n ]\n}}\n', encoding="utf-8")
    return path


def load_split(path: str | Path) -> Split:
    """Read a split file written by :func:`save_split`; errors name the file and the offending entry."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("split file not found", file=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        line = getattr(e, "lineno", None)
        raise InputError(f"not a split file (invalid JSON: {e})", file=path, line=line) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise InputError(f"not a split file (expected \"format\": \"{FORMAT_NAME}\")", file=path, column="format")
    if doc.get("version") != FORMAT_VERSION:
        raise InputError(f"unsupported split file version {doc.get('version')!r}", file=path, column="version")
    assignments: dict[tuple[str, str], str] = {}
    for i, row in enumerate(doc.get("assignments") or []):
        where = f"assignments[{i}]"
        if not isinstance(row, dict) or not {"task_id", "response_id", "split"} <= set(row):
            raise InputError("entry needs task_id, response_id and split", file=path, column=where)
        if row["split"] not in SPLITS:
            raise InputError(f"unknown split '{row['split']}' (use {SPLITS})", file=path, column=f"{where}.split")
        key = (str(row["task_id"]), str(row["response_id"]))
        if key in assignments:
            raise InputError(f"response '{key[1]}' of task '{key[0]}' is listed twice", file=path, column=where)
        assignments[key] = row["split"]
    return Split(assignments=assignments, seed=int(doc.get("seed", DEFAULT_SEED)),
                 fractions=_normalise_fractions(doc.get("fractions") or dict(zip(SPLITS, DEFAULT_FRACTIONS))),
                 stratify=str(doc.get("stratify", "auto")), source=doc.get("source"), path=str(path))


def apply_split(records: Iterable[Record], split: Split | str | Path) -> dict[str, list[Record]]:
    """Group records by split (input order kept). A record absent from the split file is an error:
    silently dropping it would change the test set. Entries of the file without a record are fine
    (e.g. a file made for all ten ASAP-SAS sets, used with three of them)."""
    if not isinstance(split, Split):
        split = load_split(split)
    out: dict[str, list[Record]] = {s: [] for s in SPLITS}
    missing: list[tuple[str, str]] = []
    for r in records:
        s = split.assignments.get(r.key)
        if s is None:
            missing.append(r.key)
            continue
        out[s].append(r)
    if missing:
        shown = ", ".join(f"{t}/{rid}" for t, rid in missing[:5])
        raise InputError(
            f"{len(missing)} record(s) are not in the split file, e.g. {shown}; "
            "recompute the split for this data (rubricate data split)",
            file=split.path, column="assignments",
        )
    return out


def split_summary(split: Split, records: Iterable[Record] | None = None,
                  registry: TaskRegistry | None = None) -> dict[str, dict[str, Counter]]:
    """Per task and split, the counts of each stratum (used by the CLI to show that strata are balanced)."""
    out: dict[str, dict[str, Counter]] = defaultdict(lambda: {s: Counter() for s in SPLITS})
    for r in records or []:
        s = split.of(*r.key)
        if s is not None:
            out[r.task_id][s][stratum(r, registry)] += 1
    return dict(out)
