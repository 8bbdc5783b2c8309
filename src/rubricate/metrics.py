r"""Reliability metrics: how well a scorer (the student, the agents, or a second human) agrees with humans.

Every number in a rubricate report is defined here. Notation: for one task and one score scale,
``h_i`` is the human (gold, rater 1) score of response ``i`` and ``m_i`` the machine score, ``i = 1..n``;
scores are integers on the scale ``min..max`` (``K = max - min + 1`` categories). The formulas are those of
RSMTool's documentation ("Evaluation metrics"), computed with scikit-learn and scipy.

Per label (binary targets: analytic criteria and cumulative ordinal indicators ``score>=k``, see
:mod:`rubricate.labels`). Predicted probabilities are turned into 0/1 at ``threshold`` (default 0.5,
``p >= threshold`` is 1); missing gold labels (NaN) are masked out, label by label.

* **Cohen's κ** (unweighted) ``κ = (p_o - p_e) / (1 - p_e)`` where ``p_o`` is the observed proportion of
  agreement and ``p_e = Σ_c P(h=c)·P(m=c)`` the agreement expected by chance from the two marginals
  (``sklearn.metrics.cohen_kappa_score``).
* **accuracy** ``p_o``; **F1** ``2·TP / (2·TP + FP + FN)`` with 1 the positive class.

Per task, multi-label (the four numbers of the UniMoE paper, all at ``threshold``):

* **mean κ** - mean over labels of Cohen's κ; labels whose κ is undefined (see *edge cases*) are skipped
  and counted in ``n_kappa_undefined``;
* **macro-F1** - mean over labels of the per-label F1 (undefined F1 skipped and counted);
* **micro-F1** - F1 of all (response, label) cells pooled: ``2·ΣTP / (2·ΣTP + ΣFP + ΣFN)``;
* **accuracy** - mean over labels of the per-label accuracy.

Per task and score scale:

* **QWK** (quadratic weighted κ) ``κ_w = 1 - Σ_ij w_ij O_ij / Σ_ij w_ij E_ij`` with ``O`` the K×K
  confusion matrix of proportions (rows human, columns machine), ``E_ij = O_i· O_·j`` the matrix expected
  by chance and ``w_ij = (i - j)²``. The categories are always the full scale ``min..max`` (sklearn's
  ``labels=``), so a score level nobody used still counts in the weights. Scores outside the scale are an
  error, never silently dropped.
* **exact agreement** ``P(h = m)``; **adjacent agreement** ``P(|h - m| <= tolerance)`` (``tolerance=1``).
* **MAE** ``mean |m - h|``; **RMSE** ``sqrt(mean (m - h)²)``.
* **Pearson r** and **Spearman ρ** (``scipy.stats.pearsonr`` / ``spearmanr``; ties get average ranks).
* **SMD** (standardized mean difference, RSMTool's definition for system scores)
  ``SMD = (mean(m) - mean(h)) / sqrt((sd(h)² + sd(m)²) / 2)`` (``smd_method="pooled"``, SDs with
  ``ddof=1``); ``smd_method="human"`` divides by ``sd(h)`` only. Positive SMD: the machine scores higher.
  RSMTool flags |SMD| > 0.15 as a notable difference.

Across tasks (over every (task, scale) pair):

* **mean QWK** - arithmetic mean;
* **Fisher-z mean QWK** - the Kaggle ASAP official average: each κ is clipped to ``[-0.999, 0.999]``,
  transformed ``z = ½·ln((1+κ)/(1-κ)) = atanh(κ)``, averaged (optionally weighted by ``n``: Kaggle's
  weighting, weights normalised to mean 1), and transformed back ``κ̄ = tanh(z̄)``.

Second rater (when records carry ``rater2``): **human–human** metrics are the same score metrics with rater 2
in the machine's seat (``h`` = rater 1). The machine's **degradation** is, per metric, *machine–human minus
human–human*, both computed on the double-scored responses only (as RSMTool does), so that they describe
the same responses; its interval is a *paired* bootstrap (both comparisons on the same resamples). For
agreement metrics (QWK, exact, adjacent, r, ρ) a negative degradation means the
machine agrees less than two humans; for MAE / RMSE a positive one means it errs more; for SMD compare
the absolute values.

Uncertainty: **bootstrap 95% confidence intervals** - percentile bootstrap over responses (``n_boot``
resamples with replacement of the n responses, seeded by ``seed``; the interval is the
``(1-ci)/2`` and ``(1+ci)/2`` quantiles of the resampled statistic). Resamples are drawn as one index
matrix and the statistics are computed for all of them at once (confusion-matrix counts for κ, moments
for r and SMD, average ranks of the categories for ρ - every score metric is a function of the K×K
confusion matrix, so one matrix per resample is all that is needed). Across-task intervals resample responses within each task
(stratified), so each replicate gives one value per task, aggregated as above.

Comparing two scorers (:func:`compare_systems`, ``rubricate report --against``): per task and scale the
difference ``QWK_A - QWK_B``, and across tasks the difference of the means and of the Fisher-z means, each
with a **paired** percentile bootstrap interval: one resample of the responses per replicate scores both
scorers, so the test-set luck the two share cancels. ``share_a_better`` is the fraction of replicates with
a positive difference.

Subgroups: when a group column is given (a key of ``Record.metadata``), the score metrics are repeated for
each group value (score scales only), with its ``n`` and intervals. Responses without a value form
the group ``"(missing)"``.

Edge cases (never a silent 0; every undefined value is NaN - ``null`` in JSON - with a reason in ``notes``):

* ``n = 0`` - every metric is NaN ("no responses").
* **constant human scores** (one category among the responses) - κ and QWK are undefined: ``p_o = p_e`` by
  construction whatever the machine does (or 0/0 when the machine is constant too) -> NaN. Pearson,
  Spearman are NaN (zero variance); SMD is NaN if both SDs are 0.
* **constant machine scores, varying human scores** - κ is *exactly* 0 by construction (agreement equals
  chance), and that is the honest value: a collapsed model has learned nothing. It is reported as 0 with
  a note; ``constant_prediction="nan"`` reports NaN instead. (Skipping it would reward a collapsed model
  in the mean κ.) Pearson and Spearman are NaN with a note.
* ``n < 2`` - SD, Pearson, Spearman, SMD are NaN.
* F1 with no positive in either gold or prediction is 0/0 -> NaN with a note (skipped in macro-F1).
* Aggregates (mean κ, macro-F1, across-task means) skip NaN values and report how many were skipped.
* A bootstrap replicate can be degenerate (e.g. a resample with constant human scores); such replicates
  are left out of the percentiles and their share is recorded in the notes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

from rubricate.data.records import Record
from rubricate.errors import InputError
from rubricate.labels import DEFAULT_THRESHOLD, LabelEncoding
from rubricate.tasks import Task, TaskRegistry

KappaWeights = Literal["quadratic", "linear"] | None
SmdMethod = Literal["pooled", "human"]
ConstantPolicy = Literal["zero", "nan"]
MissingPolicy = Literal["error", "drop"]

DEFAULT_N_BOOT = 1000
DEFAULT_CI = 0.95
DEFAULT_SEED = 0
DEFAULT_TOLERANCE = 1
KAPPA_CLIP = 0.999
MISSING_GROUP = "(missing)"

#: score metrics that get bootstrap intervals and a degradation value
SCORE_METRICS = ("qwk", "exact", "adjacent", "mae", "rmse", "pearson", "spearman", "smd")


# --------------------------------------------------------------------------------------------------------
# Result types (dataclasses; ``to_dict`` gives JSON-safe dicts: NaN -> None)
# --------------------------------------------------------------------------------------------------------
def json_safe(obj: Any) -> Any:
    """Recursively convert dataclasses / numpy values to JSON-able Python; NaN and inf become None."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: json_safe(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


