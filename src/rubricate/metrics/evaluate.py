"""The evaluate workflow: predictions + gold records -> :class:`~rubricate.metrics.results.Report`.

:func:`evaluate` runs named steps, each its own function (as RSMTool's analyzer names its analyses):

1. :func:`match_inputs` - join predictions to gold by ``(task_id, response_id)``; duplicates, unknown
   tasks and unmatched responses are errors (or, with ``missing="drop"``, counted in the notes);
2. :func:`match_task` - one task's matched (gold, prediction) pairs, validated against the rubric;
3. :func:`label_step` - per binary label and the UniMoE multi-label four;
4. :func:`scale_step` - per score scale: machine vs rater 1, then
5. :func:`rater2_step` - human–human and machine on the double-scored responses, and the degradation;
6. :func:`subgroup_step` - the subgroup breakdown;
7. :func:`across_tasks` - mean and Fisher-z mean QWK over (task, scale), with intervals;
8. :func:`~rubricate.metrics.readiness.operational_readiness` - the readiness table.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from rubricate.data.records import Record
from rubricate.errors import InputError
from rubricate.labels import DEFAULT_THRESHOLD, LabelEncoding
from rubricate.metrics.bootstrap import BootstrapConfig, Stream, bootstrap_multilabel, percentile_interval
from rubricate.metrics.formulas import DEFAULT_TOLERANCE, KAPPA_CLIP, ConstantPolicy, SmdMethod, fisher_z_mean
from rubricate.metrics.inputs import (
    Key,
    Predicted,
    check_gold_labels,
    check_predicted_scores,
    index_gold,
    index_predictions,
    missing_score_error,
    unpredicted_error,
)
from rubricate.metrics.readiness import ReadinessThresholds, operational_readiness
from rubricate.metrics.results import (
    SCORE_METRICS,
    AcrossTasks,
    AggregateQWK,
    LabelMetrics,
    MultiLabelMetrics,
    Report,
    ScaleReport,
    TaskReport,
)
from rubricate.metrics.scores import multilabel_metrics, score_metrics_with_replicates, to_binary
from rubricate.tasks import Scale, Task, TaskRegistry

MissingPolicy = Literal["error", "drop"]
MISSING_GROUP = "(missing)"  # the subgroup of responses without a value in the group column
_DROP_HINT = " (use missing='drop' / --allow-missing)"
_BOOT = BootstrapConfig()


@dataclass(frozen=True)
class EvaluationSettings:
    """Every choice :func:`evaluate` makes, in one place (``report.json`` records them as ``settings``)."""

    threshold: float = DEFAULT_THRESHOLD  # p >= threshold is a positive label
    tolerance: int = DEFAULT_TOLERANCE  # adjacent agreement: |machine - human| <= tolerance
    smd_method: SmdMethod = "pooled"  # SMD denominator: pooled SD (RSMTool) or the human SD
    constant_prediction: ConstantPolicy = "zero"  # κ of a constant prediction: its exact value 0, or NaN
    group_column: str | None = None  # Record.metadata key for the subgroup breakdown
    missing: MissingPolicy = "error"  # unmatched gold / predictions: an error, or left out and counted
    compare_rater2: bool = True  # add human-human and the degradation where records carry rater2
    bootstrap: BootstrapConfig = BootstrapConfig()
    readiness: ReadinessThresholds = ReadinessThresholds()

    def score_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`score_metrics_with_replicates` (without the seed)."""
        return {
            "tolerance": self.tolerance,
            "smd_method": self.smd_method,
            "constant_prediction": self.constant_prediction,
            "n_boot": self.bootstrap.n_boot,
            "ci": self.bootstrap.ci,
        }


@dataclass
class MatchedInputs:
    """The joined inputs: which tasks to report, their gold records, and the predictions by key."""

    task_ids: list[str]
    gold_by_task: dict[str, list[Record]]
    pred_by_key: dict[Key, Predicted]
    extra_by_task: dict[str, int]  # predictions without gold, per task (left out)
    notes: list[str] = field(default_factory=list)


