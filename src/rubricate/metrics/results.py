"""Result types of the metrics package (dataclasses; ``to_dict`` / :func:`json_safe` give JSON-safe dicts).

Undefined values are NaN here and ``null`` in JSON, always with a reason in the ``notes`` next to them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import numpy as np

#: score metrics that get bootstrap intervals and a degradation value
SCORE_METRICS = ("qwk", "exact", "adjacent", "mae", "rmse", "pearson", "spearman", "smd")


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
    level: float
    n_boot: int
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
class ItemReadiness:
    """One (task, scale) judged against the operational thresholds (:mod:`rubricate.metrics.readiness`).

    ``qwk_drop`` is human–human QWK minus machine–human QWK on the double-scored responses (None without a
    second rater: then ``drop_pass`` is None and the item is judged on the other two criteria).
    """

    task_id: str
    scale_id: str
    n: int
    qwk: float
    qwk_drop: float | None
    smd: float
    qwk_pass: bool
    drop_pass: bool | None
    smd_pass: bool
    passes: bool


@dataclass
class Readiness:
    """The operational-readiness table: thresholds, one row per item, and how many pass all criteria."""

    min_qwk: float
    max_qwk_drop: float
    max_abs_smd: float
    items: list[ItemReadiness] = field(default_factory=list)

    @property
    def n_pass(self) -> int:
        return sum(1 for it in self.items if it.passes)


@dataclass
class Report:
    """A complete reliability report; ``to_dict`` is what ``report.json`` holds."""

    title: str
    machine_label: str
    tasks: list[TaskReport]
    across: AcrossTasks
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    readiness: Readiness | None = None

    def to_dict(self) -> dict[str, Any]:
        d = json_safe(self)
        if self.readiness is not None:
            d["readiness"]["n_pass"] = self.readiness.n_pass
            d["readiness"]["n_items"] = len(self.readiness.items)
        return d

    def task(self, task_id: str) -> TaskReport:
        for t in self.tasks:
            if t.task_id == task_id:
                return t
        raise KeyError(task_id)


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
