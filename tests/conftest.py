"""Shared fixtures. Tests that need the real datasets use ``shared_data`` and skip cleanly without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RUBRICATE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """Path to ../shared/data; skips the test when the datasets are absent (e.g. a clean CI clone)."""
    if not (SHARED_DATA / "asap-sas" / "train.tsv").exists():
        pytest.skip(f"shared datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def repo_root() -> Path:
    return REPO
