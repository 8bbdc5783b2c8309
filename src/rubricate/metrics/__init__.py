r"""Reliability metrics: how well a scorer (the student, the agents, or a second human) agrees with humans.

Every number in a rubricate report is defined here (the formulas in :mod:`.formulas`). Notation: for one
task and one score scale,
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
resamples with replacement of the n responses; one documented seed scheme, :mod:`.bootstrap`; the interval
is the
``(1-ci)/2`` and ``(1+ci)/2`` quantiles of the resampled statistic). Resamples are drawn as one index
matrix and the statistics are computed for all of them at once (confusion-matrix counts for κ, moments
for r and SMD, average ranks of the categories for ρ - every score metric is a function of the K×K
confusion matrix, so one matrix per resample is all that is needed). Across-task intervals resample
responses within each task
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

Operational readiness (:mod:`.readiness`): per (task, scale), QWK >= 0.70, QWK drop from human–human
<= 0.10 and |SMD| <= 0.15 (Williamson, Xi & Breyer 2012), thresholds in :class:`ReadinessThresholds`.

Layout: :mod:`.formulas` (the formulas), :mod:`.bootstrap` (resampling and the seed scheme),
:mod:`.results` (result types), :mod:`.inputs` (predictions, matching checks, predictions files),
:mod:`.scores` (metrics of one set of responses), :mod:`.evaluate` (the workflow in named steps),
:mod:`.compare` (two scorers, paired), :mod:`.readiness`, :mod:`.rsmeval` (files for RSMTool's rsmeval).
"""

from rubricate.metrics.bootstrap import (
    BootstrapConfig,
    Stream,
    bootstrap_indices,
    bootstrap_multilabel,
    bootstrap_score_metrics,
    percentile_interval,
    resample_counts,
)
from rubricate.metrics.compare import compare_systems
from rubricate.metrics.evaluate import MISSING_GROUP, EvaluationSettings, MissingPolicy, evaluate
from rubricate.metrics.formulas import (
    DEFAULT_TOLERANCE,
    KAPPA_CLIP,
    ConstantPolicy,
    KappaWeights,
    SmdMethod,
    confusion_counts,
    fisher_z_mean,
    kappa,
    kappa_from_confusion,
    quadratic_weighted_kappa,
    qwk,
    score_metrics_from_confusion,
    standardized_mean_difference,
)
from rubricate.metrics.inputs import Predicted, as_predicted, rater2_as_predictions, read_predictions
from rubricate.metrics.readiness import ReadinessThresholds, operational_readiness
from rubricate.metrics.results import (
    SCORE_METRICS,
    AcrossTasks,
    AggregateQWK,
    Comparison,
    Interval,
    ItemReadiness,
    LabelMetrics,
    MultiLabelMetrics,
    Readiness,
    Report,
    ScaleComparison,
    ScaleReport,
    ScoreMetrics,
    TaskReport,
    json_safe,
)
from rubricate.metrics.rsmeval import write_rsmeval_inputs
from rubricate.metrics.scores import label_metrics, multilabel_metrics, score_metrics

__all__ = [
    "BootstrapConfig",
    "Stream",
    "bootstrap_indices",
    "bootstrap_multilabel",
    "bootstrap_score_metrics",
    "percentile_interval",
    "resample_counts",
    "compare_systems",
    "MISSING_GROUP",
    "EvaluationSettings",
    "MissingPolicy",
    "evaluate",
    "DEFAULT_TOLERANCE",
    "KAPPA_CLIP",
    "ConstantPolicy",
    "KappaWeights",
    "SmdMethod",
    "confusion_counts",
    "fisher_z_mean",
    "kappa",
    "kappa_from_confusion",
    "quadratic_weighted_kappa",
    "qwk",
    "score_metrics_from_confusion",
    "standardized_mean_difference",
    "Predicted",
    "as_predicted",
    "rater2_as_predictions",
    "read_predictions",
    "ReadinessThresholds",
    "operational_readiness",
    "SCORE_METRICS",
    "AcrossTasks",
    "AggregateQWK",
    "Comparison",
    "Interval",
    "ItemReadiness",
    "LabelMetrics",
    "MultiLabelMetrics",
    "Readiness",
    "Report",
    "ScaleComparison",
    "ScaleReport",
    "ScoreMetrics",
    "TaskReport",
    "json_safe",
    "write_rsmeval_inputs",
    "label_metrics",
    "multilabel_metrics",
    "score_metrics",
]
