"""``rubricate evaluate``: score a split with a student checkpoint, write its predictions and the report.

The predictions file (``predictions.jsonl``, one :class:`~rubricate.student.scorer.Prediction` per line) and
the reliability report (``rubricate.metrics.evaluate`` rendered by ``rubricate.report.write_report``) land in
one folder, so a reader can recompute any number of the report from the predictions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rubricate.student.arguments import EvaluateOptions
from rubricate.student.data import load_records, split_records

PREDICTIONS_NAME = "predictions.jsonl"


@dataclass
class EvaluateRun:
    """What :func:`evaluate_checkpoint` wrote and measured."""

    report: Any  # rubricate.metrics.results.Report
    paths: dict[str, Path]  # "predictions" and the report's formats
    n_predictions: int


def write_predictions(predictions: Sequence[Any], path: str | Path) -> Path:
    """One JSON object per prediction (``Prediction.to_dict``), in input order."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for pred in predictions:
            f.write(json.dumps(pred.to_dict()) + "\n")
    return p


def evaluate_checkpoint(checkpoint_dir: str | Path, data: str | Path, out_dir: str | Path, *,
                        tasks: str | Path | None = None, split: str | Path | None = None,
                        options: EvaluateOptions | None = None) -> EvaluateRun:
    """Predict ``options.subset`` of ``data`` (rows of the checkpoint's tasks) and write predictions + report.

    ``tasks``: a task folder to read the records with (default: the checkpoint's task snapshot); ``split``: the
    split file that picks the subset (default: the default split, made now).
    """
    from rubricate.metrics import evaluate
    from rubricate.metrics.workflow import prediction_sources
    from rubricate.report import write_report
    from rubricate.student.scorer import Scorer
    from rubricate.tasks import TaskRegistry

    opt = options or EvaluateOptions()
    scorer = Scorer.from_pretrained(checkpoint_dir, backend=opt.backend)  # type: ignore[arg-type]
    registry = TaskRegistry.from_dir(tasks) if tasks else scorer.tasks
    records = [r for r in load_records(data, registry) if r.task_id in scorer.task_ids]
    if opt.subset != "all":
        records = split_records(records, split, registry)[opt.subset]
    preds = scorer.predict([r.task_id for r in records], [r.text for r in records],
                           response_ids=[r.response_id for r in records])
    out = Path(out_dir)
    pred_path = write_predictions(preds, out / PREDICTIONS_NAME)
    report = evaluate(records, preds, scorer.tasks,
                      title=f"Student {scorer.model_id} on {Path(data).name} ({opt.subset})")
    report.settings["score_sources"] = prediction_sources(preds, [t.task_id for t in report.tasks])
    paths = {"predictions": pred_path, **write_report(report, out)}
    return EvaluateRun(report, paths, len(preds))
