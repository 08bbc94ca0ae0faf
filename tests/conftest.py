"""Shared test setup: quiet TensorFlow, small thread pools, paths to shared data."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

REPO = Path(__file__).resolve().parents[1]
PAIRS_SMALL = REPO.parent / "shared" / "data" / "pairs-small"


@pytest.fixture
def pairs_small() -> Path:
    """The 604 real side-by-side pairs, or a skip that says they are absent."""
    if not (PAIRS_SMALL / "train").is_dir():
        pytest.skip(f"real pairs not found at {PAIRS_SMALL} (shared data absent)")
    return PAIRS_SMALL