@dataclass
class Interval:
    """A bootstrap percentile interval (``low``, ``high``) at level ``level`` from ``n_boot`` resamples."""

    low: float
    high: float
    level: float = DEFAULT_CI
    n_boot: int = DEFAULT_N_BOOT
    n_undefined: int = 0  # resamples where the statistic was undefined (left out of the percentiles)

    def contains(self, value: float) -> bool:
        return bool(self.low - 1e-12 <= value <= self.high + 1e-12)


@dataclass
class LabelMetrics:
    """Agreement on one binary target (criterion or ``scale>=k`` indicator)."""

    name: str
    n: int
    kappa: float
    accuracy: float
    f1: float
    gold_rate: float  # share of positives in the gold labels
    pred_rate: float  # share of positives in the predictions
    notes: dict[str, str] = field(default_factory=dict)


@dataclass
class MultiLabelMetrics:
    """The UniMoE paper's four task-level numbers over the task's binary targets."""

    n_labels: int
    mean_kappa: float
    macro_f1: float
    micro_f1: float
    accuracy: float
    n_kappa_undefined: int = 0
    n_f1_undefined: int = 0
    ci: dict[str, Interval] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


@dataclass
class ScoreMetrics:
    """Agreement between two sets of integer scores on one scale (rows of ``confusion``: human)."""

    n: int
    scale_min: int
    scale_max: int
    qwk: float
    exact: float
    adjacent: float
    mae: float
    rmse: float
    pearson: float
    spearman: float
    smd: float
    mean_human: float
    mean_machine: float
    sd_human: float
    sd_machine: float
    confusion: list[list[int]]
    ci: dict[str, Interval] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def get(self, metric: str) -> float:
        return float(getattr(self, metric))


@dataclass
class ScaleReport:
    """Everything about one score scale of one task."""

    scale_id: str
    machine: ScoreMetrics
    human_human: ScoreMetrics | None = None
    machine_double_scored: ScoreMetrics | None = None  # machine vs rater 1 on the double-scored responses
    degradation: dict[str, float] | None = None  # machine - human-human, per metric
    degradation_ci: dict[str, Interval] = field(default_factory=dict)  # paired bootstrap (same resamples)
    subgroups: dict[str, ScoreMetrics] = field(default_factory=dict)


@dataclass
class TaskReport:
    task_id: str
    n_gold: int
    n_predicted: int
    n_matched: int
    labels: list[LabelMetrics]
    multilabel: MultiLabelMetrics | None
    scales: list[ScaleReport]
    notes: dict[str, str] = field(default_factory=dict)


@dataclass
class AggregateQWK:
    """Mean and Fisher-z mean of QWK over (task, scale) pairs."""

    n_entries: int
    mean: float
    fisher_z: float
    fisher_z_weighted: float
    n_undefined: int = 0
    entries: list[dict[str, Any]] = field(default_factory=list)  # task_id, scale_id, n, qwk
    ci: dict[str, Interval] = field(default_factory=dict)


