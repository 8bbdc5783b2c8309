"""Student inputs: records read and split for a recipe, tokenised records with padded targets, teacher and
second-rater targets, length buckets.

Everything that turns :class:`~rubricate.data.records.Record` objects into tensors-to-be lives here, so that
the trainer, add-task and the teachers prepare data one way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from rubricate.data.records import Record
from rubricate.data.text import text_problem
from rubricate.data.teacher_file import AlignPolicy, align_teacher, read_teacher_file
from rubricate.errors import InputError, UnknownTaskError
from rubricate.labels import LabelEncoding
from rubricate.tasks import TaskRegistry

@dataclass
class EncodedSet:
    """Tokenised records with padded targets, ready for batching.

    ``targets`` and ``teacher`` are (N, max_labels) float32, NaN where missing or padding. ``anchor``
    (same shape) holds a frozen copy of the model's own logits for rows whose outputs should not drift
    (add-task's rehearsal rows, see :mod:`rubricate.student.adapt`).
    """

    keys: list[tuple[str, str]]
    input_ids: list[list[int]]
    task_index: np.ndarray
    targets: np.ndarray
    teacher: np.ndarray | None = None
    hidden: list[torch.Tensor] | None = None  # cached encoder outputs (T_i, H), for a frozen encoder
    anchor: np.ndarray | None = None  # (N, max_labels) self-distillation targets (logits), NaN = none

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, idx: Sequence[int]) -> "EncodedSet":
        idx = list(idx)
        return EncodedSet([self.keys[i] for i in idx], [self.input_ids[i] for i in idx], self.task_index[idx],
                          self.targets[idx], None if self.teacher is None else self.teacher[idx],
                          None if self.hidden is None else [self.hidden[i] for i in idx],
                          None if self.anchor is None else self.anchor[idx])


def check_records(records: Sequence[Record], task_ids: Sequence[str], registry: TaskRegistry,
                  source: str = "<records>") -> None:
    """Every record's task must be known to the model; labels must fit the rubric."""
    known = set(task_ids)
    for i, r in enumerate(records, start=1):
        if r.task_id not in known:
            if r.task_id not in registry:
                raise UnknownTaskError(r.task_id, list(known))
            raise InputError(f"task '{r.task_id}' is not one of the model's tasks {sorted(known)}",
                             file=source, line=i, column="task_id")
        problems = registry.get(r.task_id).check_labels(r.labels)
        if problems:
            raise InputError("; ".join(problems), file=source, line=i, column="labels")
        problem = text_problem(r.text, "response text")
        if problem:
            raise InputError(problem, file=source, line=i, column="text")


def encode_records(records: Sequence[Record], tokenizer: Any, task_ids: Sequence[str],
                   encodings: dict[str, LabelEncoding], max_length: int) -> EncodedSet:
    """Tokenise (truncate to ``max_length``, no padding: batches are padded dynamically) and encode labels."""
    index = {t: i for i, t in enumerate(task_ids)}
    L = max(encodings[t].n_labels for t in task_ids)
    ids = tokenizer([r.text for r in records], truncation=True, max_length=max_length)["input_ids"] \
        if records else []
    targets = np.full((len(records), L), np.nan, dtype=np.float32)
    for i, r in enumerate(records):
        enc = encodings[r.task_id]
        targets[i, : enc.n_labels] = enc.encode(r.labels)
    return EncodedSet([r.key for r in records], [list(x) for x in ids],
                      np.array([index[r.task_id] for r in records], dtype=np.int64), targets)


def token_counts(input_ids: Sequence[Sequence[int]], max_length: int,
                 base: dict[str, Any] | None = None) -> dict[str, Any]:
    """How often each token id occurs in already truncated ``input_ids``, as the checkpoint's
    ``token_counts.json`` document (sparse: ids never seen are left out), added to ``base`` when given
    (add-task keeps the base model's counts). Counted at train time so that the int8 export knows which
    word-embedding rows the responses use without being handed the training data again."""
    counts: dict[int, int] = {int(k): int(v) for k, v in (base or {}).get("counts", {}).items()}
    flat = np.concatenate([np.asarray(x, dtype=np.int64) for x in input_ids]) if len(input_ids) else np.zeros(0, int)
    ids, n = np.unique(flat, return_counts=True)
    for i, c in zip(ids.tolist(), n.tolist()):
        counts[i] = counts.get(i, 0) + c
    return {"n_rows": int((base or {}).get("n_rows", 0)) + len(input_ids), "max_length": int(max_length),
            "counts": {str(k): v for k, v in sorted(counts.items())}}


def attach_teacher(data: EncodedSet, teacher_file: str | Path, encodings: dict[str, LabelEncoding],
                   policy: AlignPolicy, eps: float, registry: TaskRegistry | None = None) -> int:
    """Join a teacher file to ``data`` by (task_id, response_id); returns the number of rows covered.

    Rows are validated against the label encodings of ``registry`` (all its tasks; rows of tasks not being
    trained are then 'extra' rows under ``policy``) or, without a registry, of ``encodings``.
    """
    names = {t: e.names for t, e in encodings.items()}
    if registry is not None:
        names = {t.id: LabelEncoding.from_task(t).names for t in registry} | names
    rows = read_teacher_file(teacher_file, label_names=names)
    aligned = align_teacher(rows, data.keys, policy=policy, source=teacher_file)
    L = data.targets.shape[1]
    teacher = np.full((len(data), L), np.nan, dtype=np.float32)
    covered = 0
    for i, row in enumerate(aligned):
        if row is None:
            continue
        z = row.as_logits(eps)
        teacher[i, : len(z)] = z
        covered += 1
    data.teacher = teacher
    return covered


def bucketed_batches(lengths: Sequence[int], batch_size: int, bucket_batches: int,
                     rng: np.random.Generator) -> list[np.ndarray]:
    """Mixed-task batches with length bucketing.

    Shuffle all rows (tasks mix freely), cut the order into windows of ``bucket_batches * batch_size``,
    sort each window by length, cut into batches, then shuffle the batches: similar lengths share a
    batch (little padding) while the batch order stays random.
    """
    order = rng.permutation(len(lengths))
    window = max(1, bucket_batches) * batch_size
    batches = []
    lens = np.asarray(lengths)
    for s in range(0, len(order), window):
        chunk = order[s: s + window]
        chunk = chunk[np.argsort(lens[chunk], kind="stable")]
        batches += [chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches




# --------------------------------------------------------------------------------------------------------
# A second rater (ASAP-SAS has one for every response)
# --------------------------------------------------------------------------------------------------------
def add_second_rater(data: EncodedSet, records: Sequence[Record], encodings: dict[str, LabelEncoding],
                     mode: str) -> int:
    """Use ``Record.rater2`` in training; returns the number of rows with a second rater.

    ``mode``: ``"ignore"`` (official score only); ``"soft"`` - each target becomes the mean of the two raters'
    indicators (0, 0.5 or 1: a disputed boundary is learned as uncertain); ``"duplicate"`` - each response
    is trained on once per rater (a second row with rater 2's targets, same text, same teacher row).
    ``records`` must be the records ``data`` was encoded from, in the same order.
    """
    if mode not in ("ignore", "soft", "duplicate"):
        raise ValueError(f"second_rater must be 'ignore', 'soft' or 'duplicate', got {mode!r}")
    if len(records) != len(data):
        raise ValueError(f"{len(records)} records for {len(data)} encoded rows")
    rows, second = [], []
    for i, r in enumerate(records):
        if r.rater2:
            enc = encodings[r.task_id]
            t2 = np.full(data.targets.shape[1], np.nan, dtype=np.float32)
            t2[: enc.n_labels] = enc.encode(r.rater2)
            rows.append(i)
            second.append(t2)
    if mode == "ignore" or not rows:
        return len(rows)
    t2 = np.stack(second)
    if mode == "soft":
        t1 = data.targets[rows]
        both = ~np.isnan(t1) & ~np.isnan(t2)
        data.targets[rows] = np.where(both, (t1 + t2) / 2.0, t1)
        return len(rows)
    data.keys += [data.keys[i] for i in rows]
    data.input_ids += [data.input_ids[i] for i in rows]
    data.task_index = np.concatenate([data.task_index, data.task_index[rows]])
    data.targets = np.concatenate([data.targets, t2])
    if data.teacher is not None:
        data.teacher = np.concatenate([data.teacher, data.teacher[rows]])
    if data.anchor is not None:
        data.anchor = np.concatenate([data.anchor, data.anchor[rows]])
    if data.hidden is not None:
        data.hidden += [data.hidden[i] for i in rows]
    return len(rows)


def length_stats(tokenizer: Any, records: Sequence[Record], max_length: int) -> dict[str, Any]:
    """Token lengths (with special tokens) and the share of responses cut at ``max_length``, overall and per task.

    Why: truncation silently drops the end of an answer, which is often where the scored content is.
    """
    if not records:
        return {"n": 0, "max_length": max_length, "share_truncated": 0.0, "per_task": {}}
    lens = np.array([len(x) for x in tokenizer([r.text for r in records], truncation=False)["input_ids"]])
    tids = np.array([r.task_id for r in records])

    def summary(v: np.ndarray) -> dict[str, Any]:
        return {"n": int(len(v)), "share_truncated": float(np.mean(v > max_length)),
                "p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
                "p99": float(np.percentile(v, 99)), "max": int(v.max())}

    out = {"max_length": max_length, **summary(lens)}
    out["per_task"] = {t: summary(lens[tids == t]) for t in dict.fromkeys(tids.tolist())}
    return out


def concat_sets(a: EncodedSet, b: EncodedSet) -> EncodedSet:
    """Rows of ``a`` then ``b`` (teacher/anchor columns NaN where one side has none); cached states are dropped."""
    def both(x: np.ndarray | None, y: np.ndarray | None, n_x: int, n_y: int, width: int) -> np.ndarray | None:
        if x is None and y is None:
            return None
        x = np.full((n_x, width), np.nan, dtype=np.float32) if x is None else x
        y = np.full((n_y, width), np.nan, dtype=np.float32) if y is None else y
        return np.concatenate([x, y])

    w = a.targets.shape[1]
    if b.targets.shape[1] != w:
        raise ValueError(f"sets of different label widths ({w} vs {b.targets.shape[1]})")
    return EncodedSet(a.keys + b.keys, a.input_ids + b.input_ids, np.concatenate([a.task_index, b.task_index]),
                      np.concatenate([a.targets, b.targets]), both(a.teacher, b.teacher, len(a), len(b), w),
                      None, both(a.anchor, b.anchor, len(a), len(b), w))


def choose_max_length(tokenizer: Any, records: Sequence[Record], coverage: float = 0.995, multiple: int = 32,
                      ceiling: int = 512) -> int:
    """The smallest multiple of ``multiple`` (<= ``ceiling``) that leaves at least ``coverage`` of the responses uncut.

    Why a multiple: batches are padded to their longest row anyway; a round number keeps recipes readable.
    """
    if not records:
        return multiple
    lens = np.sort([len(x) for x in tokenizer([r.text for r in records], truncation=False)["input_ids"]])
    need = int(lens[min(len(lens) - 1, int(np.ceil(coverage * len(lens))) - 1)])
    return int(min(ceiling, multiple * int(np.ceil(need / multiple))))


def resolve_inputs(args: Any, registry: TaskRegistry | None, train_records: Sequence[Record] | None,
                    val_records: Sequence[Record] | None) -> tuple[TaskRegistry, list[Record], list[Record] | None]:
    """The registry and the train / validation records of a recipe (``TrainingArguments``), unless passed in."""
    if registry is None:
        if not args.tasks:
            raise InputError("no task registry: set 'tasks' (a task folder or file) in the recipe")
        registry = TaskRegistry.from_dir(args.tasks)
    if train_records is None and args.data:
        parts = split_records(load_records(args.data, registry), args.split, registry)
        train_records = parts["train"]
        if val_records is None:
            val_records = parts["validation"] or None
    if train_records is None:
        if not args.train_data:
            raise InputError("no training data: set 'data' (+ 'split') or 'train_data' in the recipe")
        train_records = load_records(args.train_data, registry)
    if val_records is None and args.val_data:
        val_records = load_records(args.val_data, registry)
    return registry, list(train_records), (list(val_records) if val_records is not None else None)


def resolve_inputs_with_test(args: Any) -> tuple[TaskRegistry, dict[str, list[Record]]]:
    """A recipe's registry and its train / validation / test records (``data`` + ``split`` recipes)."""
    if not args.tasks or not args.data:
        raise InputError("this verb needs a recipe with 'tasks' and 'data' (+ 'split')")
    registry = TaskRegistry.from_dir(args.tasks)
    parts = split_records(load_records(args.data, registry), args.split, registry)
    if args.task_ids:
        keep = set(args.task_ids)
        parts = {k: [r for r in v if r.task_id in keep] for k, v in parts.items()}
    return registry, parts


def load_records(path: str | Path, registry: TaskRegistry | None = None) -> list[Record]:
    """Records from native JSONL or any table ``load_table`` understands (label columns named like label keys)."""
    from rubricate.data.loaders import load_table

    return load_table(path, registry=registry)


def split_records(records: Sequence[Record], split: str | Path | None,
                  registry: TaskRegistry | None = None) -> dict[str, list[Record]]:
    """{"train", "validation", "test"} parts: from a split file, or the default stratified split made now."""
    from rubricate.data.splits import apply_split, make_split

    sp = split if split is not None else make_split(records, registry=registry)
    return apply_split(records, sp)


def read_split(data: str | Path, tasks: str | Path, split: str | Path | None = None,
               ) -> tuple[TaskRegistry, dict[str, list[Record]]]:
    """The task folder's registry and the records of ``data`` cut into train / validation / test parts."""
    registry = TaskRegistry.from_dir(tasks)
    return registry, split_records(load_records(data, registry), split, registry)
