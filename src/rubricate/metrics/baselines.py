"""Baselines for scoring unseen items: majority, lexical overlap and frozen-embedding cosine.

They are the yardsticks of the new-items benchmark (issue 19): a scorer of questions it was never trained on
must beat them. Every baseline is *fit on the training folds only* and then scores the test records, whose
tasks may be unseen:

* ``majority`` - the most frequent label of the training records (pooled over tasks: an unseen item has
  no majority of its own);
* ``overlap`` - token overlap of the response with the task's reference texts (token F1 or Jaccard, the
  maximum over references);
* ``cosine`` - cosine similarity of frozen sentence embeddings (the packaged MiniLM, mean pooling over
  tokens, as sentence-transformers does) of the response and each reference text, the maximum.

A similarity becomes a score by a threshold or cut points fit on the training records. Scores of tasks on
different scales are pooled as fractions of their scale, ``(s - min) / (max - min)``, and mapped to the
test task's levels (rounding half up), so a 0-3 item and a 0-2 item share one distribution:

* two levels (SemEval's ``correct``): the threshold that maximises the training macro-F1
  (``binary_objective="macro_f1"``), or the one that reproduces the training rate (``"distribution"``);
* more levels (ASAP, Mohler, SAF): cut points at the training similarities' quantiles, so the predicted
  level distribution matches the training score distribution.

A task's reference texts are its ``reference_answers``; a task without them (the ASAP-SAS items) uses the
description of the top level of its primary scale.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from rubricate.data.records import Record
from rubricate.metrics.formulas import classification_metrics
from rubricate.tasks import Task

BaselineKind = Literal["majority", "overlap", "cosine"]
OverlapMeasure = Literal["f1", "jaccard"]
BinaryObjective = Literal["macro_f1", "distribution"]


@dataclass
class BaselineOptions:
    """Settings of the baselines (``baseline_scores(..., **opts)`` takes these fields as keywords)."""

    overlap: OverlapMeasure = "f1"  #: token F1 (multiset, as SQuAD's) or Jaccard of token sets
    token_pattern: str = r"\w+"  #: a token, matched in the lower-cased text
    binary_objective: BinaryObjective = "macro_f1"
    threshold_candidates: int = 200  #: thresholds tried: this many quantiles of the training similarities
    #: the cosine baseline's encoder (its settings live there); pass one to reuse its cache across folds
    embedder: "TextEmbedder | None" = field(default=None, repr=False)


# --- what a response is compared with -----------------------------------------------------------------------
def target(task: Task) -> tuple[str, int, int]:
    """``(label key, min, max)`` a baseline predicts: the primary scale, or the only criterion as 0-1."""
    if task.primary_scale is not None:
        s = task.primary_scale
        return s.id, s.min, s.max
    if len(task.criteria) == 1:
        return task.criteria[0].id, 0, 1
    raise ValueError(f"task '{task.id}' has {len(task.criteria)} criteria and no scale: a baseline predicts one label")


def reference_texts(task: Task) -> list[str]:
    """The task's reference answers, or else the description of its primary scale's top level."""
    if task.reference_answers:
        return [r.text for r in task.reference_answers]
    scale = task.primary_scale
    top = scale.level(scale.max) if scale is not None else None
    if top is None:
        raise ValueError(f"task '{task.id}' has no reference answers and no description of its top score level")
    return [top.description]


# --- similarities ---------------------------------------------------------------------------------------------
def token_overlap(response: str, reference: str, measure: OverlapMeasure = "f1", pattern: str = r"\w+") -> float:
    """Token F1 (multisets) or Jaccard (sets) of two texts; 0 when either has no token."""
    a = re.findall(pattern, response.lower())
    b = re.findall(pattern, reference.lower())
    if not a or not b:
        return 0.0
    if measure == "jaccard":
        sa, sb = set(a), set(b)
        return len(sa & sb) / len(sa | sb)
    common = sum((Counter(a) & Counter(b)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


@dataclass
class TextEmbedder:
    """Frozen sentence embeddings: encoder -> mean over real tokens -> L2 norm; cached per text."""

    encoder: str = "minilm"  #: ``rubricate.student.modeling.resolve_encoder`` name or folder
    max_length: int = 128  #: tokens per text (short answers; longer texts are truncated)
    batch_size: int = 64
    _cache: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)
    _model: Any = field(default=None, init=False, repr=False)
    _tokenizer: Any = field(default=None, init=False, repr=False)

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        from rubricate.student.modeling import resolve_encoder

        path = str(resolve_encoder(self.encoder))
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).eval()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), H)`` unit vectors; texts not seen before are encoded in length-sorted batches."""
        import torch

        from rubricate.student.modeling import masked_mean

        todo = sorted({t for t in texts if t not in self._cache}, key=len)
        if todo and self._model is None:
            self._load()
        with torch.inference_mode():
            for i in range(0, len(todo), self.batch_size):
                batch = todo[i:i + self.batch_size]
                enc = self._tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                      return_tensors="pt")
                hidden = self._model(**enc).last_hidden_state  # (B, T, H)
                vec = torch.nn.functional.normalize(masked_mean(hidden, enc["attention_mask"]), dim=-1)
                self._cache.update(zip(batch, vec.numpy()))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 0), dtype=np.float32)