@dataclass
class AcrossTasks:
    machine: AggregateQWK
    human_human: AggregateQWK | None = None
    degradation: dict[str, float] | None = None  # machine (double-scored) - human-human, per aggregate
    degradation_ci: dict[str, Interval] = field(default_factory=dict)  # paired bootstrap
    multilabel_mean: dict[str, float] = field(default_factory=dict)  # mean over tasks of the UniMoE four
    score_means: dict[str, float] = field(default_factory=dict)  # mean over (task, scale) of each metric


@dataclass
class Report:
    """A complete reliability report; ``to_dict`` is what ``report.json`` holds."""

    title: str
    machine_label: str
    tasks: list[TaskReport]
    across: AcrossTasks
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(self)

    def task(self, task_id: str) -> TaskReport:
        for t in self.tasks:
            if t.task_id == task_id:
                return t
        raise KeyError(task_id)


# --------------------------------------------------------------------------------------------------------
# Kappa
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


def _check_in_labels(x: np.ndarray, labels: Sequence[int], who: str) -> None:
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
    Undefined cases (see the module docstring) give NaN with the reason; a constant machine gives 0 with a
    note (or NaN when ``constant_prediction="nan"``).
    """
    h = np.asarray(human)
    m = np.asarray(machine)
    if h.shape != m.shape:
        raise ValueError(f"human and machine have different lengths ({len(h)} vs {len(m)})")
    if labels is None:
        labels = sorted(set(h.tolist()) | set(m.tolist()))
    labels = list(labels)
    _check_in_labels(h, labels, "human")
    _check_in_labels(m, labels, "machine")
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


# --------------------------------------------------------------------------------------------------------
# Per-label and multi-label metrics
# --------------------------------------------------------------------------------------------------------
def _to_binary(pred: np.ndarray, threshold: float) -> np.ndarray:
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
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_prob_or_pred, dtype=np.float64)
    if t.shape != p.shape:
        raise ValueError(f"label '{name}': {len(t)} gold values vs {len(p)} predictions")
    mask = ~np.isnan(t)
    if np.isnan(p[mask]).any():
        raise ValueError(f"label '{name}': {int(np.isnan(p[mask]).sum())} predictions are missing (NaN)")
    t = t[mask].astype(int)
    yp = _to_binary(p[mask], threshold)
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
    pp = _to_binary(p[mask], threshold)
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


def score_metrics(
    human: Sequence[int] | np.ndarray,
    machine: Sequence[int] | np.ndarray,
    scale_min: int,
    scale_max: int,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    smd_method: SmdMethod = "pooled",
    constant_prediction: ConstantPolicy = "zero",
    n_boot: int = DEFAULT_N_BOOT,
    ci: float = DEFAULT_CI,
    seed: int = DEFAULT_SEED,
) -> ScoreMetrics:
    """All score metrics between integer human and machine scores on the scale ``scale_min..scale_max``.

    ``tolerance`` is the adjacent-agreement distance; ``n_boot = 0`` skips the bootstrap intervals.
    """
    return _score_metrics(
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


def _score_metrics(
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
    _check_in_labels(h, labels, "human")
    _check_in_labels(m, labels, "machine")
    n = len(h)
    notes: dict[str, str] = {}
    conf = confusion_counts(h, m, labels) if n else np.zeros((len(labels), len(labels)), dtype=int)
    if n == 0:
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
            conf.tolist(),
            notes={"all": "no responses"},
        ), {}
    qwk, why = kappa(h, m, labels=labels, weights="quadratic", constant_prediction=constant_prediction)
    if why:
        notes["qwk"] = why
    d = (m - h).astype(np.float64)
    pearson = spearman = math.nan
    if n < 2:
        notes["pearson"] = notes["spearman"] = notes["smd"] = "fewer than 2 responses"
    elif h.std() == 0 or m.std() == 0:
        which = "human" if h.std() == 0 else "machine"
        notes["pearson"] = notes["spearman"] = f"{which} scores are constant: correlation undefined"
    else:
        pearson = float(stats.pearsonr(h, m).statistic)
        spearman = float(stats.spearmanr(h, m).statistic)
    smd = standardized_mean_difference(h, m, smd_method)
    if n >= 2 and math.isnan(smd):
        notes["smd"] = (
            "both score sets are constant: SMD is 0/0"
            if smd_method == "pooled"
            else "human scores are constant: SMD is undefined"
        )
    out = ScoreMetrics(
        n=n,
        scale_min=scale_min,
        scale_max=scale_max,
        qwk=qwk,
        exact=float(np.mean(d == 0)),
        adjacent=float(np.mean(np.abs(d) <= tolerance)),
        mae=float(np.mean(np.abs(d))),
        rmse=float(np.sqrt(np.mean(d**2))),
        pearson=pearson,
        spearman=spearman,
        smd=smd,
        mean_human=float(h.mean()),
        mean_machine=float(m.mean()),
        sd_human=float(h.std(ddof=1)) if n > 1 else math.nan,
        sd_machine=float(m.std(ddof=1)) if n > 1 else math.nan,
        confusion=conf.tolist(),
        notes=notes,
    )
    reps: dict[str, np.ndarray] = {}
    if n_boot > 0 and n >= 2:
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
                notes[f"ci_{k}"] = f"{iv.n_undefined} of {n_boot} bootstrap resamples undefined, left out"
    return out, reps


# --------------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------------
def _scale_seed(seed: int, t_index: int, s_index: int) -> int:
    """The bootstrap seed of the ``s_index``-th scale of the ``t_index``-th task: distinct per scale, and the
    same in :func:`evaluate` and :func:`compare_systems`."""
    return seed + 104729 * t_index + 15485863 * s_index


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, n)`` resample indices (with replacement) from a seeded generator."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def resample_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """``(B, n)`` multiplicities: how often each response appears in each resample of ``idx``."""
    b = idx.shape[0]
    flat = (idx + (np.arange(b)[:, None] * n)).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def percentile_interval(values: np.ndarray, level: float = DEFAULT_CI) -> Interval:
    """Percentile interval of bootstrap replicates, leaving out undefined (NaN) replicates."""
    v = np.asarray(values, dtype=np.float64)
    ok = v[~np.isnan(v)]
    n_undef = int(len(v) - len(ok))
    if len(ok) == 0:
        return Interval(math.nan, math.nan, level, len(v), n_undef)
    lo, hi = np.quantile(ok, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(lo), float(hi), level, len(v), n_undef)


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
    Spearman ρ is Pearson r of the categories' average ranks. Agrees with :func:`score_metrics` (sklearn /
    scipy) on every matrix - checked in the tests.
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


def bootstrap_score_metrics(
    human: np.ndarray,
    machine: np.ndarray,
    scale_min: int,
    scale_max: int,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_SEED,
    tolerance: int = DEFAULT_TOLERANCE,
    smd_method: SmdMethod = "pooled",
    constant_prediction: ConstantPolicy = "zero",
    idx: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Replicates ``(n_boot,)`` of every score metric over resampled responses, computed all at once.

    One ``(n_boot, n)`` matrix of multiplicities times the one-hot (human, machine) cell of each response
    gives a K×K confusion matrix per resample; :func:`score_metrics_from_confusion` does the rest.
    """
    h = np.asarray(human, dtype=np.int64)
    m = np.asarray(machine, dtype=np.int64)
    n = len(h)
    k = scale_max - scale_min + 1
    if idx is None:
        idx = bootstrap_indices(n, n_boot, seed)
    w = resample_counts(idx, n)
    onehot = np.zeros((n, k * k))
    onehot[np.arange(n), (h - scale_min) * k + (m - scale_min)] = 1.0
    counts = (w @ onehot).reshape(-1, k, k)
    return score_metrics_from_confusion(
        counts, scale_min, tolerance=tolerance, smd_method=smd_method, constant_prediction=constant_prediction
    )


