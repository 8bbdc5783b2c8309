"""One validation for everything the server accepts: JSON items, CSV upload rows, agents requests.

A problem is located like FastAPI's own errors (``("body", "items", 3, "task_id")``) so that a client sees
the same shape whichever check failed; every message goes through :func:`safe_text`, so that echoing a
hostile value (a lone surrogate, a NUL) can never break the response that reports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from rubricate.data.text import is_blank, text_problem
from rubricate.serve.db import MAX_ID_CHARS
from rubricate.tasks import TaskRegistry


def safe_text(value: Any, limit: int = 200) -> str:
    """``value`` as printable, encodable text: lone surrogates and control characters escaped, cut at ``limit``."""
    s = value if isinstance(value, str) else repr(value)
    if len(s) > limit:
        s = s[:limit] + "…"
    s = s.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in s)


@dataclass
class Problem:
    """One validation problem; ``msg`` is always safe to render (see :func:`safe_text`)."""

    loc: tuple[Any, ...]
    msg: str
    type: str

    def to_dict(self) -> dict[str, Any]:
        return {"loc": [safe_text(p) if isinstance(p, str) else p for p in self.loc], "msg": safe_text(self.msg, 2000),
                "type": self.type}


class ValidationFailed(Exception):
    """Input the server refuses (HTTP 422); nothing was written."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems[:5]))


class Conflict(ValidationFailed):
    """A ``(task_id, response_id)`` already stored with a different text, or a review already decided (HTTP 409)."""


class NotFound(Exception):
    """An id that names nothing (HTTP 404)."""


@dataclass
class Item:
    """One response to score: what a JSON item and a CSV upload row both become."""

    task_id: str
    text: str
    response_id: str | None = None


def storable_problem(value: str, what: str) -> str | None:
    """Why a free-text field (a comment, which may be empty) cannot be stored: NUL or a lone surrogate."""
    return None if is_blank(value) else text_problem(value, what)


def _id_problems(value: str, what: str, loc: tuple[Any, ...]) -> list[Problem]:
    bad = text_problem(value, what)
    if bad:
        return [Problem(loc, bad, "empty_text" if is_blank(value) else "invalid_text")]
    if len(value) > MAX_ID_CHARS:
        return [Problem(loc, f"{what} has {len(value)} characters; the limit is {MAX_ID_CHARS}", "too_long")]
    return []


def _text_problems(text: str, max_chars: int, loc: tuple[Any, ...]) -> list[Problem]:
    """One definition of a usable text (``rubricate.data.text``), plus the server's length limit."""
    if isinstance(text, str) and is_blank(text):
        return [Problem(loc, "empty response text (only whitespace or invisible characters)", "empty_text")]
    bad = text_problem(text, "text")
    if bad:
        return [Problem(loc, bad, "invalid_text")]
    if len(text) > max_chars:
        return [Problem(loc, f"text has {len(text)} characters; the limit is {max_chars}", "text_too_long")]
    return []


def validate_items(items: Sequence[Item], tasks: TaskRegistry, max_text_chars: int, *, field: str = "items",
                   student_tasks: TaskRegistry | None = None) -> list[Problem]:
    """Every problem of a batch (not just the first), so a client can fix them all at once.

    ``student_tasks``: when given, a task the served student does not score is a problem too.
    """
    problems: list[Problem] = []
    seen: dict[tuple[str, str], int] = {}
    for i, it in enumerate(items):
        loc = ("body", field, i)
        bad_task = storable_problem(it.task_id, "task_id")
        if bad_task:
            problems.append(Problem(loc + ("task_id",), bad_task, "invalid_text"))
        elif it.task_id not in tasks:
            known = ", ".join(tasks.ids[:20])
            problems.append(Problem(loc + ("task_id",), f"unknown task '{it.task_id}' (known: {known})",
                                    "unknown_task"))
        elif student_tasks is not None and it.task_id not in student_tasks:
            problems.append(Problem(loc + ("task_id",), f"task '{it.task_id}' is not in the served model",
                                    "unknown_task"))
        problems += _text_problems(it.text, max_text_chars, loc + ("text",))
        if it.response_id is not None:
            id_bad = _id_problems(it.response_id, "response_id", loc + ("response_id",))
            problems += id_bad
            key = (it.task_id, it.response_id)
            if not id_bad and key in seen:
                problems.append(Problem(loc + ("response_id",), f"duplicate of item {seen[key]} in this batch",
                                        "duplicate"))
            seen.setdefault(key, i)
    return problems
