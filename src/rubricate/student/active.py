"""New items: which unscored answers a teacher should score next, and where a score came from.

**Active selection** (:func:`select`) picks ``n`` answers of one item from the student's own outputs, so the
few labels a teacher gives teach the student most:

* ``random`` - a seeded permutation (the baseline every curve is compared with);
* ``uncertainty`` - the answers whose score distribution is least certain (:class:`SelectionOptions`
  ``measure``: entropy, margin between the two likeliest scores, 1 - max P, or the distance of the expected
  score from the nearest cut point between two scores);
* ``diversity`` - greedy k-center over embeddings (or, without them, over the probability vectors): each
  pick is the answer farthest from everything already picked or already scored, so the labels cover the
  answers instead of piling up on one kind;
* ``hybrid`` - the ``pool_factor * n`` most uncertain answers, then k-center inside that pool (uncertain
  *and* different from each other).

Everything is deterministic for a given ``seed``; ties go to the lower index. Torch-free (numpy only), so the
CLI, the server and the benchmarks share it.

**Score sources**: a student scores an item with a ``trained`` head, ``few_shot`` (a handful of labels) or
``zero_shot`` (from the task's text alone). :func:`task_sources` reads them from a loaded scorer; the web
page, the review threshold and the report use these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

Strategy = Literal["random", "uncertainty", "diversity", "hybrid"]
STRATEGIES: tuple[str, ...] = ("random", "uncertainty", "diversity", "hybrid")
Measure = Literal["entropy", "margin", "least_confidence", "cut_distance"]
MEASURES: tuple[str, ...] = ("entropy", "margin", "least_confidence", "cut_distance")

SCORE_SOURCES: tuple[str, ...] = ("trained", "few_shot", "zero_shot")
DEFAULT_SCORE_SOURCE = "trained"  #: a task a checkpoint says nothing about was trained with labels


@dataclass(frozen=True)
class SelectionOptions:
    """The knobs of :func:`select` (the defaults are the ones the CLI and the benchmark use)."""

    measure: Measure = "entropy"
    """How uncertain one distribution is: ``entropy`` (-sum p log p), ``margin`` (small p1 - p2 = uncertain),
    ``least_confidence`` (1 - max p: the quantity the server's review threshold reads for one scale) or
    ``cut_distance`` (|E[score] - nearest cut k + 1/2|, small = uncertain: ordinal scales, columns = scores)."""
    pool_factor: float = 3.0
    """hybrid: k-center runs over the ``ceil(pool_factor * n)`` most uncertain answers."""
    normalize_embeddings: bool = True
    """diversity/hybrid: L2-normalise embedding rows first (k-center then works on cosine geometry)."""
    exclude_as_centers: bool = True
    """diversity/hybrid: answers already scored (``exclude``) count as picked centres, so new picks stay away
    from them (the core-set view of active learning)."""


def _check_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"probs must be an (N, K) score distribution, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probs must be finite and non-negative")
    totals = p.sum(axis=1, keepdims=True)
    if np.any(totals <= 0):
        raise ValueError("every row of probs needs some probability mass")
    return p / totals


def uncertainty(probs: np.ndarray, measure: Measure = SelectionOptions.measure) -> np.ndarray:
    """(N,) uncertainty of each row of an (N, K) score distribution: larger = less certain (any measure)."""
    p = _check_probs(probs)
    if measure == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    if measure == "least_confidence":
        return 1.0 - p.max(axis=1)
    if measure == "margin":
        top = np.sort(p, axis=1)[:, ::-1]
        second = top[:, 1] if p.shape[1] > 1 else np.zeros(len(p))
        return 1.0 - (top[:, 0] - second)
    if measure == "cut_distance":
        k = p.shape[1]
        if k < 2:
            return np.zeros(len(p))
        expected = p @ np.arange(k, dtype=np.float64)
        cuts = np.arange(k - 1, dtype=np.float64) + 0.5
        return -np.abs(expected[:, None] - cuts[None, :]).min(axis=1)
    raise ValueError(f"unknown uncertainty measure {measure!r} (use one of {', '.join(MEASURES)})")


def _by_uncertainty(scores: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Candidates, most uncertain first; equal uncertainty -> lower index first (stable, deterministic)."""
    return candidates[np.argsort(-scores[candidates], kind="stable")]


def _vectors(embeddings: np.ndarray | None, probs: np.ndarray, normalize: bool) -> np.ndarray:
    x = np.asarray(probs if embeddings is None else embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(probs):
        raise ValueError(f"embeddings must be (N, D) with N = {len(probs)} rows, got shape {x.shape}")
    if embeddings is not None and normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def k_center(x: np.ndarray, candidates: np.ndarray, n: int, centers: Sequence[int], first: int) -> list[int]:
    """Greedy k-center: repeatedly pick the candidate farthest from every centre so far.

    ``centers``: rows already chosen (the distances start from them); with none, ``first`` opens the set.
    """
    picked: list[int] = []
    if not len(candidates) or n <= 0:
        return picked
    cand = x[candidates]
    dist = np.full(len(candidates), np.inf)
    for c in centers:
        dist = np.minimum(dist, np.linalg.norm(cand - x[c], axis=1))
    if not len(centers):
        picked.append(int(first))
        dist = np.minimum(dist, np.linalg.norm(cand - x[first], axis=1))
    taken = np.isin(candidates, picked)
    while len(picked) < min(n, len(candidates)):
        d = np.where(taken, -np.inf, dist)
        j = int(np.argmax(d))  # first maximum: lower index on ties
        picked.append(int(candidates[j]))
        taken[j] = True
        dist = np.minimum(dist, np.linalg.norm(cand - cand[j], axis=1))
    return picked


def select(strategy: Strategy, probs: np.ndarray, n: int, embeddings: np.ndarray | None = None, seed: int = 0,
           exclude: Sequence[int] = (), options: SelectionOptions | None = None) -> list[int]:
    """Indices (into the rows of ``probs``) of the ``n`` answers to score next, in the order to score them.

    ``probs``: (N, K) the student's score distribution per answer (rows are normalised); ``embeddings``:
    optional (N, D) vectors for diversity/hybrid (default: the probability rows); ``exclude``: indices never
    returned (already scored). Fewer than ``n`` come back when fewer candidates remain.
    """
    opt = options or SelectionOptions()
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} (use one of {', '.join(STRATEGIES)})")
    p = _check_probs(probs)
    bad = [i for i in exclude if not 0 <= int(i) < len(p)]
    if bad:
        raise ValueError(f"exclude has indices outside 0..{len(p) - 1}: {bad[:5]}")
    done = sorted({int(i) for i in exclude})
    candidates = np.setdiff1d(np.arange(len(p)), np.asarray(done, dtype=np.int64))
    if n <= 0 or not len(candidates):
        return []
    rng = np.random.default_rng(seed)
    if strategy == "random":
        return [int(i) for i in rng.permutation(candidates)[:n]]
    ranked = _by_uncertainty(uncertainty(p, opt.measure), candidates)
    if strategy == "uncertainty":
        return [int(i) for i in ranked[:n]]
    x = _vectors(embeddings, p, opt.normalize_embeddings)
    centers = done if opt.exclude_as_centers else []
    if strategy == "diversity":
        return k_center(x, candidates, n, centers, first=int(rng.choice(candidates)))
    pool = ranked[:max(n, int(np.ceil(opt.pool_factor * n)))]
    return k_center(x, np.sort(pool), n, centers, first=int(ranked[0]))


def source_for(scorer: Any, task_id: str) -> str:
    """Where ``scorer``'s scores of one task come from: the scorer's own ``source(task_id)`` when it has one
    (the task-text scorer: a task it never trained on is ``zero_shot``), else the checkpoint's ``config.json``
    ``"task_sources"``, else :data:`DEFAULT_SCORE_SOURCE`."""
    ask = getattr(scorer, "source", None)
    if callable(ask):
        return str(ask(task_id))
    listed = (getattr(scorer, "doc", None) or {}).get("task_sources") or {}
    return str(listed.get(task_id, DEFAULT_SCORE_SOURCE))


def task_sources(scorer: Any) -> dict[str, str]:
    """``{task_id: source}`` for every task ``scorer`` scores (:func:`source_for`)."""
    return {t.id: source_for(scorer, t.id) for t in (getattr(scorer, "tasks", None) or [])}
