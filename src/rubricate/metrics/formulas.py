"""Small, documented formulas: κ / QWK, agreement, errors, correlations, SMD, the Fisher-z mean and the
classification metrics of SemEval-2013 task 7 (accuracy, macro-F1, weighted-F1).

Each function computes one number of the module documentation of :mod:`rubricate.metrics` (notation:
``h`` human / rater 1, ``m`` machine, integer scores on ``min..max``). The ``*_from_confusion`` functions
compute the same numbers from K×K confusion counts of any leading shape - that is what the bootstrap
uses, one matrix per resample - and agree with the sklearn / scipy versions on every matrix (tests).
sklearn and scipy are imported inside the functions that use them, so that importing the package (e.g. for
its settings dataclasses in the CLI) stays cheap.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np

KappaWeights = Literal["quadratic", "linear"] | None
SmdMethod = Literal["pooled", "human"]
ConstantPolicy = Literal["zero", "nan"]

#: κ values are clipped to ±KAPPA_CLIP before the Fisher z transform, so κ = ±1 stays finite (Kaggle ASAP)
KAPPA_CLIP = 0.999
#: adjacent agreement counts |m - h| <= DEFAULT_TOLERANCE as agreeing
DEFAULT_TOLERANCE = 1


# --------------------------------------------------------------------------------------------------------
# κ and QWK
# --------------------------------------------------------------------------------------------------------
def _weight_matrix(k: int, weights: KappaWeights) -> np.ndarray:
    i, j = np.indices((k, k))
    if weights is None:
        return (i != j).astype(np.float64)
    if weights == "linear":
        return np.abs(i - j).astype(np.float64)
    if weights == "quadratic":
        return ((i - j) ** 2).astype(np.float64)
    raise ValueError(f"unknown kappa weights {weights!r} (use None, 'linear' or 'quadratic')")


def check_in_scale(x: np.ndarray, labels: Sequence[int], who: str) -> None:
    """Scores outside the scale are an error, never silently dropped."""
    bad = sorted(set(np.unique(x).tolist()) - set(labels))
    if bad:
        raise ValueError(f"{who} scores {bad[:10]} are outside the scale {list(labels)}")


def kappa(
    human: Sequence[int] | np.ndarray,
    machine: Sequence[int] | np.ndarray,
    *,
    labels: Sequence[int] | None = None,
    weights: KappaWeights = None,
    constant_prediction: ConstantPolicy = "zero",
) -> tuple[float, str | None]:
    """Cohen's κ (``weights=None``), linear or quadratic weighted κ; returns ``(value, reason_or_note)``.

    ``labels`` is the full category set (the scale range); values outside it raise ``ValueError``.
    Undefined cases (see the package docstring) give NaN with the reason; a constant machine gives 0 with a
    note (or NaN when ``constant_prediction="nan"``).
    """
    from sklearn.metrics import cohen_kappa_score  # here, not at the top: `rubricate --help` stays fast

    h = np.asarray(human)
    m = np.asarray(machine)
    if h.shape != m.shape:
        raise ValueError(f"human and machine have different lengths ({len(h)} vs {len(m)})")
    if labels is None:
        labels = sorted(set(h.tolist()) | set(m.tolist()))
    labels = list(labels)
    check_in_scale(h, labels, "human")
    check_in_scale(m, labels, "machine")
    if len(h) == 0:
        return math.nan, "no responses"
    if len(np.unique(h)) < 2:
        return math.nan, "human scores are constant: kappa is undefined (p_o = p_e by construction)"
    if len(np.unique(m)) < 2:
        if constant_prediction == "nan":
            return math.nan, "machine scores are constant: kappa set to NaN (constant_prediction='nan')"
        note = "machine scores are constant: kappa is 0 by construction (agreement equals chance)"
    else:
        note = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = float(cohen_kappa_score(h, m, labels=labels, weights=weights))
    if note is not None:
        value = 0.0 if abs(value) < 1e-12 else value
    return value, note


def quadratic_weighted_kappa(
    human: Sequence[int] | np.ndarray,
    machine: Sequence[int] | np.ndarray,
    *,
    labels: Sequence[int] | None = None,
) -> float:
    """QWK on the categories ``labels`` (NaN when undefined; see :func:`kappa` for the reason)."""
    return kappa(human, machine, labels=labels, weights="quadratic")[0]


def qwk(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    min_score: int,
    max_score: int,
    *,
    constant_prediction: ConstantPolicy = "zero",
) -> float:
    """QWK of integer scores on the scale ``min_score..max_score``: the report's one definition.

    NaN when undefined (no responses, constant human scores) - never 0, so a caller that needs a number
    (early stopping) decides itself what an undefined value means. A constant prediction gives its exact
    value 0 (``constant_prediction="nan"``: NaN).
    """
    labels = list(range(int(min_score), int(max_score) + 1))
    return kappa(y_true, y_pred, labels=labels, weights="quadratic", constant_prediction=constant_prediction)[
        0
    ]


def kappa_from_confusion(
    counts: np.ndarray, weights: KappaWeights = None, constant_prediction: ConstantPolicy = "zero"
) -> np.ndarray:
    """Vectorised κ from confusion counts of shape ``(..., K, K)`` (rows human) - used by the bootstrap.

    Gives the same value as sklearn for every matrix (checked in the tests); NaN where the human marginal
    is concentrated on one category or the matrix is empty.
    """
    c = np.asarray(counts, dtype=np.float64)
    k = c.shape[-1]
    w = _weight_matrix(k, weights)
    n = c.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        o = c / n[..., None, None]
        rows = o.sum(axis=-1)
        cols = o.sum(axis=-2)
        e = rows[..., :, None] * cols[..., None, :]
        num = (w * o).sum(axis=(-2, -1))
        den = (w * e).sum(axis=(-2, -1))
        val = 1.0 - num / den
    human_constant = (rows > 0).sum(axis=-1) < 2
    machine_constant = (cols > 0).sum(axis=-1) < 2
    val = np.where(machine_constant & ~human_constant, 0.0 if constant_prediction == "zero" else np.nan, val)
    return np.where(human_constant | (n == 0), np.nan, val)


def confusion_counts(human: np.ndarray, machine: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """K×K counts (rows human, columns machine) over the categories ``labels``."""
    idx = {v: i for i, v in enumerate(labels)}
    k = len(labels)
    hi = np.array([idx[v] for v in np.asarray(human).tolist()], dtype=np.int64)
    mi = np.array([idx[v] for v in np.asarray(machine).tolist()], dtype=np.int64)
    return np.bincount(hi * k + mi, minlength=k * k).reshape(k, k)


# --------------------------------------------------------------------------------------------------------
# Agreement, errors, correlations, SMD (point estimates)
# --------------------------------------------------------------------------------------------------------
def exact_agreement(human: np.ndarray, machine: np.ndarray) -> float:
    """``P(h = m)``."""
    return float(np.mean(np.asarray(machine) == np.asarray(human)))


def adjacent_agreement(human: np.ndarray, machine: np.ndarray, tolerance: int = DEFAULT_TOLERANCE) -> float:
    """``P(|h - m| <= tolerance)``."""
    d = np.asarray(machine, dtype=np.float64) - np.asarray(human, dtype=np.float64)
    return float(np.mean(np.abs(d) <= tolerance))


def mean_absolute_error(human: np.ndarray, machine: np.ndarray) -> float:
    """``mean |m - h|``."""
    return float(np.mean(np.abs(np.asarray(machine, dtype=np.float64) - np.asarray(human, dtype=np.float64))))


def root_mean_squared_error(human: np.ndarray, machine: np.ndarray) -> float:
    """``sqrt(mean (m - h)²)``."""
    d = np.asarray(machine, dtype=np.float64) - np.asarray(human, dtype=np.float64)
    return float(np.sqrt(np.mean(d**2)))


def correlations(human: np.ndarray, machine: np.ndarray) -> tuple[float, float, str | None]:
    """``(Pearson r, Spearman ρ, reason)``: NaN with the reason when ``n < 2`` or one side is constant."""
    from scipy import stats

    h, m = np.asarray(human), np.asarray(machine)
    if len(h) < 2:
        return math.nan, math.nan, "fewer than 2 responses"
    if h.std() == 0 or m.std() == 0:
        which = "human" if h.std() == 0 else "machine"
        return math.nan, math.nan, f"{which} scores are constant: correlation undefined"
    return float(stats.pearsonr(h, m).statistic), float(stats.spearmanr(h, m).statistic), None


def standardized_mean_difference(
    human: np.ndarray, machine: np.ndarray, method: SmdMethod = "pooled"
) -> float:
    """``(mean(m) - mean(h)) / SD``; SD pooled ``sqrt((sd_h² + sd_m²)/2)`` or human ``sd_h`` (ddof=1).

    NaN when ``n < 2`` or the SD is 0.
    """
    h = np.asarray(human, dtype=np.float64)
    m = np.asarray(machine, dtype=np.float64)
    if len(h) < 2:
        return math.nan
    sd_h, sd_m = h.std(ddof=1), m.std(ddof=1)
    if method == "pooled":
        sd = math.sqrt((sd_h**2 + sd_m**2) / 2)
    elif method == "human":
        sd = sd_h
    else:
        raise ValueError(f"unknown SMD method {method!r} (use 'pooled' or 'human')")
    return float((m.mean() - h.mean()) / sd) if sd > 0 else math.nan


def classification_metrics(
    gold: Sequence[int] | np.ndarray,
    predicted: Sequence[int] | np.ndarray,
    labels: Sequence[int] | None = None,
) -> dict[str, float]:
    """SemEval-2013 task 7's metrics of class predictions: ``accuracy``, ``macro_f1``, ``weighted_f1``.

    macro-F1 is the unweighted mean of the per-class F1 over ``labels`` (default: every class seen in gold or
    prediction), weighted-F1 the mean weighted by each class's gold count (sklearn ``f1_score``). A class
    that is never predicted and never gold-labelled counts F1 = 0 (``zero_division=0``), as in sklearn.
    """
    from sklearn.metrics import accuracy_score, f1_score

    g, m = np.asarray(gold), np.asarray(predicted)
    if g.shape != m.shape:
        raise ValueError(f"gold and predicted have different lengths ({len(g)} vs {len(m)})")
    if len(g) == 0:
        return {"accuracy": math.nan, "macro_f1": math.nan, "weighted_f1": math.nan}
    labs = sorted(set(g.tolist()) | set(m.tolist())) if labels is None else list(labels)
    return {
        "accuracy": float(accuracy_score(g, m)),
        "macro_f1": float(f1_score(g, m, labels=labs, average="macro", zero_division=0.0)),
        "weighted_f1": float(f1_score(g, m, labels=labs, average="weighted", zero_division=0.0)),
    }


# --------------------------------------------------------------------------------------------------------
# The same score metrics from confusion counts (vectorised over resamples)
# --------------------------------------------------------------------------------------------------------
def _weighted_corr(counts: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of category values ``x`` (rows) and ``y`` (columns) under joint counts ``(..., K, K)``."""
    n = counts.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        px = counts.sum(axis=-1) / n[..., None]
        py = counts.sum(axis=-2) / n[..., None]
        mx = (px * x).sum(-1)
        my = (py * y).sum(-1)
        vx = (px * (x - mx[..., None]) ** 2).sum(-1)
        vy = (py * (y - my[..., None]) ** 2).sum(-1)
        cxy = (
            counts
            / n[..., None, None]
            * (x - mx[..., None])[..., :, None]
            * (y - my[..., None])[..., None, :]
        ).sum(axis=(-2, -1))
        r = cxy / np.sqrt(vx * vy)
    # zero variance (a constant side) is undefined, like scipy; tiny negative variances are rounding
    return np.where((vx > 1e-12) & (vy > 1e-12), r, np.nan)