def bootstrap_multilabel(
    y_true: np.ndarray,
    y_pred01: np.ndarray,
    *,
    n_boot: int,
    seed: int,
    constant_prediction: ConstantPolicy = "zero",
) -> dict[str, np.ndarray]:
    """Replicates of the UniMoE four (mean κ, macro-F1, micro-F1, accuracy) over resampled responses.

    Per label and resample: the 2×2 confusion counts of the non-missing cells (multiplicities times the
    one-hot cell of each response); the same skip rules as the point estimates (undefined κ / F1 are left
    out of the means).
    """
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred01, dtype=np.float64)
    n, n_labels = t.shape
    w = resample_counts(bootstrap_indices(n, n_boot, seed), n)
    valid = ~np.isnan(t)
    cell = np.where(valid, np.nan_to_num(t) * 2 + p, 4).astype(np.int64)  # 0 TN, 1 FP, 2 FN, 3 TP, 4 missing
    onehot = np.zeros((n, n_labels, 5))
    onehot[np.arange(n)[:, None], np.arange(n_labels)[None, :], cell] = 1.0
    counts = (w @ onehot.reshape(n, -1)).reshape(-1, n_labels, 5)[..., :4]  # (B, L, 4)
    tn, fp, fn, tp = (counts[..., q] for q in range(4))
    kap = kappa_from_confusion(counts.reshape(*counts.shape[:-1], 2, 2), None, constant_prediction)
    nv = counts.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        acc = np.where(nv > 0, (tp + tn) / nv, np.nan)
        micro_den = (2 * tp + fp + fn).sum(axis=1)
        micro = np.where(micro_den > 0, 2 * tp.sum(axis=1) / micro_den, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {
            "mean_kappa": np.nanmean(kap, axis=1),
            "macro_f1": np.nanmean(f1, axis=1),
            "micro_f1": micro,
            "accuracy": np.nanmean(acc, axis=1),
        }


# --------------------------------------------------------------------------------------------------------
# Predictions and the high-level entry point
# --------------------------------------------------------------------------------------------------------
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
    source: str = ""  # where the row came from (file:line), for error messages

    @property
    def key(self) -> tuple[str, str]:
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
        source=str(get("source", "") or ""),
    )


def rater2_as_predictions(records: Sequence[Record]) -> tuple[list[Record], list[Predicted]]:
    """Human-human mode: rater 2 in the machine's seat, rater 1 as gold.

    Returns the gold records that have a second rater, with their labels restricted to the keys rater 2
    scored (a criterion only rater 1 judged has nothing to be compared with), and rater 2 as predictions.
    """
    from dataclasses import replace

    gold, preds = [], []
    for r in records:
        if not r.rater2:
            continue
        gold.append(replace(r, labels={k: v for k, v in r.labels.items() if k in r.rater2}))
        preds.append(Predicted(r.task_id, r.response_id, dict(r.rater2), None, "rater2"))
    return gold, preds


