"""Type checks for option values that Python's own ``isinstance`` gets wrong.

``bool`` is a subclass of ``int``, so ``isinstance(True, int)`` holds and a flag
passed where a count belongs would slip through. These checks say "a number, not a
bool". No TensorFlow import.
"""
from __future__ import annotations

import numpy as np


def is_int(value: object, *, numpy: bool = True) -> bool:
    """``value`` is a whole number: an ``int`` (or, with ``numpy``, an
    ``np.integer``), never a ``bool``."""
    kinds = (int, np.integer) if numpy else int
    return isinstance(value, kinds) and not isinstance(value, (bool, np.bool_))


def is_number(value: object, *, numpy: bool = True) -> bool:
    """``value`` is an ``int`` or ``float`` (or, with ``numpy``, a NumPy integer
    or float), never a ``bool``."""
    kinds = (int, float, np.integer, np.floating) if numpy else (int, float)
    return isinstance(value, kinds) and not isinstance(value, (bool, np.bool_))
