"""A faster start for dgf's commands: Keras imported without scikit-learn and
matplotlib.

Keras imports scikit-learn at start-up whenever it is installed (for its
scikit-learn wrappers, ``keras.wrappers``; nncf, which the int8 path uses, brings
it in), and matplotlib's pyplot (for its image-gallery plots,
``keras.visualization``). That costs every command about 0.6 s and 0.45 s
(``python -X importtime -c "import keras"``: scikit-learn 0.51-0.58 s and
matplotlib 0.45 s of Keras's 3.7-4.0 s, 2-core AMD EPYC with AVX-512, 2026-12-07),
and no dgf command uses those wrappers or plots. So in a process that exists to
run a dgf command (:func:`dgf.commands.common.run` with ``program``), :func:`install`
refuses those Keras modules their import of these packages: Keras's own fallback for
a missing package takes over, and only those wrappers and plots are unavailable in
that process. Any other import of them goes ahead (nncf imports scikit-learn when
int8 is asked for; dgf-eval draws its curves with matplotlib, though not with
pyplot). A program or
notebook that imports dgf as a library is not touched. This module imports neither
TensorFlow nor Keras.
"""
from __future__ import annotations

import importlib.abc
import sys

#: What Keras imports at start-up that dgf's commands never use, with the Keras
#: package whose import of it is refused.
HIDDEN = {"sklearn": "keras.src.wrappers", "matplotlib": "keras.src.visualization"}


def install() -> None:
    """Refuse, in this process, Keras's scikit-learn wrappers and plots their import
    of scikit-learn and matplotlib (module docstring); any other import of them goes
    ahead. A package imported already stays as it is."""
    if not any(isinstance(f, _KerasWithoutExtras) for f in sys.meta_path):
        sys.meta_path.insert(0, _KerasWithoutExtras())


class _KerasWithoutExtras(importlib.abc.MetaPathFinder):
    """Raises ImportError for a :data:`HIDDEN` package (or one of its modules)
    imported by the Keras package named with it, which Keras handles as the package
    being absent; every other import passes by."""

    def find_spec(self, fullname, path, target=None):
        keras_package = HIDDEN.get(fullname.partition(".")[0])
        if keras_package is None:
            return None
        frame = sys._getframe(1)
        while frame is not None:
            caller = frame.f_globals.get("__name__", "")
            if caller == keras_package or caller.startswith(keras_package + "."):
                raise ModuleNotFoundError(
                    f"{fullname} is not loaded for {keras_package} in dgf's commands",
                    name=fullname)
            frame = frame.f_back
        return None
