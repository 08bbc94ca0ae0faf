"""The generator that ships with dgf, and its model card.

``bundled_model()`` is what ``dgf-deblur`` uses when no ``--model`` is given: a
residual DGF generator at channel rate 32 with a space-to-depth-4 head (about
3.5 MB) trained on CPU with ``configs/cpu-pairs-small-s2d4.yaml``. ``MODEL_CARD.md`` beside it says what it was
trained on, how, its test numbers, and what it is not good for.
"""
from __future__ import annotations

from pathlib import Path

from dgf.errors import DgfError

WEIGHTS_DIR = Path(__file__).resolve().parent
BUNDLED_MODEL_NAME = "dgf-s2d4-cr32-pairs-small.keras"
MODEL_CARD = WEIGHTS_DIR / "MODEL_CARD.md"


def bundled_model() -> Path:
    """Path of the bundled generator; DgfError if the installation lacks it."""
    path = WEIGHTS_DIR / BUNDLED_MODEL_NAME
    if not path.is_file():
        raise DgfError(
            f"the bundled model {path} is missing from this installation; reinstall dgf "
            f"or pass a generator trained with dgf-train via --model"
        )
    return path
