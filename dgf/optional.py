"""Modules imported on first use: the optional ones (the ``onnx`` and ``openvino``
extras), and Keras where a module's other functions run without TensorFlow.

tf2onnx (with onnx), OpenVINO and ONNX Runtime cost a command about 0.25 s to import
(``-X importtime`` on the AVX-512 host: tf2onnx 0.16 s, OpenVINO 0.06 s, ONNX Runtime
0.04 s). A deblur that runs on TensorFlow uses none of them, so the modules that may
need them hold a :class:`Lazy` stand-in: whether the module is installed is known
without importing it (:meth:`Lazy.missing`), and the first attribute read imports it.
This module imports neither TensorFlow nor any of them.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any


class Lazy:
    """The module ``name``, imported when an attribute of it is first read."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: Any = None
        self._error: str | None = None

    def missing(self) -> str | None:
        """None when the module is installed (and did not fail to import), else why
        not, as its import error reads (``ModuleNotFoundError: No module named ...``)."""
        if self._error is None and self._module is None \
                and importlib.util.find_spec(self._name) is None:
            self._error = f"ModuleNotFoundError: No module named '{self._name}'"
        return self._error

    def module(self) -> Any:
        """The imported module; ImportError (also on later calls) when it cannot be."""
        if self._module is None:
            if self.missing() is not None:
                raise ImportError(self._error)
            try:
                self._module = importlib.import_module(self._name)
            except ImportError as exc:
                self._error = f"{type(exc).__name__}: {exc}"
                raise
        return self._module

    def __getattr__(self, attribute: str) -> Any:
        # Copy and pickle probes (``__deepcopy__``, ``__reduce_ex__``) and our own
        # fields are not the module's; its version is.
        if attribute.startswith("_") and attribute != "__version__":
            raise AttributeError(attribute)
        return getattr(self.module(), attribute)

    def __repr__(self) -> str:
        return f"<optional module {self._name!r}>"
