"""Paired comparison of two scorers on the same gold responses (``rubricate report --against``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from rubricate.data.records import Record
from rubricate.errors import InputError
from rubricate.metrics.bootstrap import (
    BootstrapConfig,
    bootstrap_indices,
    bootstrap_score_metrics,
    percentile_interval,
    share_positive,
)
from rubricate.metrics.formulas import KAPPA_CLIP, ConstantPolicy, fisher_z_mean, qwk
from rubricate.metrics.inputs import (
    Key,
    Predicted,
    check_predicted_scores,
    index_gold,
    index_predictions,
    missing_score_error,
    unpredicted_error,
)
from rubricate.metrics.results import Comparison, ScaleComparison
from rubricate.tasks import Scale, TaskRegistry

_BOOT = BootstrapConfig()


def _compare_scale(
    task_id: str,
    sc: Scale,
    rows: list[Record],
    scorers: list[tuple[str, dict[Key, Predicted]]],
    idx: np.ndarray,
    constant_prediction: ConstantPolicy,
    ci: float,
) -> tuple[ScaleComparison, np.ndarray, np.ndarray]:
    """QWK of A and B on one scale and the replicates of both on the same resamples ``idx``."""
    for who, d in scorers:
        lack = [r.response_id for r in rows if sc.id not in d[r.key].scores]
        if lack:
            raise missing_score_error(task_id, sc.id, lack, who=who)
    (_, pa), (_, pb) = scorers
    h = np.array([r.labels[sc.id] for r in rows], dtype=np.int64)
    a = np.array([pa[r.key].scores[sc.id] for r in rows], dtype=np.int64)
    b = np.array([pb[r.key].scores[sc.id] for r in rows], dtype=np.int64)
    qa = qwk(h, a, sc.min, sc.max, constant_prediction=constant_prediction)
    qb = qwk(h, b, sc.min, sc.max, constant_prediction=constant_prediction)
    ra = bootstrap_score_metrics(h, a, sc.min, sc.max, idx=idx, constant_prediction=constant_prediction)[
        "qwk"
    ]
    rb = bootstrap_score_metrics(h, b, sc.min, sc.max, idx=idx, constant_prediction=constant_prediction)[
        "qwk"
    ]
    d_reps = ra - rb
    entry = ScaleComparison(
        task_id=task_id,
        scale_id=sc.id,
        n=len(h),
        qwk_a=qa,
        qwk_b=qb,
        diff=qa - qb,
        ci=percentile_interval(d_reps, ci),
        share_a_better=share_positive(d_reps),
    )
    return entry, ra, rb


def _across(
    entries: list[ScaleComparison], reps_a: list[np.ndarray], reps_b: list[np.ndarray], ci: float
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Mean and Fisher-z mean QWK of A and B, their difference and its paired interval."""
    qa_all = np.array([e.qwk_a for e in entries])
    qb_all = np.array([e.qwk_b for e in entries])
    ma, mb = np.stack(reps_a, axis=1), np.stack(reps_b, axis=1)  # (n_boot, entries)
    across: dict[str, dict[str, float]] = {}
    ci_out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name, point, rep in (
            ("mean", lambda q: float(np.nanmean(q)), lambda m: np.nanmean(m, axis=1)),
            ("fisher_z", lambda q: float(fisher_z_mean(q)), lambda m: fisher_z_mean(m, axis=1)),
        ):
            d_rep = rep(ma) - rep(mb)
            across[name] = {
                "a": point(qa_all),
                "b": point(qb_all),
                "diff": point(qa_all) - point(qb_all),
                "share_a_better": share_positive(d_rep),
            }
            ci_out[name] = percentile_interval(d_rep, ci)
    return across, ci_out


def compare_systems(
    gold: Sequence[Record],
    predictions_a: Sequence[Any],
    predictions_b: Sequence[Any],
    tasks: TaskRegistry,
    *,
    n_boot: int = _BOOT.n_boot,
    ci: float = _BOOT.ci,
    seed: int = _BOOT.seed,
    constant_prediction: ConstantPolicy = "zero",
    label_a: str = "A",
    label_b: str = "B",
) -> Comparison:
    """Is scorer A better than scorer B on these responses? QWK differences with paired bootstrap CIs.

    Why paired: two models scored on the same 150 responses share most of their test-set luck; resampling
    responses once and scoring both on each resample removes that shared part, so a small but consistent
    gain can be told from noise. Joins are by ``(task_id, response_id)`` with the checks of
    :func:`~rubricate.metrics.evaluate` (:mod:`rubricate.metrics.inputs`); both scorers must predict every
    gold response of the tasks compared, and only tasks both cover are compared. ``share_a_better`` is the
    fraction of resamples in which A's statistic exceeds B's: a one-sided bootstrap support, not a p-value
    corrected for multiple comparisons. Each (task, scale) draws the resamples :func:`evaluate` draws for it
    (:meth:`BootstrapConfig.scale_seed`) when it sees the same tasks in the same order.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1 for a comparison")
    boot = BootstrapConfig(n_boot=n_boot, ci=ci, seed=seed)
    scorers = [
        (who, index_predictions(p, tasks, who))
        for who, p in ((label_a, predictions_a), (label_b, predictions_b))
    ]
    covered = {k[0] for k in scorers[0][1]} & {k[0] for k in scorers[1][1]}
    gold_by_task = index_gold(gold, only_tasks=covered)
    if not gold_by_task:
        raise InputError(f"no task has gold records and predictions from both {label_a} and {label_b}")
    entries: list[ScaleComparison] = []
    reps_a: list[np.ndarray] = []
    reps_b: list[np.ndarray] = []
    for t_index, (task_id, recs) in enumerate(gold_by_task.items()):
        task = tasks.get(task_id)
        for who, d in scorers:
            miss = [r.response_id for r in recs if r.key not in d]
            if miss:
                raise unpredicted_error(task_id, miss, who=who)
            check_predicted_scores(task, (d[r.key] for r in recs), who=who)
        for s_index, sc in enumerate(task.scales):
            rows = [r for r in recs if sc.id in r.labels]
            if not rows:
                continue
            idx = bootstrap_indices(len(rows), n_boot, boot.scale_seed(t_index, s_index))
            entry, ra, rb = _compare_scale(task_id, sc, rows, scorers, idx, constant_prediction, ci)
            entries.append(entry)
            reps_a.append(ra)
            reps_b.append(rb)
    across, ci_out = _across(entries, reps_a, reps_b, ci)
    return Comparison(
        label_a=label_a,
        label_b=label_b,
        entries=entries,
        across=across,
        ci=ci_out,
        settings={
            "n_boot": n_boot,
            "ci": ci,
            "seed": seed,
            "constant_prediction": constant_prediction,
            "kappa_clip": KAPPA_CLIP,
        },
    )
