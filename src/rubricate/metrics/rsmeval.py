"""Predictions in the form RSMTool's ``rsmeval`` reads, so a report can be checked against RSMTool's own.

Per task and score scale, two files in the output folder:

* ``<name>.csv`` - one row per matched response, the columns ``rsmeval`` expects by default:
  ``spkitemid`` (the response id), ``sc1`` (rater 1, the gold score), ``system`` (the machine score) and,
  when any response has a second rater, ``sc2`` (empty where a response was scored once);
* ``<name>.json`` - a minimal ``rsmeval`` configuration: ``experiment_id``, ``predictions_file``,
  ``system_score_column``, ``human_score_column``, ``id_column``, ``second_human_score_column`` (only with a
  second rater), ``trim_min`` / ``trim_max`` (the scale's range, required by ``rsmeval``) and
  ``exclude_zero_scores: false`` - ``rsmeval`` drops zero scores by default, but 0 is a real score on
  rubric scales.

``<name>`` is the task id, or ``<task id>_<scale id>`` for a task with several scales; characters other than
letters, digits, ``-`` and ``_`` become ``_`` (``rsmeval`` experiment ids may not contain spaces). Run
``rsmeval <name>.json <out>`` in that folder. Field names follow RSMTool's "rsmeval configuration" docs.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rubricate.data.records import Record
from rubricate.metrics.inputs import index_gold, index_predictions
from rubricate.tasks import TaskRegistry

#: the column names written (rsmeval's defaults for the id and human columns)
ID_COLUMN, HUMAN_COLUMN, SYSTEM_COLUMN, SECOND_HUMAN_COLUMN = "spkitemid", "sc1", "system", "sc2"


def _experiment_name(task_id: str, scale_id: str, n_scales: int) -> str:
    raw = task_id if n_scales == 1 else f"{task_id}_{scale_id}"
    return re.sub(r"[^A-Za-z0-9_-]", "_", raw)[:200]


def rsmeval_config(
    name: str, scale_min: int, scale_max: int, second_rater: bool, description: str = ""
) -> dict:
    """The ``rsmeval`` configuration of one predictions file ``<name>.csv`` (module docstring)."""
    config: dict[str, Any] = {
        "experiment_id": name,
        "predictions_file": f"{name}.csv",
        "system_score_column": SYSTEM_COLUMN,
        "human_score_column": HUMAN_COLUMN,
        "id_column": ID_COLUMN,
        "trim_min": scale_min,
        "trim_max": scale_max,
        "exclude_zero_scores": False,
    }
    if second_rater:
        config["second_human_score_column"] = SECOND_HUMAN_COLUMN
    if description:
        config["description"] = description
    return config


def write_rsmeval_inputs(
    gold: Sequence[Record],
    predictions: Sequence[Any],
    tasks: TaskRegistry,
    out_dir: str | Path,
    description: str = "",
) -> list[Path]:
    """Write a ``.csv`` + ``.json`` pair per (task, scale) with gold and predicted scores; returns the paths.

    Only responses with both a gold and a predicted score on the scale are written (what :func:`evaluate`
    compares); tasks without predictions are skipped. Inputs are checked as :func:`evaluate` checks them.
    """
    by_key = index_predictions(predictions, tasks)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for task_id, recs in index_gold(gold, only_tasks={k[0] for k in by_key}).items():
        task = tasks.get(task_id)
        for sc in task.scales:
            rows = [
                (r, by_key[r.key])
                for r in recs
                if r.key in by_key and sc.id in r.labels and sc.id in by_key[r.key].scores
            ]
            if not rows:
                continue
            second = any(r.rater2 and sc.id in r.rater2 for r, _ in rows)
            name = _experiment_name(task_id, sc.id, len(task.scales))
            header = [ID_COLUMN, HUMAN_COLUMN, SYSTEM_COLUMN] + ([SECOND_HUMAN_COLUMN] if second else [])
            csv_path = out / f"{name}.csv"
            with csv_path.open("w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(header)
                for r, p in rows:
                    row = [r.response_id, r.labels[sc.id], p.scores[sc.id]]
                    if second:
                        row.append(r.rater2[sc.id] if r.rater2 and sc.id in r.rater2 else "")
                    w.writerow(row)
            cfg_path = out / f"{name}.json"
            cfg = rsmeval_config(name, sc.min, sc.max, second, description)
            cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
            written += [csv_path, cfg_path]
    return written
