"""Metrics of one set of responses: per binary label, the UniMoE multi-label four, and per score scale.

These turn arrays into the result types of :mod:`rubricate.metrics.results`, with the notes that explain
every undefined value; :mod:`rubricate.metrics.evaluate` calls them per task and scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from rubricate.labels import DEFAULT_THRESHOLD
from rubricate.metrics.bootstrap import DEFAULTS, bootstrap_score_metrics, percentile_interval
from rubricate.metrics.formulas import (
    DEFAULT_TOLERANCE,
    ConstantPolicy,
    SmdMethod,
    adjacent_agreement,
    check_in_scale,
    confusion_counts,
    correlations,
    exact_agreement,
    kappa,
    mean_absolute_error,
    root_mean_squared_error,
    standardized_mean_difference,
)
from rubricate.metrics.results import LabelMetrics, MultiLabelMetrics, ScoreMetrics


# --------------------------------------------------------------------------------------------------------
# Per-label and multi-label metrics
# --------------------------------------------------------------------------------------------------------
def to_binary(pred: np.ndarray, threshold: float) -> np.ndarray:
    """Probabilities (or 0/1) to 0/1 at ``p >= threshold``."""
    p = np.asarray(pred, dtype=np.float64)
    return (p >= threshold).astype(int)


def label_metrics(
    y_true: Sequence[float] | np.ndarray,
    y_prob_or_pred: Sequence[float] | np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    name: str = "label",
    constant_prediction: ConstantPolicy = "zero",
) -> LabelMetrics:
    """Cohen's κ, accuracy and F1 for one binary target.

    ``y_true`` may hold NaN (missing gold label, masked out). ``y_prob_or_pred`` holds probabilities or
    0/1 predictions; both are binarised with ``p >= threshold``. A NaN prediction where gold exists is an
    error (a prediction must be complete).
    """
    from sklearn.metrics import accuracy_score, f1_score

    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_prob_or_pred, dtype=np.float64)
    if t.shape != p.shape:
        raise ValueError(f"label '{name}': {len(t)} gold values vs {len(p)} predictions")
    mask = ~np.isnan(t)
    if np.isnan(p[mask]).any():
        raise ValueError(f"label '{name}': {int(np.isnan(p[mask]).sum())} predictions are missing (NaN)")
    t = t[mask].astype(int)
    yp = to_binary(p[mask], threshold)
    if set(np.unique(t).tolist()) - {0, 1}:
        raise ValueError(f"label '{name}': gold values must be 0/1, got {sorted(np.unique(t).tolist())}")
    n = len(t)
    notes: dict[str, str] = {}
    if n == 0:
        notes["all"] = "no responses with a gold value"
        return LabelMetrics(name, 0, math.nan, math.nan, math.nan, math.nan, math.nan, notes)
    kap, why = kappa(t, yp, labels=[0, 1], constant_prediction=constant_prediction)
    if why:
        notes["kappa"] = why
    if t.sum() == 0 and yp.sum() == 0:
        f1 = math.nan
        notes["f1"] = "no positives in gold or prediction: F1 is 0/0"
    else:
        f1 = float(f1_score(t, yp, labels=[0, 1], pos_label=1, average="binary", zero_division=0.0))
    return LabelMetrics(
        name=name,
        n=n,
        kappa=kap,
        accuracy=float(accuracy_score(t, yp)),
        f1=f1,
        gold_rate=float(t.mean()),
        pred_rate=float(yp.mean()),
        notes=notes,
    )


def _nanmean_count(values: Iterable[float]) -> tuple[float, int]:
    v = np.asarray(list(values), dtype=np.float64)
    n_nan = int(np.isnan(v).sum())
    return (float(np.nanmean(v)) if n_nan < len(v) else math.nan), n_nan


def multilabel_metrics(
    y_true: np.ndarray,
    y_prob_or_pred: np.ndarray,
    label_names: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    constant_prediction: ConstantPolicy = "zero",
) -> tuple[list[LabelMetrics], MultiLabelMetrics]:
    """Per-label metrics plus the UniMoE four for an ``(N, L)`` target matrix (NaN = missing, masked)."""
    from sklearn.metrics import f1_score

    t = np.atleast_2d(np.asarray(y_true, dtype=np.float64))
    p = np.atleast_2d(np.asarray(y_prob_or_pred, dtype=np.float64))
    if t.shape != p.shape or t.shape[1] != len(label_names):
        raise ValueError(
            f"targets {t.shape}, predictions {p.shape} and {len(label_names)} label names disagree"
        )
    per = [
        label_metrics(t[:, j], p[:, j], threshold, name, constant_prediction)
        for j, name in enumerate(label_names)
    ]
    mean_k, k_nan = _nanmean_count(m.kappa for m in per)
    macro, f_nan = _nanmean_count(m.f1 for m in per)
    acc, _ = _nanmean_count(m.accuracy for m in per)
    mask = ~np.isnan(t)
    tt = t[mask].astype(int)
    pp = to_binary(p[mask], threshold)
    notes: dict[str, str] = {}
    if len(tt) == 0 or (tt.sum() == 0 and pp.sum() == 0):
        micro = math.nan
        notes["micro_f1"] = "no positives in any gold label or prediction: micro-F1 is 0/0"
    else:
        # micro-F1 over (response, label) cells = binary F1 on the flattened, masked cells
        micro = float(f1_score(tt, pp, average="binary", zero_division=0.0))
    if k_nan:
        notes["mean_kappa"] = f"{k_nan} of {len(per)} labels skipped (kappa undefined)"
    if f_nan:
        notes["macro_f1"] = f"{f_nan} of {len(per)} labels skipped (F1 undefined)"
    return per, MultiLabelMetrics(
        n_labels=len(per),
        mean_kappa=mean_k,
        macro_f1=macro,
        micro_f1=micro,
        accuracy=acc,
        n_kappa_undefined=k_nan,
        n_f1_undefined=f_nan,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------------------
# Score metrics
# --------------------------------------------------------------------------------------------------------
def score_metrics(
    human: Sequence[int] | np.ndarray,
    machine: Sequence[int] | np.ndarray,
    scale_min: int,
    scale_max: int,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    smd_method: SmdMethod = "pooled",
    constant_prediction: ConstantPolicy = "zero",
    n_boot: int = DEFAULTS.n_boot,
    ci: float = DEFAULTS.ci,
    seed: int = DEFAULTS.seed,
) -> ScoreMetrics:
    """All score metrics between integer human and machine scores on the scale ``scale_min..scale_max``.

    ``tolerance`` is the adjacent-agreement distance; ``n_boot = 0`` skips the bootstrap intervals.
    """
    return score_metrics_with_replicates(
        human,
        machine,
        scale_min,
        scale_max,
        tolerance=tolerance,
        smd_method=smd_method,
        constant_prediction=constant_prediction,
        n_boot=n_boot,
        ci=ci,
        seed=seed,
    )[0]


def _empty_score_metrics(scale_min: int, scale_max: int) -> ScoreMetrics:
    k = scale_max - scale_min + 1
    nan = math.nan
    return ScoreMetrics(
        0,
        scale_min,
        scale_max,
        nan,
        nan,
        nan,
        nan,
        nan,
        nan,
        nan,
        nan,
        nan,
        nan,
        nan,
        nan,
        np.zeros((k, k), dtype=int).tolist(),
        notes={"all": "no responses"},
    )


def _point_score_metrics(
    h: np.ndarray,
    m: np.ndarray,
    scale_min: int,
    scale_max: int,
    *,
    tolerance: int,
    smd_method: SmdMethod,
    constant_prediction: ConstantPolicy,
) -> ScoreMetrics:
    """The point estimates (no intervals) of ``n >= 1`` responses, with a note for each undefined value."""
    labels = list(range(scale_min, scale_max + 1))
    n = len(h)
    notes: dict[str, str] = {}
    value, why = kappa(h, m, labels=labels, weights="quadratic", constant_prediction=constant_prediction)
    if why:
        notes["qwk"] = why
    pearson, spearman, why = correlations(h, m)
    if why:
        notes["pearson"] = notes["spearman"] = why
    if n < 2:
        notes["smd"] = "fewer than 2 responses"
    smd = standardized_mean_difference(h, m, smd_method)
    if n >= 2 and math.isnan(smd):
        notes["smd"] = (
            "both score sets are constant: SMD is 0/0"
            if smd_method == "pooled"
            else "human scores are constant: SMD is undefined"
        )
    return ScoreMetrics(
        n=n,
        scale_min=scale_min,
        scale_max=scale_max,
        qwk=value,
        exact=exact_agreement(h, m),
        adjacent=adjacent_agreement(h, m, tolerance),
        mae=mean_absolute_error(h, m),
        rmse=root_mean_squared_error(h, m),
        pearson=pearson,
        spearman=spearman,
        smd=smd,
        mean_human=float(h.mean()),
        mean_machine=float(m.mean()),
        sd_human=float(h.std(ddof=1)) if n > 1 else math.nan,
        sd_machine=float(m.std(ddof=1)) if n > 1 else math.nan,
        confusion=confusion_counts(h, m, labels).tolist(),
        notes=notes,
    )


def score_metrics_with_replicates(
    human: Sequence[int] | np.ndarray,
    machine: Sequence[int] | np.ndarray,
    scale_min: int,
    scale_max: int,
    *,
    tolerance: int,
    smd_method: SmdMethod,
    constant_prediction: ConstantPolicy,
    n_boot: int,
    ci: float,
    seed: int,
) -> tuple[ScoreMetrics, dict[str, np.ndarray]]:
    """:func:`score_metrics` plus the bootstrap replicates (reused by the across-task intervals)."""
    h = np.asarray(human).astype(np.int64)
    m = np.asarray(machine).astype(np.int64)
    if h.shape != m.shape:
        raise ValueError(f"human and machine have different lengths ({len(h)} vs {len(m)})")
    labels = list(range(scale_min, scale_max + 1))
    check_in_scale(h, labels, "human")
    check_in_scale(m, labels, "machine")
    if len(h) == 0:
        return _empty_score_metrics(scale_min, scale_max), {}
    out = _point_score_metrics(
        h,
        m,
        scale_min,
        scale_max,
        tolerance=tolerance,
        smd_method=smd_method,
        constant_prediction=constant_prediction,
    )
    reps: dict[str, np.ndarray] = {}
    if n_boot > 0 and len(h) >= 2:
        reps = bootstrap_score_metrics(
            h,
            m,
            scale_min,
            scale_max,
            n_boot=n_boot,
            seed=seed,
            tolerance=tolerance,
            smd_method=smd_method,
            constant_prediction=constant_prediction,
        )
        out.ci = {k: percentile_interval(v, ci) for k, v in reps.items()}
        for k, iv in out.ci.items():
            if iv.n_undefined:
                out.notes[f"ci_{k}"] = f"{iv.n_undefined} of {n_boot} bootstrap resamples undefined, left out"
    return out, reps
