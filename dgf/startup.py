"""A faster start for dgf's commands: Keras imported without scikit-learn.

Keras imports scikit-learn at start-up whenever it is installed (for its
scikit-learn wrappers, ``keras.wrappers``; nncf, which the int8 path uses, brings
it in). That costs every command about 0.6 s (``python -X importtime -c "import
keras"``: scikit-learn 0.51-0.58 s of Keras's 3.7-4.0 s, 2-core AMD EPYC with
AVX-512, 2026-12-07), and no dgf command uses those wrappers. So in a process that
exists to run a dgf command (:func:`dgf.commands.common.run` with ``program``),
:func:`install` refuses Keras's wrappers their import of scikit-learn: Keras's own
fallback for a missing scikit-learn takes over, and only its scikit-learn wrappers
are unavailable in that process. Any other import of scikit-learn goes ahead (nncf
imports it when int8 is asked for). A program or notebook that imports dgf as a
library is not touched. This module imports neither TensorFlow nor Keras.
"""
from __future__ import annotations

import importlib.abc
import sys

#: What Keras imports at start-up that dgf's commands never use.
HIDDEN = "sklearn"
#: The Keras modules whose import of it is refused.
_KERAS_WRAPPERS = "keras.src.wrappers"


def install() -> None:
    """Refuse, in this process, Keras's scikit-learn wrappers their import of
    scikit-learn (module docstring); any other import of it goes ahead. Nothing
    changes once scikit-learn is imported."""
    if HIDDEN in sys.modules:
        return
    if not any(isinstance(f, _KerasWithoutSklearn) for f in sys.meta_path):
        sys.meta_path.insert(0, _KerasWithoutSklearn())


class _KerasWithoutSklearn(importlib.abc.MetaPathFinder):
    """Raises ImportError for ``sklearn`` imported by ``keras.src.wrappers``, which
    Keras handles as scikit-learn being absent; every other import passes by."""

    def find_spec(self, fullname, path, target=None):
        if fullname != HIDDEN:
            return None
        frame = sys._getframe(1)
        while frame is not None:
            caller = frame.f_globals.get("__name__", "")
            if caller == _KERAS_WRAPPERS or caller.startswith(_KERAS_WRAPPERS + "."):
                raise ModuleNotFoundError(
                    f"{HIDDEN} is not loaded for Keras's wrappers in dgf's commands",
                    name=HIDDEN)
            frame = frame.f_back
        return None
