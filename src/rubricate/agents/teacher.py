"""Bridge to the student: agent results -> a teacher-outputs file (soft labels for distillation).

For every result with status ``ok``, each scale's score distribution P(s = min..max) becomes the
cumulative indicators P(s >= k) of :class:`rubricate.labels.LabelEncoding`, and each criterion's
P(criterion = 1), in the encoding's label order, keyed by (task_id, response_id). The distribution is

* the self-consistency vote shares (``--samples N``), or
* the renormalised token log-probabilities of the score digit (backends that return them), or
* with ``allow_hard=True`` only, the single score as a one-hot distribution (a hard label; off by
  default because it carries no uncertainty for the student to learn from).

Failed results are never turned into labels: they are left out and counted in the summary, so the
student's alignment policy (``allow_missing``) sees them as missing, not as a score.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from rubricate.agents.cache import read_latest
from rubricate.data.teacher_file import TeacherRow, write_teacher_file
from rubricate.labels import LabelEncoding
from rubricate.tasks import TaskRegistry


def teacher_rows_from_results(rows: list[dict[str, Any]], registry: TaskRegistry, *, allow_hard: bool = False,
                              source: str | None = None) -> tuple[list[TeacherRow], dict[str, Any]]:
    """Teacher rows from result dicts (as stored in a results JSONL) and a summary of what was left out."""
    encodings: dict[str, LabelEncoding] = {}
    out: list[TeacherRow] = []
    skipped: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    for row in rows:
        if row.get("status") != "ok":
            skipped["failed"] += 1
            continue
        tid = str(row["task_id"])
        if tid not in encodings:
            encodings[tid] = LabelEncoding.from_task(registry.get(tid))
        enc = encodings[tid]
        dists: dict[str, list[float]] | None = row.get("score_distribution")
        kind = row.get("distribution_source")
        if not dists:
            if not allow_hard:
                skipped["no_distribution"] += 1
                continue
            task = registry.get(tid)
            dists = {}
            for sc in task.scales:
                dists[sc.id] = [float(s == row["scores"][sc.id]) for s in sc.scores]
            for c in task.criteria:
                dists[c.id] = [float(row["scores"][c.id] == 0), float(row["scores"][c.id] == 1)]
            kind = "hard"
        probs: list[float] = []
        scale_min = {s.id: s.min for s in enc.scales}
        ok = True
        for spec in enc.specs:
            d = dists.get(spec.source)
            if d is None:
                ok = False
                break
            if spec.kind == "criterion":
                probs.append(float(d[1]))
            else:
                start = spec.threshold - scale_min[spec.source]  # type: ignore[operator]
                probs.append(float(min(1.0, max(0.0, sum(d[start:])))))
        if not ok:
            skipped["incomplete_distribution"] += 1
            continue
        sources[kind or "unknown"] += 1
        src = source or f"agents:{row.get('backend', '')}:{row.get('model', '')}:{row.get('mode', '')}"
        out.append(TeacherRow(tid, str(row["response_id"]), enc.names, probs=probs, source=src,
                              extra={"distribution": kind, "score": row.get("score")}))
    summary = {"written": len(out), "skipped": dict(skipped), "distribution_sources": dict(sources)}
    return out, summary


def teacher_file_from_results(results_path: str | Path, registry: TaskRegistry, out_path: str | Path, *,
                              allow_hard: bool = False, source: str | None = None) -> dict[str, Any]:
    """Write the teacher-outputs file for a results JSONL (last row per response wins); returns the summary."""
    rows = list(read_latest(results_path).values())
    teacher, summary = teacher_rows_from_results(rows, registry, allow_hard=allow_hard, source=source)
    write_teacher_file(teacher, out_path)
    summary["path"] = str(out_path)
    return summary
