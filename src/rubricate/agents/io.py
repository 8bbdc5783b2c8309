"""Reading the responses to score: native records JSONL, or a CSV/TSV/Parquet table with id and text columns."""

from __future__ import annotations

from pathlib import Path

from rubricate.data.records import Record, read_records
from rubricate.data.tables import detect_format, require_columns, strict_rows
from rubricate.data.text import text_problem
from rubricate.errors import InputError


def read_responses(path: str | Path, *, task_id: str | None = None, id_col: str = "response_id",
                   text_col: str = "text", task_col: str = "task_id", score_col: str | None = None,
                   score_key: str = "score") -> list[Record]:
    """Responses from ``.jsonl`` (rubricate records) or a table (CSV/TSV/Parquet, :mod:`rubricate.data.tables`).

    A table needs ``id_col`` and ``text_col``; the task comes from ``task_col`` when present, else from
    ``task_id`` (``--task``), which also overrides nothing in a column that exists but is empty: an empty
    cell is an error. ``score_col`` optionally reads a human score into ``labels[score_key]``. A text that is
    blank (invisible characters included), not a string or holds a NUL is an error (:mod:`rubricate.data.text`).
    Errors name the file, the physical line (where the row starts) and the column.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", file=path)
    if detect_format(path) == "jsonl":
        recs = read_records(path)
        if task_id is not None:
            recs = [r for r in recs if r.task_id == task_id]
        return recs
    cols, rows = strict_rows(path, tolerate=("too_few_fields",))
    require_columns(path, cols or [], [id_col, text_col])
    has_task = task_col in (cols or [])
    if not has_task and task_id is None:
        raise InputError(f"no '{task_col}' column: pass --task", file=path, line=1, column=task_col)
    out: list[Record] = []
    seen: dict[tuple[str, str], int] = {}
    for line, row in rows:
        rid = _cell(row, id_col)
        tid = _cell(row, task_col) if has_task else task_id
        if not rid:
            raise InputError("empty response id", file=path, line=line, column=id_col)
        text = row.get(text_col)
        bad = text_problem("" if text is None else text, "response text")
        if bad:
            raise InputError(bad, file=path, line=line, column=text_col)
        if not tid:
            raise InputError("empty task id", file=path, line=line, column=task_col)
        if task_id is not None and has_task and tid != task_id:
            continue
        if (tid, rid) in seen:
            raise InputError(f"duplicate response id '{rid}' (first on line {seen[(tid, rid)]})", file=path,
                             line=line, column=id_col)
        seen[(tid, rid)] = line
        labels = {}
        if score_col and _cell(row, score_col):
            try:
                labels[score_key] = int(float(row[score_col]))
            except ValueError:
                raise InputError(f"score {row[score_col]!r} is not a number", file=path, line=line,
                                 column=score_col) from None
        out.append(Record(response_id=rid, task_id=tid, text=text, labels=labels, metadata={"line": line}))
    return out


def _cell(row: dict, col: str) -> str:
    """A cell as stripped text ("" when absent or empty)."""
    v = row.get(col)
    return "" if v is None else str(v).strip()


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
