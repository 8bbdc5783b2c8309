"""A CSV uploaded to ``POST /v1/batch``, read by the shared table reader (:mod:`rubricate.data.tables`): rows become :class:`Item` s checked by the same validation as
``/v1/score``; a row with a problem is reported with its physical line and field, the others are scored.

An upload whose rows all fail is refused (:class:`ValidationFailed`, a 422 listing every row) instead of
becoming a job that scores nothing.
"""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rubricate.data.tables import open_table
from rubricate.errors import InputError

from rubricate.serve.service import ScoringService
from rubricate.serve.validation import Item, Problem, ValidationFailed


class TooManyRows(Exception):
    """More rows than ``max_upload_rows`` (HTTP 413)."""


@dataclass
class Upload:
    """The rows to score and the rows refused (``{"line", "field", "error"}``)."""

    items: list[Item]
    problems: list[dict[str, Any]]


def _read_rows(raw: bytes, name: str, default_task: str | None, max_rows: int
               ) -> tuple[list[Item], list[int], list[dict[str, Any]]]:
    """Items, the physical line each starts on, and the malformed rows - read by ``rubricate.data.tables``."""
    with tempfile.TemporaryDirectory(prefix="rubricate-upload-") as tmp:
        path = Path(tmp) / "upload.csv"
        path.write_bytes(raw)
        try:
            with open_table(path, "csv") as table:
                cols = table.columns or []
                if "text" not in cols:
                    raise ValidationFailed([Problem(("body", "file"), f"{name}: no 'text' column (columns: {cols})",
                                                    "missing_column")])
                if "task_id" not in cols and not default_task:
                    raise ValidationFailed([Problem(("body", "task_id"), f"{name}: no 'task_id' column and no task "
                                                    "chosen", "missing_column")])
                return _rows(table, default_task, max_rows, name)
        except InputError as e:
            where = f", line {e.line}" if e.line is not None else ""
            raise ValidationFailed([Problem(("body", "file"), f"{name}{where}: {e.reason}", "file")]) from None


def _rows(table: Any, default_task: str | None, max_rows: int, name: str
          ) -> tuple[list[Item], list[int], list[dict[str, Any]]]:
    items: list[Item] = []
    lines: list[int] = []
    malformed: list[dict[str, Any]] = []
    prefix = "upload-" + uuid.uuid4().hex[:8]
    for row in table.rows():
        if len(items) + len(malformed) >= max_rows:
            raise TooManyRows(f"{name}: more than {max_rows} rows")
        if row.problem is not None:
            malformed.append({"line": row.line, "field": row.problem.column or "row", "error": row.problem.message})
            continue
        v = row.values
        task = (v.get("task_id") or "").strip() or (default_task or "")
        rid = (v.get("response_id") or "").strip() or f"{prefix}-line{row.line}"
        items.append(Item(task, v.get("text") or "", rid))
        lines.append(row.line)
    return items, lines, malformed


def parse_upload(service: ScoringService, raw: bytes, name: str, default_task: str | None) -> Upload:
    """Validate every row like ``/v1/score`` (plus conflicts with stored responses); keep the good ones."""
    items, lines, malformed = _read_rows(raw, name, default_task, service.settings.max_upload_rows)
    if not items and not malformed:
        raise ValidationFailed([Problem(("body", "file"), "the CSV has no rows", "empty")])
    bad = service.validate(items, "file")
    bad += service.find_conflicts(items, service.keys_for(items), "file")
    by_row: dict[int, list[Problem]] = {}
    for p in bad:
        by_row.setdefault(int(p.loc[2]), []).append(p)
    problems = malformed + [{"line": lines[i], "field": str(p.loc[-1]), "error": p.to_dict()["msg"]}
                            for i, ps in sorted(by_row.items()) for p in ps]
    problems.sort(key=lambda p: p["line"])
    good = [it for i, it in enumerate(items) if i not in by_row]
    if not good:
        raise ValidationFailed([Problem(("body", "file", pr["line"], pr["field"]), pr["error"], "invalid_row")
                                for pr in problems])
    return Upload(good, problems)