def _midranks(marginal: np.ndarray) -> np.ndarray:
    """Average ranks of each category given its counts ``(..., K)`` (ties share the mean rank, as scipy)."""
    below = np.cumsum(marginal, axis=-1) - marginal
    return below + (marginal + 1) / 2


def score_metrics_from_confusion(
    counts: np.ndarray,
    scale_min: int,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    smd_method: SmdMethod = "pooled",
    constant_prediction: ConstantPolicy = "zero",
) -> dict[str, np.ndarray]:
    """Every score metric from confusion counts ``(..., K, K)`` (rows human, columns machine).

    All of them are functions of the joint distribution of (human, machine) scores, so one matrix per
    bootstrap resample is enough: the means, SDs and Pearson r are weighted moments of the category values,
    Spearman ρ is Pearson r of the categories' average ranks.
    """
    c = np.asarray(counts, dtype=np.float64)
    k = c.shape[-1]
    vals = np.arange(scale_min, scale_min + k, dtype=np.float64)
    i, j = np.indices((k, k))
    diff = (j - i).astype(np.float64)  # machine - human
    n = c.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = c / n[..., None, None]
        ph, pm = p.sum(-1), p.sum(-2)
        mh, mm = (ph * vals).sum(-1), (pm * vals).sum(-1)
        corr = n / (n - 1)  # ddof = 1
        sd_h = np.sqrt((ph * (vals - mh[..., None]) ** 2).sum(-1) * corr)
        sd_m = np.sqrt((pm * (vals - mm[..., None]) ** 2).sum(-1) * corr)
        sd = np.sqrt((sd_h**2 + sd_m**2) / 2) if smd_method == "pooled" else sd_h
        smd = np.where((sd > 1e-12) & (n > 1), (mm - mh) / sd, np.nan)
    rank_h = _midranks(c.sum(-1))
    rank_m = _midranks(c.sum(-2))
    spearman = _weighted_corr(c, rank_h, rank_m)
    pearson = _weighted_corr(c, np.broadcast_to(vals, c.shape[:-1]), np.broadcast_to(vals, c.shape[:-1]))
    return {
        "qwk": kappa_from_confusion(c, "quadratic", constant_prediction),
        "exact": (p * (diff == 0)).sum(axis=(-2, -1)),
        "adjacent": (p * (np.abs(diff) <= tolerance)).sum(axis=(-2, -1)),
        "mae": (p * np.abs(diff)).sum(axis=(-2, -1)),
        "rmse": np.sqrt((p * diff**2).sum(axis=(-2, -1))),
        "pearson": np.where(n > 1, pearson, np.nan),
        "spearman": np.where(n > 1, spearman, np.nan),
        "smd": smd,
    }


# --------------------------------------------------------------------------------------------------------
# Fisher-z aggregation
# --------------------------------------------------------------------------------------------------------
def fisher_z_mean(
    kappas: Sequence[float] | np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
    clip: float = KAPPA_CLIP,
    axis: int = -1,
) -> float | np.ndarray:
    """Kaggle ASAP's mean of κ values: ``tanh(mean(atanh(clip(κ, ±clip))))``, optionally weighted.

    Weights (e.g. the number of responses per task) are normalised to mean 1, as in the Kaggle metric code;
    NaN κ values are left out (with their weights). Works along ``axis`` for bootstrap matrices.
    """
    k = np.asarray(kappas, dtype=np.float64)
    w = (
        np.ones_like(k)
        if weights is None
        else np.broadcast_to(np.asarray(weights, dtype=np.float64), k.shape)
    )
    valid = ~np.isnan(k)
    z = np.arctanh(np.clip(np.where(valid, k, 0.0), -clip, clip))
    wv = np.where(valid, w, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        zbar = (z * wv).sum(axis=axis) / wv.sum(axis=axis)
    out = np.tanh(zbar)
    return float(out) if np.ndim(out) == 0 else out