def similarities(kind: BaselineKind, tasks: dict[str, Task], records: Sequence[Record],
                 options: BaselineOptions) -> np.ndarray:
    """``(N,)`` similarity of each record to its task's reference texts (the maximum over references)."""
    refs = {tid: reference_texts(t) for tid, t in tasks.items()}
    if kind == "overlap":
        return np.array([max(token_overlap(r.text, ref, options.overlap, options.token_pattern)
                             for ref in refs[r.task_id]) for r in records])
    if kind != "cosine":
        raise ValueError(f"no similarity for baseline '{kind}'")
    embed = options.embedder = options.embedder or TextEmbedder()
    responses = embed([r.text for r in records])
    ref_vecs = {tid: embed(texts) for tid, texts in refs.items()}
    return np.array([float((ref_vecs[r.task_id] @ v).max()) for r, v in zip(records, responses)])


# --- from similarity to levels, fit on the training records --------------------------------------------------
def to_levels(fractions: np.ndarray, n_levels: int) -> np.ndarray:
    """Fractions of a scale (0..1) -> level indices 0..n_levels-1, rounding half up."""
    return np.floor(np.asarray(fractions, dtype=np.float64) * (n_levels - 1) + 0.5).astype(int)


def fit_threshold(sim: np.ndarray, gold: np.ndarray, candidates: int) -> float:
    """The similarity threshold (predict 1 at ``sim >= t``) with the best training macro-F1."""
    grid = np.unique(np.quantile(sim, np.linspace(0.0, 1.0, candidates + 1)))
    best_t, best = math.inf, -1.0
    for t in grid:
        score = classification_metrics(gold, (sim >= t).astype(int), labels=[0, 1])["macro_f1"]
        if score > best:
            best_t, best = float(t), score
    return best_t


def fit_cut_points(sim: np.ndarray, levels: np.ndarray, n_levels: int) -> np.ndarray:
    """``n_levels - 1`` increasing cut points: the training similarities' quantiles at the cumulative share
    of each level, so that ``#{cuts <= sim}`` gives the training level distribution on the training data."""
    share = np.bincount(levels, minlength=n_levels)[: n_levels] / len(levels)
    return np.quantile(sim, np.clip(np.cumsum(share)[:-1], 0.0, 1.0))


def _fractions(tasks: dict[str, Task], records: Sequence[Record]) -> np.ndarray:
    out = []
    for r in records:
        key, lo, hi = target(tasks[r.task_id])
        if key not in r.labels:
            raise ValueError(f"training record {r.key} has no label '{key}'")
        out.append((r.labels[key] - lo) / (hi - lo))
    return np.array(out)