@dataclass
class _QwkEntries:
    """Per (task, scale) QWK entries and their bootstrap replicates, for one across-task aggregate."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    replicates: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    def add(self, task_id: str, scale_id: str, n: int, qwk: float, reps: dict[str, np.ndarray]) -> None:
        self.entries.append({"task_id": task_id, "scale_id": scale_id, "n": n, "qwk": qwk})
        if reps:
            self.replicates[(task_id, scale_id)] = reps["qwk"]


@dataclass
class _Collected:
    machine: _QwkEntries = field(default_factory=_QwkEntries)
    human_human: _QwkEntries = field(default_factory=_QwkEntries)
    double_scored: _QwkEntries = field(default_factory=_QwkEntries)  # machine on the double-scored responses


# --------------------------------------------------------------------------------------------------------
# 1-2: matching
# --------------------------------------------------------------------------------------------------------
def match_inputs(
    gold: Sequence[Record], predictions: Sequence[Any], tasks: TaskRegistry, settings: EvaluationSettings
) -> MatchedInputs:
    """Join by ``(task_id, response_id)``; the tasks reported are those with gold and predictions."""
    pred_by_key = index_predictions(predictions, tasks)
    gold_by_task = index_gold(gold)
    seen = {r.key for recs in gold_by_task.values() for r in recs}
    extra = [k for k in pred_by_key if k not in seen]
    if extra and settings.missing == "error":
        raise InputError(
            f"{len(extra)} predictions have no gold record, e.g. {extra[:5]} "
            f"(use missing='drop' / --allow-missing to leave them out)",
            file=pred_by_key[extra[0]].origin or None,
        )
    col = settings.group_column
    if col is not None and not any(col in r.metadata for r in gold):
        raise InputError(
            f"no gold record has the group column '{col}' in its metadata "
            f"(available: {sorted({k for r in gold for k in r.metadata})[:20]})",
            column=col,
        )
    pred_tasks = {k[0] for k in pred_by_key}
    task_ids = [t for t in gold_by_task if t in pred_tasks]
    if not task_ids:
        raise InputError("no task has both gold records and predictions")
    no_pred = [t for t in gold_by_task if t not in pred_tasks and t in tasks]
    if no_pred and settings.missing == "error":
        raise InputError(
            f"gold records of tasks {no_pred[:10]} have no predictions at all "
            f"(use missing='drop' / --allow-missing to report only the predicted tasks)"
        )
    extra_by_task: dict[str, int] = {}
    for k in extra:
        extra_by_task[k[0]] = extra_by_task.get(k[0], 0) + 1
    notes = []
    skipped = [t for t in gold_by_task if t not in task_ids]
    if skipped:
        notes.append(f"tasks with gold records but no predictions, left out: {skipped}")
    return MatchedInputs(task_ids, gold_by_task, pred_by_key, extra_by_task, notes)


def match_task(
    task: Task, inputs: MatchedInputs, settings: EvaluationSettings, notes: dict[str, str]
) -> list[tuple[Record, Predicted]]:
    """One task's (gold, prediction) pairs; unpredicted gold is an error or a coverage note."""
    recs = inputs.gold_by_task[task.id]
    check_gold_labels(task, recs)
    by_key = inputs.pred_by_key
    matched = [(r, by_key[r.key]) for r in recs if r.key in by_key]
    if len(matched) < len(recs):
        if settings.missing == "error":
            raise unpredicted_error(
                task.id, [r.response_id for r in recs if r.key not in by_key], hint=_DROP_HINT
            )
        notes["coverage"] = (
            f"{len(recs) - len(matched)} of {len(recs)} gold responses have no prediction (left out)"
        )
    if inputs.extra_by_task.get(task.id):
        notes["extra_predictions"] = f"{inputs.extra_by_task[task.id]} predictions without gold (left out)"
    check_predicted_scores(task, (p for _, p in matched))
    return matched


