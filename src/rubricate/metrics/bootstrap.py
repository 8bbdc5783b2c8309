"""Percentile bootstrap over responses, with one documented seed scheme.

Every interval of a report comes from resampling the n responses of one (task, scale) with replacement
``n_boot`` times. Resamples are drawn as one ``(n_boot, n)`` index matrix and the statistics are computed
for all of them at once from one confusion matrix per resample (see :mod:`rubricate.metrics.formulas`).

Seed scheme (:class:`BootstrapConfig`): one base ``seed``; each stream of resamples gets its own seed,
derived from the base seed by named strides and offsets so that streams never share resamples by accident
and the same (task, scale) always draws the same resamples:

* the ``t``-th task's ``s``-th scale: ``seed + task_stride·t + scale_stride·s``
  (:meth:`~BootstrapConfig.scale_seed`).
  :func:`~rubricate.metrics.evaluate` and :func:`~rubricate.metrics.compare_systems` use the same
  derivation, so a comparison resamples what the report resampled;
* on that scale, the double-scored responses (human–human and machine on the same resamples, which is what
  makes the degradation interval *paired*) use ``+ double_scored_offset``, the subgroup breakdown
  ``+ subgroup_offset`` (:class:`Stream`);
* the ``t``-th task's binary labels: ``seed + label_task_stride·t`` (:meth:`~BootstrapConfig.label_seed`).

The strides are primes (the 10,000th, 1,000,000th and 1,000th) so that seeds of different (task, scale)
pairs do not coincide for any realistic number of tasks and scales.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from enum import Enum

import numpy as np

from rubricate.metrics.formulas import (
    DEFAULT_TOLERANCE,
    ConstantPolicy,
    SmdMethod,
    kappa_from_confusion,
    score_metrics_from_confusion,
)
from rubricate.metrics.results import Interval


class Stream(Enum):
    """Which responses of one (task, scale) a stream of resamples is drawn over."""

    MACHINE = "machine"  # every matched response: machine vs rater 1
    DOUBLE_SCORED = "double_scored"  # responses with a second rater: human-human and machine, paired
    SUBGROUPS = "subgroups"  # the subgroup breakdown


@dataclass(frozen=True)
class BootstrapConfig:
    """How many resamples, the interval level, the base seed, and the derivation of each stream's seed."""

    n_boot: int = 1000  # resamples per interval; 0 skips the intervals
    ci: float = 0.95  # interval level: the (1-ci)/2 and (1+ci)/2 quantiles of the replicates
    seed: int = 0  # the base seed every stream is derived from
    task_stride: int = 104729  # seed distance between consecutive tasks (scale streams)
    scale_stride: int = 15485863  # seed distance between consecutive scales of a task
    label_task_stride: int = 7919  # seed distance between consecutive tasks (binary-label streams)
    double_scored_offset: int = 1  # added to the scale seed for the double-scored responses
    subgroup_offset: int = 2  # added to the scale seed for the subgroup breakdown

    def scale_seed(self, t_index: int, s_index: int, stream: Stream = Stream.MACHINE) -> int:
        """Seed of ``stream`` on the ``s_index``-th scale of the ``t_index``-th task (module docstring)."""
        base = self.seed + self.task_stride * t_index + self.scale_stride * s_index
        offset = {
            Stream.MACHINE: 0,
            Stream.DOUBLE_SCORED: self.double_scored_offset,
            Stream.SUBGROUPS: self.subgroup_offset,
        }[stream]
        return base + offset

    def label_seed(self, t_index: int) -> int:
        """Seed of the binary-label resamples of the ``t_index``-th task."""
        return self.seed + self.label_task_stride * t_index


DEFAULTS = BootstrapConfig()


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, n)`` resample indices (with replacement) from a seeded generator."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def resample_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """``(B, n)`` multiplicities: how often each response appears in each resample of ``idx``."""
    b = idx.shape[0]
    flat = (idx + (np.arange(b)[:, None] * n)).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def percentile_interval(values: np.ndarray, level: float = DEFAULTS.ci) -> Interval:
    """Percentile interval of bootstrap replicates, leaving out undefined (NaN) replicates."""
    v = np.asarray(values, dtype=np.float64)
    ok = v[~np.isnan(v)]
    n_undef = int(len(v) - len(ok))
    if len(ok) == 0:
        return Interval(math.nan, math.nan, level, len(v), n_undef)
    lo, hi = np.quantile(ok, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(lo), float(hi), level, len(v), n_undef)


def share_positive(diffs: np.ndarray) -> float:
    """Fraction of the defined (non-NaN) bootstrap differences that are > 0."""
    ok = diffs[~np.isnan(diffs)]
    return float((ok > 0).mean()) if len(ok) else math.nan


def bootstrap_score_metrics(
    human: np.ndarray,
    machine: np.ndarray,
    scale_min: int,
    scale_max: int,
    *,
    n_boot: int = DEFAULTS.n_boot,
    seed: int = DEFAULTS.seed,
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
