"""Component reliability: extracted components against a human-annotated components file.

The paper's validation study asks whether the extraction agent finds the same evidence a trained
annotator does. Gold file: CSV, TSV or Parquet (read by :mod:`rubricate.data.tables`) with ``response_id``, optionally ``task_id``, and one column
per component id. Cell values by component type:

* boolean: ``1/0``, ``true/false``, ``yes/no`` (case-insensitive);
* count: a whole number;
* list: a number of items, or the items separated by ``;`` (compared as counts; the items, when given,
  also as normalised sets for exact match);
* text: free text (exact match after normalisation only).

Per component: n, accuracy (equal values), Cohen's κ (unweighted for booleans, quadratic for counts and
list lengths; via ``rubricate.metrics.kappa``), MAE, RMSE, Pearson r and exact match; overall, the
share of responses whose every component matches. Empty gold cells are missing (left out of that
component's metrics); a response missing from the predictions, or a failed prediction, is reported in
``missing`` and never counted as agreement or disagreement.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from rubricate.agents.cache import read_latest
from rubricate.agents.pipeline import normalize_text
from rubricate.agents.schemas import agent_components
from rubricate.data.tables import require_columns, strict_rows
from rubricate.errors import InputError
from rubricate.metrics import kappa
from rubricate.tasks import Component, Task

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


def _gold_value(comp: Component, cell: str, path: Path, line: int) -> Any:
    s = cell.strip()
    if comp.type == "boolean":
        if s.lower() in _TRUE:
            return True
        if s.lower() in _FALSE:
            return False
        raise InputError(f"expected a boolean (1/0, true/false, yes/no), got {cell!r}", file=path, line=line,
                         column=comp.id)
    if comp.type == "count":
        try:
            v = int(float(s))
        except ValueError:
            raise InputError(f"expected a whole number, got {cell!r}", file=path, line=line, column=comp.id) from None
        if v < 0:
            raise InputError(f"negative count {v}", file=path, line=line, column=comp.id)
        return v
    if comp.type == "list":
        try:
            return int(s)
        except ValueError:
            return [x.strip() for x in s.split(";") if x.strip()]
    return s


def read_gold_components(path: str | Path, task: Task) -> dict[str, dict[str, Any]]:
    """response_id -> {component id: gold value}; errors name the file, line and column."""
    path = Path(path)
    comps = {c.id: c for c in agent_components(task)}
    cols, rows = strict_rows(path, tolerate=("too_few_fields",))
    require_columns(path, cols or [], ["response_id"])
    present = [c for c in comps if c in (cols or [])]
    if not present:
        raise InputError(f"no component column; task '{task.id}' has components {list(comps)}", file=path, line=1)
    out: dict[str, dict[str, Any]] = {}
    for line, row in rows:
        cell = {c: "" if row.get(c) is None else str(row[c]).strip() for c in ("task_id", "response_id", *present)}
        if "task_id" in (cols or []) and cell["task_id"] not in ("", task.id):
            continue
        rid = cell["response_id"]
        if not rid:
            raise InputError("empty response id", file=path, line=line, column="response_id")
        if rid in out:
            raise InputError(f"duplicate response id '{rid}'", file=path, line=line, column="response_id")
        out[rid] = {c: _gold_value(comps[c], cell[c], path, line) for c in present if cell[c]}
    return out


def _as_number(comp: Component, value: Any) -> float | None:
    if value is None:
        return None
    if comp.type == "boolean":
        return float(bool(value))
    if comp.type == "count":
        return float(value)
    if comp.type == "list":
        return float(value) if isinstance(value, int) else float(len(value))
    return None


def _same(comp: Component, gold: Any, pred: Any) -> bool:
    if comp.type == "text":
        return normalize_text(str(gold)) == normalize_text(str(pred or ""))
    if comp.type == "list" and isinstance(gold, list):
        return {normalize_text(x) for x in gold} == {normalize_text(x) for x in (pred or [])}
    return _as_number(comp, gold) == _as_number(comp, pred)


def component_reliability(results_path: str | Path, gold_path: str | Path, task: Task) -> dict[str, Any]:
    """Agreement of extracted components (a results JSONL) with human annotations, per component."""
    gold = read_gold_components(gold_path, task)
    latest = read_latest(results_path)
    comps = {c.id: c for c in agent_components(task)}
    preds: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    for rid in gold:
        row = latest.get((task.id, rid))
        if row is None or row.get("status") != "ok" or not row.get("components"):
            missing.append(rid)
            continue
        preds[rid] = {cid: cv.get("value") for cid, cv in row["components"].items()}
    per: dict[str, dict[str, Any]] = {}
    for cid, comp in comps.items():
        pairs = [(g[cid], preds[rid].get(cid)) for rid, g in gold.items() if rid in preds and cid in g]
        if not pairs:
            continue
        same = [_same(comp, g, p) for g, p in pairs]
        m: dict[str, Any] = {"type": comp.type, "n": len(pairs), "exact_match": float(np.mean(same))}
        if comp.type != "text":
            h = np.array([_as_number(comp, g) for g, _ in pairs])
            p = np.array([_as_number(comp, pv) for _, pv in pairs])
            m["accuracy"] = float(np.mean(h == p))
            labels = sorted(set(h.astype(int).tolist()) | set(p.astype(int).tolist()))
            k, note = kappa(h.astype(int), p.astype(int), labels=labels,
                            weights=None if comp.type == "boolean" else "quadratic")
            m["kappa"], m["kappa_note"] = k, note
            m["mae"] = float(np.mean(np.abs(h - p)))
            m["rmse"] = float(math.sqrt(np.mean((h - p) ** 2)))
            if np.std(h) > 0 and np.std(p) > 0:
                m["pearson"] = float(np.corrcoef(h, p)[0, 1])
            else:
                m["pearson"], m["pearson_note"] = math.nan, "a constant series: Pearson r is undefined"
        else:
            m["accuracy"] = m["exact_match"]
        per[cid] = m
    all_match = [all(_same(comps[c], g[c], preds[rid].get(c)) for c in g if c in comps)
                 for rid, g in gold.items() if rid in preds]
    return {"task_id": task.id, "n_gold": len(gold), "n_compared": len(preds), "missing": missing,
            "exact_match_all_components": float(np.mean(all_match)) if all_match else math.nan,
            "components": per}
