"""Operational readiness: is each item's machine scoring good enough to use beside (or instead of) a human?

After Williamson, Xi & Breyer (2012), "A framework for evaluation and use of automated scoring",
*Educational Measurement: Issues and Practice* 31(1): an automated score is considered for operational use
when, per item (here: per task and score scale),

1. **QWK ≥ min_qwk** (0.70) - machine–human quadratic weighted κ on every matched response;
2. **QWK drop ≤ max_qwk_drop** (0.10) - human–human QWK minus machine–human QWK, both on the
   double-scored responses (the negative of the report's QWK *degradation*); the machine may agree with a
   human less than a second human does, but not by more than this;
3. **|SMD| ≤ max_abs_smd** (0.15) - the standardized mean difference of machine and human scores (the
   report's ``smd_method``), i.e. no notable shift of the score scale.

An item without a second rater has no drop: it is judged on criteria 1 and 3 and the drop is shown as
"n/a". An undefined QWK or SMD (NaN, with its reason in the report notes) fails its criterion: what cannot
be measured cannot be shown to be good enough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rubricate.metrics.results import ItemReadiness, Readiness, Report, ScaleReport


@dataclass(frozen=True)
class ReadinessThresholds:
    """The three thresholds of the readiness table (Williamson, Xi & Breyer 2012)."""

    min_qwk: float = 0.70  # machine-human QWK must be at least this
    max_qwk_drop: float = 0.10  # human-human QWK minus machine-human QWK must be at most this
    max_abs_smd: float = 0.15  # |standardized mean difference| must be at most this


def judge_item(
    task_id: str,
    scale_id: str,
    n: int,
    qwk: float,
    qwk_drop: float | None,
    smd: float,
    thresholds: ReadinessThresholds,
) -> ItemReadiness:
    """Pass/fail of one item on each criterion and overall (NaN fails; a missing drop is not judged)."""
    qwk_pass = not math.isnan(qwk) and qwk >= thresholds.min_qwk
    smd_pass = not math.isnan(smd) and abs(smd) <= thresholds.max_abs_smd
    drop_pass = (
        None if qwk_drop is None else (not math.isnan(qwk_drop) and qwk_drop <= thresholds.max_qwk_drop)
    )
    return ItemReadiness(
        task_id=task_id,
        scale_id=scale_id,
        n=n,
        qwk=qwk,
        qwk_drop=qwk_drop,
        smd=smd,
        qwk_pass=qwk_pass,
        drop_pass=drop_pass,
        smd_pass=smd_pass,
        passes=qwk_pass and smd_pass and drop_pass is not False,
    )


def _qwk_drop(sr: ScaleReport) -> float | None:
    if sr.human_human is None or sr.machine_double_scored is None:
        return None
    return sr.human_human.qwk - sr.machine_double_scored.qwk


def operational_readiness(
    report: Report, thresholds: ReadinessThresholds = ReadinessThresholds()
) -> Readiness:
    """The readiness table of a report: one row per (task, scale), judged by :func:`judge_item`."""
    items = [
        judge_item(
            t.task_id, sr.scale_id, sr.machine.n, sr.machine.qwk, _qwk_drop(sr), sr.machine.smd, thresholds
        )
        for t in report.tasks
        for sr in t.scales
    ]
    return Readiness(
        min_qwk=thresholds.min_qwk,
        max_qwk_drop=thresholds.max_qwk_drop,
        max_abs_smd=thresholds.max_abs_smd,
        items=items,
    )
