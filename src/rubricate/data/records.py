"""The one record type every loader produces and every consumer (student, agents, report) reads."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from rubricate.data.tables import read_rows
from rubricate.data.text import text_problem
from rubricate.errors import InputError


@dataclass
class Record:
    """One scored (or unscored) student response.

    ``labels`` maps a rubric key (criterion id or scale id, see ``Task.label_keys``) to the official
    human label; ``rater2`` holds a second rater's labels when they exist (for human-human agreement);
    ``metadata`` carries anything else (group columns for subgroup analysis, original row numbers).
    """

    response_id: str
    task_id: str
    text: str
    labels: dict[str, int] = field(default_factory=dict)
    rater2: dict[str, int] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        """Identity of a response: response ids are unique within a task."""
        return (self.task_id, self.response_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_records(records: Iterable[Record], path: str | Path) -> Path:
    """Write records as JSONL, the native format that :func:`read_records` reads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
    return path


def iter_records(path: str | Path) -> Iterator[Record]:
    """Read native JSONL records; errors name the file, line and field."""
    path = Path(path)
    for lineno, d in read_rows(path, "jsonl"):
        for col in ("response_id", "task_id", "text"):
            if col not in d:
                raise InputError("missing field", file=path, line=lineno, column=col)
        bad = text_problem(d["text"], "response text")
        if bad:
            raise InputError(bad, file=path, line=lineno, column="text")
        yield Record(
            response_id=str(d["response_id"]),
            task_id=str(d["task_id"]),
            text=str(d["text"]),
            labels={k: int(v) for k, v in (d.get("labels") or {}).items() if v is not None},
            rater2={k: int(v) for k, v in d["rater2"].items()} if d.get("rater2") else None,
            metadata=d.get("metadata") or {},
        )


def read_records(path: str | Path) -> list[Record]:
    return list(iter_records(path))
