"""One JSONL reader for every JSONL input (records, teacher files, predictions, tables).

It streams the file line by line and turns every problem into an :class:`InputError` naming the file and
the physical line, so no reader re-implements (or forgets) the checks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from rubricate.errors import InputError


def iter_jsonl(path: str | Path, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; blank lines are allowed and skipped.

    Errors: undecodable bytes, invalid JSON, or a line that is not a JSON object.
    """
    path = Path(path)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as e:
                raise InputError(f"undecodable bytes (not {encoding}) at byte {e.start}", file=path,
                                 line=lineno) from None
            obj = parse_jsonl_line(line, path, lineno)
            if obj is not None:
                yield lineno, obj


def parse_jsonl_line(line: str, path: str | Path, lineno: int) -> dict[str, Any] | None:
    """One decoded line -> its JSON object (None for a blank line); errors name the file and line."""
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON: {e.msg} (character {e.pos})", file=path, line=lineno) from None
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object, got {type(obj).__name__}", file=path, line=lineno)
    return obj
