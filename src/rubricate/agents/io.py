"""Reading the responses to score: native records JSONL, or a CSV/TSV with id and text columns."""

from __future__ import annotations

import csv
from pathlib import Path

from rubricate.data.records import Record, read_records
from rubricate.errors import InputError


def read_responses(path: str | Path, *, task_id: str | None = None, id_col: str = "response_id",
                   text_col: str = "text", task_col: str = "task_id", score_col: str | None = None,
                   score_key: str = "score") -> list[Record]:
    """Responses from ``.jsonl`` (rubricate records) or ``.csv``/``.tsv``.

    A CSV needs ``id_col`` and ``text_col``; the task comes from ``task_col`` when present, else from
    ``task_id`` (``--task``), which also overrides nothing in a column that exists but is empty: an empty
    cell is an error. ``score_col`` optionally reads a human score into ``labels[score_key]``.
    Errors name the file, the physical line and the column.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", file=path)
    if path.suffix == ".jsonl":
        recs = read_records(path)
        if task_id is not None:
            recs = [r for r in recs if r.task_id == task_id]
        return recs
    delim = "\t" if path.suffix in (".tsv", ".tab") else ","
    out: list[Record] = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delim)
        cols = reader.fieldnames or []
        for col in (id_col, text_col):
            if col not in cols:
                raise InputError(f"missing column (columns: {cols})", file=path, line=1, column=col)
        has_task = task_col in cols
        if not has_task and task_id is None:
            raise InputError(f"no '{task_col}' column: pass --task", file=path, line=1, column=task_col)
        seen: dict[tuple[str, str], int] = {}
        for row in reader:
            line = reader.line_num
            rid = (row.get(id_col) or "").strip()
            text = row.get(text_col) or ""
            tid = (row.get(task_col) or "").strip() if has_task else task_id
            if not rid:
                raise InputError("empty response id", file=path, line=line, column=id_col)
            if not text.strip():
                raise InputError("empty response text", file=path, line=line, column=text_col)
            if not tid:
                raise InputError("empty task id", file=path, line=line, column=task_col)
            if task_id is not None and has_task and tid != task_id:
                continue
            if (tid, rid) in seen:
                raise InputError(f"duplicate response id '{rid}' (first on line {seen[(tid, rid)]})", file=path,
                                 line=line, column=id_col)
            seen[(tid, rid)] = line
            labels = {}
            if score_col and (row.get(score_col) or "").strip():
                try:
                    labels[score_key] = int(float(row[score_col]))
                except ValueError:
                    raise InputError(f"score {row[score_col]!r} is not a number", file=path, line=line,
                                     column=score_col) from None
            out.append(Record(response_id=rid, task_id=tid, text=text, labels=labels, metadata={"line": line}))
    return out


def read_price_table(path: str | Path) -> dict[str, tuple[float, float]]:
    """Prices by model name from a YAML or JSON file, in USD per 1M tokens, for cost accounting::

        gpt-4o: {input: 2.5, output: 10.0}
        gpt-4o-mini: {input: 0.15, output: 0.6}

    One file can price every model a team uses; a bad entry names the file and the model.
    """
    import yaml

    path = Path(path)
    if not path.exists():
        raise InputError("file not found", file=path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
    except yaml.YAMLError as e:
        raise InputError(f"not YAML/JSON: {e}", file=path) from None
    if not isinstance(doc, dict) or not doc:
        raise InputError("expected a mapping: model name -> {input: USD per 1M tokens, output: ...}", file=path)
    out: dict[str, tuple[float, float]] = {}
    for model, entry in doc.items():
        if not isinstance(entry, dict) or set(entry) - {"input", "output"} or "input" not in entry:
            raise InputError("expected {input: <USD per 1M tokens>, output: <USD per 1M tokens>}", file=path,
                             column=str(model))
        try:
            pin, pout = float(entry["input"]), float(entry.get("output", 0.0))
        except (TypeError, ValueError):
            raise InputError(f"prices must be numbers, got {entry}", file=path, column=str(model)) from None
        if pin < 0 or pout < 0:
            raise InputError(f"prices must be >= 0, got {entry}", file=path, column=str(model))
        out[str(model)] = (pin, pout)
    return out
