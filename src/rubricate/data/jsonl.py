"""Compatibility shim: JSONL is read by :mod:`rubricate.data.tables` (``read_rows(path, "jsonl")``).

Kept only so that existing imports of ``iter_jsonl`` keep working; new code calls :func:`read_rows`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from rubricate.data.tables import read_rows


def iter_jsonl(path: str | Path, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, object)`` per non-blank line; a bad line raises an InputError naming the file and line."""
    return read_rows(path, "jsonl", encoding=encoding)
