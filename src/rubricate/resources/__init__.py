"""Files shipped inside the package, so an installed ``rubricate`` works without a checkout.

``tasks/`` (the task files), ``examples/`` (the demo set) and ``recipes/`` (training recipes). A checkout
links the top-level ``tasks``, ``examples`` and ``recipes`` folders here; code reads them through
:func:`resource_path`, never through ``__file__`` arithmetic.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def resource_path(*parts: str) -> Path:
    """A shipped file or folder as a real path; the CLI and the trainer take paths, and pip installs to disk."""
    ref = files(__name__).joinpath(*parts)
    if not isinstance(ref, Path):  # a zipped install: every caller would need its own temporary copy
        raise RuntimeError(f"rubricate's resources are not on disk ({ref}); install the package unzipped")
    return ref