def baseline_scores(
    kind: BaselineKind,
    train_tasks: Sequence[Task],
    train_records: Sequence[Record],
    test_tasks: Sequence[Task],
    test_records: Sequence[Record],
    **opts: Any,
) -> dict[str, int]:
    """Scores of ``test_records`` (response id -> score on its task's target scale, see :func:`target`).

    Everything is fit on the training records (labelled on their tasks' targets); ``opts`` are
    :class:`BaselineOptions` fields (pass ``embedder=TextEmbedder()`` to reuse embeddings across folds).
    Response ids of the test records must be unique (they key the result).
    """
    options = BaselineOptions(**opts)
    train_by_id = {t.id: t for t in train_tasks}
    test_by_id = {t.id: t for t in test_tasks}
    ids = [r.response_id for r in test_records]
    if len(set(ids)) != len(ids):
        raise ValueError("test response ids are not unique across tasks: they key the baseline's scores")
    if not train_records:
        raise ValueError("no training records to fit the baseline on")
    frac = _fractions(train_by_id, train_records)
    train_sim = test_sim = None
    if kind != "majority":
        train_sim = similarities(kind, train_by_id, train_records, options)
        test_sim = similarities(kind, test_by_id, test_records, options)
    out: dict[str, int] = {}
    for lo, hi in sorted({target(test_by_id[r.task_id])[1:] for r in test_records}):
        n = hi - lo + 1
        levels = to_levels(frac, n)
        rows = [i for i, r in enumerate(test_records) if target(test_by_id[r.task_id])[1:] == (lo, hi)]
        if kind == "majority":
            pred = np.full(len(rows), int(np.bincount(levels, minlength=n).argmax()))
        elif n == 2 and options.binary_objective == "macro_f1":
            pred = (test_sim[rows] >= fit_threshold(train_sim, levels, options.threshold_candidates)).astype(int)
        else:
            cuts = fit_cut_points(train_sim, levels, n)
            pred = (test_sim[rows][:, None] >= cuts[None, :]).sum(axis=1)
        out.update({test_records[i].response_id: lo + int(p) for i, p in zip(rows, pred)})
    return out


def cross_validate_baseline(
    kind: BaselineKind,
    tasks: Sequence[Task],
    records: Sequence[Record],
    n_folds: int = 5,
    seed: int = 0,
    **opts: Any,
) -> dict[str, Any]:
    """A baseline on group folds by question (:func:`rubricate.data.new_items.question_folds`).

    Returns ``pooled`` (accuracy, macro-F1, weighted-F1 over every test prediction of every fold, plus the
    mean QWK over test tasks when the targets have more than two levels), ``folds`` (the same per fold) and
    ``predictions`` (response id -> score). One :class:`TextEmbedder` serves every fold.
    """
    from rubricate.data.new_items import fold_tasks, question_folds

    if kind == "cosine":
        opts.setdefault("embedder", TextEmbedder())
    by_id = {t.id: t for t in tasks}
    predictions: dict[str, int] = {}
    folds = []
    for train_idx, test_idx in question_folds(records, n_folds, seed):
        train_tasks, train_records = fold_tasks(tasks, records, train_idx)
        test_tasks, test_records = fold_tasks(tasks, records, test_idx)
        pred = baseline_scores(kind, train_tasks, train_records, test_tasks, test_records, **opts)
        predictions.update(pred)
        folds.append(_metrics(by_id, test_records, pred))
    return {"kind": kind, "n_folds": n_folds, "seed": seed, "pooled": _metrics(by_id, records, predictions),
            "folds": folds, "predictions": predictions}


def _metrics(tasks: dict[str, Task], records: Sequence[Record], pred: dict[str, int]) -> dict[str, float]:
    from rubricate.metrics.formulas import qwk

    keys = [target(tasks[r.task_id]) for r in records]
    gold = [r.labels[k] for r, (k, _, _) in zip(records, keys)]
    out = classification_metrics(gold, [pred[r.response_id] for r in records])
    if any(hi - lo > 1 for _, lo, hi in keys):
        per_task: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            per_task.setdefault(r.task_id, []).append(i)
        kappas = [qwk([gold[i] for i in idx], [pred[records[i].response_id] for i in idx], *keys[idx[0]][1:])
                  for idx in per_task.values()]
        out["mean_qwk"] = float(np.nanmean(kappas)) if not all(np.isnan(kappas)) else math.nan
    return out
