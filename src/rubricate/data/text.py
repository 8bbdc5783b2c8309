"""What counts as a usable response text: one definition for the loaders, ``predict``, the agents and the server.

A text that *looks* empty is empty: ``"\\u200b"`` (zero-width space) or ``"\\ufeff\\u2060"`` render as
nothing, so scoring them would put a score on no answer. :func:`is_blank` therefore applies Unicode NFKC
normalisation (which also folds exotic spaces such as U+3000 to plain ones) and then ignores whitespace and
*format* characters (general category ``Cf``: zero-width spaces and joiners, BOM, word joiner, bidi marks).
"""

from __future__ import annotations

import unicodedata
from typing import Any

#: Unicode general category of the invisible "format" characters that :func:`is_blank` ignores.
FORMAT_CATEGORY = "Cf"


def is_blank(text: str) -> bool:
    """True when ``text`` has no visible character (after NFKC, ignoring whitespace and format characters)."""
    normalized = unicodedata.normalize("NFKC", text)
    return all(ch.isspace() or unicodedata.category(ch) == FORMAT_CATEGORY for ch in normalized)


def text_problem(value: Any, what: str = "text") -> str | None:
    """Why ``value`` cannot be a response text (``what`` names the field in the message), or None.

    Refused: a non-string (``"text": 5`` in JSON is a mistake, not the answer "5"), a NUL character (no
    database stores it faithfully), a lone surrogate (not encodable as UTF-8) and a blank text (:func:`is_blank`).
    """
    if not isinstance(value, str):
        return f"{what} must be a string, got {type(value).__name__}"
    if "\x00" in value:
        return f"{what} contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{what} is not valid Unicode (lone surrogate)"
    if is_blank(value):
        return f"empty {what} (only whitespace or invisible characters)"
    return None