# --------------------------------------------------------------------------------------------------------
# 3: labels
# --------------------------------------------------------------------------------------------------------
def _label_matrices(
    task_id: str,
    enc: LabelEncoding,
    matched: list[tuple[Record, Predicted]],
    settings: EvaluationSettings,
    notes: dict[str, str],
) -> tuple[np.ndarray, np.ndarray]:
    """Gold targets and predictions ``(N, L)``: probabilities when a prediction has all, else its scores."""
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
        if settings.missing == "error":
            i, j = np.argwhere(lack)[0]
            raise InputError(
                f"task '{task_id}': response '{matched[i][0].response_id}' has a gold "
                f"'{enc.specs[j].source}' but the prediction has none",
                column="scores",
                file=matched[i][1].origin or None,
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
    return y_true, y_pred


def label_step(
    task: Task,
    t_index: int,
    matched: list[tuple[Record, Predicted]],
    settings: EvaluationSettings,
    notes: dict[str, str],
) -> tuple[list[LabelMetrics], MultiLabelMetrics | None]:
    """Per-label κ / accuracy / F1 and the UniMoE four, with bootstrap intervals of the four."""
    enc = LabelEncoding.from_task(task)
    if not enc.n_labels or not matched:
        return [], None
    y_true, y_pred = _label_matrices(task.id, enc, matched, settings, notes)
    labels_out, ml = multilabel_metrics(
        y_true, y_pred, enc.names, settings.threshold, settings.constant_prediction
    )
    boot = settings.bootstrap
    if boot.n_boot > 0 and len(matched) >= 2:
        reps = bootstrap_multilabel(
            y_true,
            to_binary(np.nan_to_num(y_pred), settings.threshold).astype(float),
            n_boot=boot.n_boot,
            seed=boot.label_seed(t_index),
            constant_prediction=settings.constant_prediction,
        )
        ml.ci = {k: percentile_interval(v, boot.ci) for k, v in reps.items()}
    return labels_out, ml


# --------------------------------------------------------------------------------------------------------
# 4-6: scales, second rater, subgroups
# --------------------------------------------------------------------------------------------------------
def rater2_step(
    sr: ScaleReport,
    task_id: str,
    sc: Scale,
    both: list[tuple[Record, Predicted]],
    seed: int,
    settings: EvaluationSettings,
    collected: _Collected,
) -> None:
    """Human–human, machine on the same double-scored responses, and the degradation (paired resamples)."""
    dbl = [(r, p) for r, p in both if settings.compare_rater2 and r.rater2 and sc.id in r.rater2]
    if not dbl:
        return
    h1 = np.array([r.labels[sc.id] for r, _ in dbl], dtype=np.int64)
    h2 = np.array([r.rater2[sc.id] for r, _ in dbl], dtype=np.int64)  # type: ignore[index]
    md = np.array([p.scores[sc.id] for _, p in dbl], dtype=np.int64)
    kw = settings.score_options()
    try:
        # the same seed for both: paired resamples of the same responses
        sr.human_human, reps_hh = score_metrics_with_replicates(h1, h2, sc.min, sc.max, seed=seed, **kw)
    except ValueError as e:
        raise InputError(f"task '{task_id}': rater2 '{sc.id}': {e}", column="rater2") from None
    sr.machine_double_scored, reps_md = score_metrics_with_replicates(h1, md, sc.min, sc.max, seed=seed, **kw)
    sr.degradation = {k: sr.machine_double_scored.get(k) - sr.human_human.get(k) for k in SCORE_METRICS}
    collected.human_human.add(task_id, sc.id, len(h1), sr.human_human.qwk, reps_hh)
    collected.double_scored.add(task_id, sc.id, len(h1), sr.machine_double_scored.qwk, reps_md)
    if reps_hh:
        sr.degradation_ci = {
            k: percentile_interval(reps_md[k] - reps_hh[k], settings.bootstrap.ci) for k in SCORE_METRICS
        }


def _group_value(r: Record, column: str) -> str:
    v = r.metadata.get(column)
    return MISSING_GROUP if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def subgroup_step(
    sr: ScaleReport,
    sc: Scale,
    both: list[tuple[Record, Predicted]],
    h: np.ndarray,
    m: np.ndarray,
    seed: int,
    settings: EvaluationSettings,
) -> None:
    """The score metrics per value of the group column (``MISSING_GROUP`` for responses without one)."""
    if settings.group_column is None:
        return
    groups: dict[str, list[int]] = {}
    for i, (r, _) in enumerate(both):
        groups.setdefault(_group_value(r, settings.group_column), []).append(i)
    kw = settings.score_options()
    for g in sorted(groups):
        ii = np.array(groups[g])
        sr.subgroups[g] = score_metrics_with_replicates(h[ii], m[ii], sc.min, sc.max, seed=seed, **kw)[0]


def scale_step(
    task_id: str,
    sc: Scale,
    seed_of: Callable[[Stream], int],
    matched: list[tuple[Record, Predicted]],
    settings: EvaluationSettings,
    notes: dict[str, str],
    collected: _Collected,
) -> ScaleReport:
    """Machine vs rater 1 on one scale, then the second rater and the subgroups (``seed_of(stream)``)."""
    both = [(r, p) for r, p in matched if sc.id in r.labels and sc.id in p.scores]
    lacking = [r.response_id for r, p in matched if sc.id in r.labels and sc.id not in p.scores]
    if lacking:
        if settings.missing == "error":
            raise missing_score_error(task_id, sc.id, lacking, hint=_DROP_HINT)
        notes[f"missing_{sc.id}"] = f"{len(lacking)} predictions without a '{sc.id}' score left out"
    h = np.array([r.labels[sc.id] for r, _ in both], dtype=np.int64)
    m = np.array([p.scores[sc.id] for _, p in both], dtype=np.int64)
    mach, reps = score_metrics_with_replicates(
        h, m, sc.min, sc.max, seed=seed_of(Stream.MACHINE), **settings.score_options()
    )
    sr = ScaleReport(scale_id=sc.id, machine=mach)
    collected.machine.add(task_id, sc.id, mach.n, mach.qwk, reps)
    rater2_step(sr, task_id, sc, both, seed_of(Stream.DOUBLE_SCORED), settings, collected)
    subgroup_step(sr, sc, both, h, m, seed_of(Stream.SUBGROUPS), settings)
    return sr


def task_step(
    task: Task, t_index: int, inputs: MatchedInputs, settings: EvaluationSettings, collected: _Collected
) -> TaskReport:
    """Everything about one task: matching, labels, and each scale."""
    notes: dict[str, str] = {}
    matched = match_task(task, inputs, settings, notes)
    labels_out, ml = label_step(task, t_index, matched, settings, notes)
    scales = [
        scale_step(
            task.id,
            sc,
            lambda stream, s=s_index: settings.bootstrap.scale_seed(t_index, s, stream),
            matched,
            settings,
            notes,
            collected,
        )
        for s_index, sc in enumerate(task.scales)
    ]
    return TaskReport(
        task_id=task.id,
        n_gold=len(inputs.gold_by_task[task.id]),
        n_predicted=len(matched) + inputs.extra_by_task.get(task.id, 0),
        n_matched=len(matched),
        labels=labels_out,
        multilabel=ml,
        scales=scales,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------------------
# 7: across tasks
# --------------------------------------------------------------------------------------------------------
def aggregate_replicates(
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


def aggregate_qwk(q: _QwkEntries, ci: float) -> AggregateQWK:
    """Mean, Fisher-z mean and n-weighted Fisher-z mean of the entries' QWK, with intervals."""
    qwks = np.array([e["qwk"] for e in q.entries], dtype=np.float64)
    ns = np.array([e["n"] for e in q.entries], dtype=np.float64)
    ok = ~np.isnan(qwks)
    agg = AggregateQWK(
        n_entries=len(q.entries),
        mean=float(qwks[ok].mean()) if ok.any() else math.nan,
        fisher_z=fisher_z_mean(qwks) if ok.any() else math.nan,
        fisher_z_weighted=fisher_z_mean(qwks, ns) if ok.any() else math.nan,
        n_undefined=int((~ok).sum()),
        entries=q.entries,
    )
    agg.ci = {k: percentile_interval(v, ci) for k, v in aggregate_replicates(q.entries, q.replicates).items()}
    return agg


def across_tasks(task_reports: list[TaskReport], collected: _Collected, ci: float) -> AcrossTasks:
    """The across-task summary: aggregate QWK, human-human and its degradation, mean of every metric."""
    across = AcrossTasks(machine=aggregate_qwk(collected.machine, ci))
    if collected.human_human.entries:
        hh, md = collected.human_human, collected.double_scored
        across.human_human = aggregate_qwk(hh, ci)
        md_agg = aggregate_qwk(md, ci)
        across.degradation = {
            k: getattr(md_agg, k) - getattr(across.human_human, k)
            for k in ("mean", "fisher_z", "fisher_z_weighted")
        }
        r_md = aggregate_replicates(md.entries, md.replicates)
        r_hh = aggregate_replicates(hh.entries, hh.replicates)
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
    return across


def _settings_record(s: EvaluationSettings) -> dict[str, Any]:
    """What ``report.json`` records under ``settings``."""
    b = s.bootstrap
    return {
        "threshold": s.threshold,
        "tolerance": s.tolerance,
        "smd_method": s.smd_method,
        "constant_prediction": s.constant_prediction,
        "n_boot": b.n_boot,
        "ci": b.ci,
        "seed": b.seed,
        "group_column": s.group_column,
        "missing": s.missing,
        "kappa_clip": KAPPA_CLIP,
        "bootstrap": asdict(b),
        "readiness": asdict(s.readiness),
    }


def evaluate(
    gold: Sequence[Record],
    predictions: Sequence[Any],
    tasks: TaskRegistry,
    *,
    threshold: float = EvaluationSettings.threshold,
    tolerance: int = EvaluationSettings.tolerance,
    smd_method: SmdMethod = EvaluationSettings.smd_method,
    constant_prediction: ConstantPolicy = EvaluationSettings.constant_prediction,
    n_boot: int = _BOOT.n_boot,
    ci: float = _BOOT.ci,
    seed: int = _BOOT.seed,
    group_column: str | None = None,
    missing: MissingPolicy = EvaluationSettings.missing,
    compare_rater2: bool = EvaluationSettings.compare_rater2,
    readiness: ReadinessThresholds = EvaluationSettings.readiness,
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
    * ``readiness``: the thresholds of the operational-readiness table (``Report.readiness``).
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    settings = EvaluationSettings(
        threshold=threshold,
        tolerance=tolerance,
        smd_method=smd_method,
        constant_prediction=constant_prediction,
        group_column=group_column,
        missing=missing,
        compare_rater2=compare_rater2,
        bootstrap=BootstrapConfig(n_boot=n_boot, ci=ci, seed=seed),
        readiness=readiness,
    )
    inputs = match_inputs(gold, predictions, tasks, settings)
    collected = _Collected()
    task_reports = [
        task_step(tasks.get(t), i, inputs, settings, collected) for i, t in enumerate(inputs.task_ids)
    ]
    report = Report(
        title=title,
        machine_label=machine_label,
        tasks=task_reports,
        across=across_tasks(task_reports, collected, ci),
        settings=_settings_record(settings),
        notes=inputs.notes,
    )
    report.readiness = operational_readiness(report, readiness)
    return report
