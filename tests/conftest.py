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


@pytest.fixture(scope="module")
def generator():
    """A tiny DGF generator (channel rate 8) with fixed weights, for inference tests."""
    import keras

    from dgf.models import build_generator

    keras.utils.set_random_seed(3)
    return build_generator(channel_rate=8)


@pytest.fixture(scope="module")
def model_file(generator, tmp_path_factory) -> Path:
    """``generator`` saved as a .keras file."""
    path = tmp_path_factory.mktemp("model") / "generator.keras"
    generator.save(path)
    return path