def _group_value(r: Record, column: str) -> str:
    v = r.metadata.get(column)
    return MISSING_GROUP if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _aggregate(
    entries: list[dict[str, Any]], reps: dict[tuple[str, str], np.ndarray], ci: float
) -> AggregateQWK:
    qwks = np.array([e["qwk"] for e in entries], dtype=np.float64)
    ns = np.array([e["n"] for e in entries], dtype=np.float64)
    n_undef = int(np.isnan(qwks).sum())
    ok = ~np.isnan(qwks)
    agg = AggregateQWK(
        n_entries=len(entries),
        mean=float(qwks[ok].mean()) if ok.any() else math.nan,
        fisher_z=fisher_z_mean(qwks) if ok.any() else math.nan,
        fisher_z_weighted=fisher_z_mean(qwks, ns) if ok.any() else math.nan,
        n_undefined=n_undef,
        entries=entries,
    )
    agg.ci = {k: percentile_interval(v, ci) for k, v in _aggregate_replicates(entries, reps).items()}
    return agg


def _aggregate_replicates(
    entries: list[dict[str, Any]], reps: dict[tuple[str, str], np.ndarray]
) -> dict[str, np.ndarray]:
    """Bootstrap replicates of the across-task mean and Fisher-z mean (empty when an entry has none)."""
    if not reps or len(reps) != len(entries):
        return {}
    mat = np.stack([reps[(e["task_id"], e["scale_id"])] for e in entries], axis=1)  # (B, E)
    ns = np.array([e["n"] for e in entries], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {
            "mean": np.nanmean(mat, axis=1),
            "fisher_z": fisher_z_mean(mat, axis=1),
            "fisher_z_weighted": fisher_z_mean(mat, ns, axis=1),
        }


def evaluate(
    gold: Sequence[Record],
    predictions: Sequence[Any],
    tasks: TaskRegistry,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    tolerance: int = DEFAULT_TOLERANCE,
    smd_method: SmdMethod = "pooled",
    constant_prediction: ConstantPolicy = "zero",
    n_boot: int = DEFAULT_N_BOOT,
    ci: float = DEFAULT_CI,
    seed: int = DEFAULT_SEED,
    group_column: str | None = None,
    missing: MissingPolicy = "error",
    compare_rater2: bool = True,
    title: str = "Reliability report",
    machine_label: str = "machine",
) -> Report:
    """Score ``predictions`` against the ``gold`` records of every task they cover.

    * Joins are by ``(task_id, response_id)``. ``missing="error"`` (default) raises :class:`InputError` for a
      gold record without prediction, a prediction without gold, or a predicted score absent for a scale
      that has a gold score; ``missing="drop"`` leaves them out and records the counts in the task notes.
    * Per-label metrics use the encoded binary targets (``LabelEncoding``): predicted probabilities when a
      prediction carries ``probs`` for every label, otherwise the encoding of the predicted scores.
    * Score metrics use the decoded scores per scale; with ``compare_rater2`` and records carrying
      ``rater2``, human-human metrics and the degradation are added.
    * ``group_column`` (a ``Record.metadata`` key) adds a subgroup breakdown per scale.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    preds = [as_predicted(p) for p in predictions]
    pred_by_key: dict[tuple[str, str], Predicted] = {}
    for p in preds:
        if (p.task_id, p.response_id) in pred_by_key:
            raise InputError(
                f"duplicate prediction for task '{p.task_id}', response '{p.response_id}'",
                file=p.source or None,
                column="response_id",
            )
        if p.task_id not in tasks:
            raise InputError(
                f"prediction for unknown task '{p.task_id}' (known: {tasks.ids[:20]})",
                file=p.source or None,
                column="task_id",
            )
        pred_by_key[(p.task_id, p.response_id)] = p
    gold_by_task: dict[str, list[Record]] = {}
    seen: set[tuple[str, str]] = set()
    for r in gold:
        if r.key in seen:
            raise InputError(
                f"duplicate gold record for task '{r.task_id}', response '{r.response_id}'",
                column="response_id",
            )
        seen.add(r.key)
        gold_by_task.setdefault(r.task_id, []).append(r)
    extra = [k for k in pred_by_key if k not in seen]
    if extra and missing == "error":
        raise InputError(
            f"{len(extra)} predictions have no gold record, e.g. {extra[:5]} "
            f"(use missing='drop' / --allow-missing to leave them out)",
            file=pred_by_key[extra[0]].source or None,
        )
    if group_column is not None and not any(group_column in r.metadata for r in gold):
        raise InputError(
            f"no gold record has the group column '{group_column}' in its metadata "
            f"(available: {sorted({k for r in gold for k in r.metadata})[:20]})",
            column=group_column,
        )
    pred_tasks = {p.task_id for p in preds}
    task_ids = [t for t in gold_by_task if t in pred_tasks]
    if not task_ids:
        raise InputError("no task has both gold records and predictions")
    if missing == "error":
        no_pred = [t for t in gold_by_task if t not in pred_tasks and t in tasks]
        if no_pred:
            raise InputError(
                f"gold records of tasks {no_pred[:10]} have no predictions at all "
                f"(use missing='drop' / --allow-missing to report only the predicted tasks)"
            )

    task_reports: list[TaskReport] = []
    boot_machine: dict[tuple[str, str], np.ndarray] = {}
    boot_hh: dict[tuple[str, str], np.ndarray] = {}
    boot_md: dict[tuple[str, str], np.ndarray] = {}
    entries_m: list[dict[str, Any]] = []
    entries_hh: list[dict[str, Any]] = []
    entries_md: list[dict[str, Any]] = []
    report_notes: list[str] = []
    extra_by_task: dict[str, int] = {}
    for k in extra:
        extra_by_task[k[0]] = extra_by_task.get(k[0], 0) + 1

    for t_index, task_id in enumerate(task_ids):
        task: Task = tasks.get(task_id)
        enc = LabelEncoding.from_task(task)
        notes: dict[str, str] = {}
        recs = gold_by_task[task_id]
        for r in recs:
            problems = task.check_labels(r.labels)
            if problems:
                raise InputError(
                    f"gold labels of response '{r.response_id}': {'; '.join(problems)}", column="labels"
                )
        matched = [(r, pred_by_key[r.key]) for r in recs if r.key in pred_by_key]
        n_unpred = len(recs) - len(matched)
        if n_unpred:
            if missing == "error":
                miss = [r.response_id for r in recs if r.key not in pred_by_key]
                raise InputError(
                    f"task '{task_id}': {n_unpred} gold responses have no prediction, e.g. "
                    f"{miss[:5]} (use missing='drop' / --allow-missing)"
                )
            notes["coverage"] = f"{n_unpred} of {len(recs)} gold responses have no prediction (left out)"
        if extra_by_task.get(task_id):
            notes["extra_predictions"] = f"{extra_by_task[task_id]} predictions without gold (left out)"
        for r, p in matched:
            problems = task.check_labels(p.scores)
            if problems:
                raise InputError(
                    f"prediction for response '{r.response_id}': {'; '.join(problems)}",
                    file=p.source or None,
                    column="scores",
                )

        # ---- per label (binary targets) ----
        labels_out: list[LabelMetrics] = []
        ml: MultiLabelMetrics | None = None
        if enc.n_labels and matched:
            y_true = enc.encode_many([r.labels for r, _ in matched]).astype(np.float64)
            y_pred = np.full_like(y_true, np.nan)
            n_from_probs = 0
            for i, (_, p) in enumerate(matched):
                if p.probs and all(nm in p.probs for nm in enc.names):
                    y_pred[i] = [float(p.probs[nm]) for nm in enc.names]
                    n_from_probs += 1
                else:
                    y_pred[i] = enc.encode(p.scores)
            # a label with a gold value but no predicted value: only possible when scores lack a key
            lack = ~np.isnan(y_true) & np.isnan(y_pred)
            if lack.any():
                if missing == "error":
                    i, j = np.argwhere(lack)[0]
                    raise InputError(
                        f"task '{task_id}': response '{matched[i][0].response_id}' has a gold "
                        f"'{enc.specs[j].source}' but the prediction has none",
                        column="scores",
                        file=matched[i][1].source or None,
                    )
                y_true[lack] = np.nan
                notes["missing_label_predictions"] = (
                    f"{int(lack.sum())} (response, label) cells without a prediction left out"
                )
            if 0 < n_from_probs < len(matched):
                notes["probs"] = (
                    f"{n_from_probs} of {len(matched)} predictions carried probabilities; "
                    "the rest were evaluated from their scores"
                )
            labels_out, ml = multilabel_metrics(y_true, y_pred, enc.names, threshold, constant_prediction)
            if n_boot > 0 and len(matched) >= 2:
                reps = bootstrap_multilabel(
                    y_true,
                    _to_binary(np.nan_to_num(y_pred), threshold).astype(float),
                    n_boot=n_boot,
                    seed=seed + 7919 * t_index,
                    constant_prediction=constant_prediction,
                )
                ml.ci = {k: percentile_interval(v, ci) for k, v in reps.items()}

        # ---- per scale (decoded scores) ----
        scales_out: list[ScaleReport] = []
        kw = {
            "tolerance": tolerance,
            "smd_method": smd_method,
            "constant_prediction": constant_prediction,
            "n_boot": n_boot,
            "ci": ci,
        }
        for s_index, sc in enumerate(task.scales):
            both = [(r, p) for r, p in matched if sc.id in r.labels and sc.id in p.scores]
            lacking = [r.response_id for r, p in matched if sc.id in r.labels and sc.id not in p.scores]
            if lacking:
                if missing == "error":
                    raise InputError(
                        f"task '{task_id}': {len(lacking)} predictions have no '{sc.id}' score, "
                        f"e.g. responses {lacking[:5]} (use missing='drop' / --allow-missing)",
                        column="scores",
                    )
                notes[f"missing_{sc.id}"] = f"{len(lacking)} predictions without a '{sc.id}' score left out"
            seed_s = _scale_seed(seed, t_index, s_index)
            h = np.array([r.labels[sc.id] for r, _ in both], dtype=np.int64)
            m = np.array([p.scores[sc.id] for _, p in both], dtype=np.int64)
            mach, reps = _score_metrics(h, m, sc.min, sc.max, seed=seed_s, **kw)
            sr = ScaleReport(scale_id=sc.id, machine=mach)
            key = (task_id, sc.id)
            entries_m.append({"task_id": task_id, "scale_id": sc.id, "n": mach.n, "qwk": mach.qwk})
            if reps:
                boot_machine[key] = reps["qwk"]
            # human-human and degradation on the double-scored responses
            dbl = [(r, p) for r, p in both if compare_rater2 and r.rater2 and sc.id in r.rater2]
            if dbl:
                h1 = np.array([r.labels[sc.id] for r, _ in dbl], dtype=np.int64)
                h2 = np.array([r.rater2[sc.id] for r, _ in dbl], dtype=np.int64)  # type: ignore[index]
                md = np.array([p.scores[sc.id] for _, p in dbl], dtype=np.int64)
                try:
                    # the same seed for both: paired resamples of the same responses
                    sr.human_human, reps_hh = _score_metrics(h1, h2, sc.min, sc.max, seed=seed_s + 1, **kw)
                except ValueError as e:
                    raise InputError(f"task '{task_id}': rater2 '{sc.id}': {e}", column="rater2") from None
                sr.machine_double_scored, reps_md = _score_metrics(
                    h1, md, sc.min, sc.max, seed=seed_s + 1, **kw
                )
                sr.degradation = {
                    k: sr.machine_double_scored.get(k) - sr.human_human.get(k) for k in SCORE_METRICS
                }
                entries_hh.append(
                    {"task_id": task_id, "scale_id": sc.id, "n": len(h1), "qwk": sr.human_human.qwk}
                )
                entries_md.append(
                    {"task_id": task_id, "scale_id": sc.id, "n": len(h1), "qwk": sr.machine_double_scored.qwk}
                )
                if reps_hh:
                    boot_hh[key], boot_md[key] = reps_hh["qwk"], reps_md["qwk"]
                    sr.degradation_ci = {
                        k: percentile_interval(reps_md[k] - reps_hh[k], ci) for k in SCORE_METRICS
                    }
            if group_column is not None:
                groups: dict[str, list[int]] = {}
                for i, (r, _) in enumerate(both):
                    groups.setdefault(_group_value(r, group_column), []).append(i)
                for g in sorted(groups):
                    ii = np.array(groups[g])
                    sr.subgroups[g] = _score_metrics(h[ii], m[ii], sc.min, sc.max, seed=seed_s + 2, **kw)[0]
            scales_out.append(sr)

        n_pred = len(matched) + extra_by_task.get(task_id, 0)
        task_reports.append(
            TaskReport(
                task_id=task_id,
                n_gold=len(recs),
                n_predicted=n_pred,
                n_matched=len(matched),
                labels=labels_out,
                multilabel=ml,
                scales=scales_out,
                notes=notes,
            )
        )

    skipped_tasks = [t for t in gold_by_task if t not in task_ids]
    if skipped_tasks:
        report_notes.append(f"tasks with gold records but no predictions, left out: {skipped_tasks}")
    across = AcrossTasks(machine=_aggregate(entries_m, boot_machine, ci))
    if entries_hh:
        across.human_human = _aggregate(entries_hh, boot_hh, ci)
        md_agg = _aggregate(entries_md, boot_md, ci)
        across.degradation = {
            k: getattr(md_agg, k) - getattr(across.human_human, k)
            for k in ("mean", "fisher_z", "fisher_z_weighted")
        }
        r_md, r_hh = _aggregate_replicates(entries_md, boot_md), _aggregate_replicates(entries_hh, boot_hh)
        across.degradation_ci = {k: percentile_interval(r_md[k] - r_hh[k], ci) for k in r_md}
    mls = [t.multilabel for t in task_reports if t.multilabel is not None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if mls:
            across.multilabel_mean = {
                k: float(np.nanmean([getattr(x, k) for x in mls]))
                for k in ("mean_kappa", "macro_f1", "micro_f1", "accuracy")
            }
        all_sc = [s.machine for t in task_reports for s in t.scales]
        if all_sc:
            across.score_means = {k: float(np.nanmean([x.get(k) for x in all_sc])) for k in SCORE_METRICS}
    settings = {
        "threshold": threshold,
        "tolerance": tolerance,
        "smd_method": smd_method,
        "constant_prediction": constant_prediction,
        "n_boot": n_boot,
        "ci": ci,
        "seed": seed,
        "group_column": group_column,
        "missing": missing,
        "kappa_clip": KAPPA_CLIP,
    }
    return Report(
        title=title,
        machine_label=machine_label,
        tasks=task_reports,
        across=across,
        settings=settings,
        notes=report_notes,
    )


# --------------------------------------------------------------------------------------------------------
# Paired comparison of two scorers on the same gold responses
# --------------------------------------------------------------------------------------------------------
@dataclass
class ScaleComparison:
    """QWK of scorers A and B on one (task, scale), their difference and its paired bootstrap interval."""

    task_id: str
    scale_id: str
    n: int
    qwk_a: float
    qwk_b: float
    diff: float  # qwk_a - qwk_b
    ci: Interval | None = None
    share_a_better: float = math.nan  # fraction of defined resamples with diff > 0


@dataclass
class Comparison:
    """Scorer A minus scorer B, per (task, scale) and across them (mean and Fisher-z mean QWK).

    Both scorers are judged on the same resampled responses (one index matrix per scale), so the interval
    is that of the *difference*: it is much narrower than two separate intervals would suggest whenever
    the two scorers err on the same responses.
    """

    label_a: str
    label_b: str
    entries: list[ScaleComparison]
    across: dict[str, dict[str, float]]  # 'mean' / 'fisher_z' -> {'a', 'b', 'diff', 'share_a_better'}
    ci: dict[str, Interval] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(self)


def _share_positive(diffs: np.ndarray) -> float:
    """Fraction of the defined (non-NaN) bootstrap differences that are > 0."""
    ok = diffs[~np.isnan(diffs)]
    return float((ok > 0).mean()) if len(ok) else math.nan


def compare_systems(
    gold: Sequence[Record],
    predictions_a: Sequence[Any],
    predictions_b: Sequence[Any],
    tasks: TaskRegistry,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    ci: float = DEFAULT_CI,
    seed: int = DEFAULT_SEED,
    constant_prediction: ConstantPolicy = "zero",
    label_a: str = "A",
    label_b: str = "B",
) -> Comparison:
    """Is scorer A better than scorer B on these responses? QWK differences with paired bootstrap CIs.

    Why paired: two models scored on the same 150 responses share most of their test-set luck; resampling
    responses once and scoring both on each resample removes that shared part, so a small but consistent
    gain can be told from noise. Joins are by ``(task_id, response_id)``; both scorers must predict every
    gold response of the tasks compared, and only tasks both cover are compared (an unmatched response is
    an :class:`InputError`, as in :func:`evaluate` with ``missing="error"``). ``share_a_better`` is the
    fraction of resamples in which A's statistic exceeds B's: a one-sided bootstrap support, not a p-value
    corrected for multiple comparisons.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1 for a comparison")
    by: list[dict[tuple[str, str], Predicted]] = []
    for who, preds in ((label_a, predictions_a), (label_b, predictions_b)):
        d: dict[tuple[str, str], Predicted] = {}
        for p in map(as_predicted, preds):
            if p.key in d:
                raise InputError(f"{who}: duplicate prediction for task '{p.task_id}', response "
                                 f"'{p.response_id}'", file=p.source or None, column="response_id")
            d[p.key] = p
        by.append(d)
    pa, pb = by
    covered = {k[0] for k in pa} & {k[0] for k in pb}
    gold_by_task: dict[str, list[Record]] = {}
    for r in gold:
        if r.task_id in covered:
            gold_by_task.setdefault(r.task_id, []).append(r)
    if not gold_by_task:
        raise InputError(f"no task has gold records and predictions from both {label_a} and {label_b}")

    entries: list[ScaleComparison] = []
    reps_a: list[np.ndarray] = []
    reps_b: list[np.ndarray] = []
    for t_index, task_id in enumerate(gold_by_task):
        task = tasks.get(task_id)
        recs = gold_by_task[task_id]
        for who, d in ((label_a, pa), (label_b, pb)):
            miss = [r.response_id for r in recs if r.key not in d]
            if miss:
                raise InputError(f"{who}: task '{task_id}': {len(miss)} gold responses have no prediction, "
                                 f"e.g. {miss[:5]}")
            for r in recs:
                problems = task.check_labels(d[r.key].scores)
                if problems:
                    raise InputError(f"{who}: prediction for response '{r.response_id}': {'; '.join(problems)}",
                                     file=d[r.key].source or None, column="scores")
        for s_index, sc in enumerate(task.scales):
            rows = [r for r in recs if sc.id in r.labels]
            if not rows:
                continue
            for who, d in ((label_a, pa), (label_b, pb)):
                lack = [r.response_id for r in rows if sc.id not in d[r.key].scores]
                if lack:
                    raise InputError(f"{who}: task '{task_id}': {len(lack)} predictions have no '{sc.id}' "
                                     f"score, e.g. responses {lack[:5]}", column="scores")
            h = np.array([r.labels[sc.id] for r in rows], dtype=np.int64)
            a = np.array([pa[r.key].scores[sc.id] for r in rows], dtype=np.int64)
            b = np.array([pb[r.key].scores[sc.id] for r in rows], dtype=np.int64)
            levels = list(range(sc.min, sc.max + 1))
            qa = kappa(h, a, labels=levels, weights="quadratic", constant_prediction=constant_prediction)[0]
            qb = kappa(h, b, labels=levels, weights="quadratic", constant_prediction=constant_prediction)[0]
            # evaluate() draws the same resamples for this (task, scale) when it sees the same tasks in order
            idx = bootstrap_indices(len(h), n_boot, _scale_seed(seed, t_index, s_index))
            ra = bootstrap_score_metrics(h, a, sc.min, sc.max, idx=idx, constant_prediction=constant_prediction)["qwk"]
            rb = bootstrap_score_metrics(h, b, sc.min, sc.max, idx=idx, constant_prediction=constant_prediction)["qwk"]
            reps_a.append(ra)
            reps_b.append(rb)
            d_reps = ra - rb
            entries.append(ScaleComparison(
                task_id=task_id, scale_id=sc.id, n=len(h), qwk_a=qa, qwk_b=qb, diff=qa - qb,
                ci=percentile_interval(d_reps, ci), share_a_better=_share_positive(d_reps)))

    qa_all = np.array([e.qwk_a for e in entries])
    qb_all = np.array([e.qwk_b for e in entries])
    ma, mb = np.stack(reps_a, axis=1), np.stack(reps_b, axis=1)  # (n_boot, entries)
    across: dict[str, dict[str, float]] = {}
    ci_out: dict[str, Interval] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name, point, rep in (
            ("mean", lambda q: float(np.nanmean(q)), lambda m: np.nanmean(m, axis=1)),
            ("fisher_z", lambda q: float(fisher_z_mean(q)), lambda m: fisher_z_mean(m, axis=1)),
        ):
            d_rep = rep(ma) - rep(mb)
            across[name] = {"a": point(qa_all), "b": point(qb_all), "diff": point(qa_all) - point(qb_all),
                            "share_a_better": _share_positive(d_rep)}
            ci_out[name] = percentile_interval(d_rep, ci)
    return Comparison(label_a=label_a, label_b=label_b, entries=entries, across=across, ci=ci_out,
                      settings={"n_boot": n_boot, "ci": ci, "seed": seed, "constant_prediction": constant_prediction,
                                "kappa_clip": KAPPA_CLIP})
