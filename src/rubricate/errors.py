"""Errors that tell the user exactly where their input is wrong (file, line, column/field)."""

from __future__ import annotations

from pathlib import Path


class RubricateError(Exception):
    """Base class for every error rubricate raises on purpose."""


class InputError(RubricateError, ValueError):
    """Bad input data: names the file, the (1-based, physical) line and the column or field.

    Loaders raise this instead of skipping a row, so that nothing is silently dropped.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.column = column
        self.reason = message
        where = []
        if self.file:
            where.append(self.file)
        if line is not None:
            where.append(f"line {line}")
        if column:
            where.append(f"column '{column}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class TaskFileError(RubricateError, ValueError):
    """A task file that does not validate; the message names the file and the field path."""

    def __init__(self, file: str | Path, problems: list[str]) -> None:
        self.file = str(file)
        self.problems = problems
        body = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{self.file}: invalid task file\n{body}")


class UnknownTaskError(RubricateError, KeyError):
    """A task id that the registry (or a checkpoint) does not know."""

    def __init__(self, task_id: str, known: list[str] | None = None) -> None:
        self.task_id = task_id
        self.known = known or []
        hint = f" (known: {', '.join(sorted(self.known)[:20])})" if self.known else ""
        super().__init__(f"unknown task '{task_id}'{hint}")

    def __str__(self) -> str:  # KeyError would quote the whole message otherwise
        return self.args[0]
