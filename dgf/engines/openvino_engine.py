"""``--engine openvino``: the generator's ONNX conversion under OpenVINO's CPU plugin
(extra ``openvino``).

fp32 and bf16 compile the one fp32 conversion (:mod:`dgf.engines.onnx_conversion`)
with OpenVINO's ``INFERENCE_PRECISION_HINT`` (``f32``, ``bf16``); bf16 only on a CPU
with native bfloat16 (its ``OPTIMIZATION_CAPABILITIES`` list ``BF16``). int8 runs the
model quantised by NNCF (:func:`dgf.quantize.int8_call`). OpenVINO compiles once per
input shape (a tile shape; a fraction of a second) and keeps each compiled model for
the life of the call.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from dgf import quantize
from dgf.engines import onnx_conversion
from dgf.engines.base import Call, Engine, Model
from dgf.errors import DgfError
from dgf.optional import Lazy
from dgf.options import engine_row

openvino = Lazy("openvino")  # optional (extra openvino), imported on first use

#: OpenVINO's precision hint per dgf precision.
HINTS = {"fp32": "f32", "bf16": "bf16"}


@functools.cache
def core():
    """The process's OpenVINO runtime (one per process, as OpenVINO advises)."""
    return openvino.Core()


class OpenVinoCall:
    """OpenVINO's CPU plugin on a model (ONNX bytes or an ``openvino.Model``),
    compiled per input shape with ``config``: float32 in, float32 out."""

    def __init__(self, model: Any, source: str, config: dict[str, str]) -> None:
        self.source = source
        self.config = dict(config)
        try:
            self.model = core().read_model(model) if isinstance(model, bytes) else model
        except Exception as exc:  # OpenVINO raises RuntimeError and its own types
            raise DgfError(f"OpenVINO cannot read the conversion of {source} "
                           f"({type(exc).__name__}: {exc}); use --engine tensorflow") from exc
        self.compiled: dict[tuple[int, ...], Any] = {}

    def _compiled(self, shape: tuple[int, ...]):
        if shape not in self.compiled:
            model = self.model.clone()
            model.reshape(list(shape))
            try:
                compiled = core().compile_model(model, "CPU", self.config)
            except Exception as exc:  # noqa: BLE001 - its compiler's own error types
                raise DgfError(f"OpenVINO cannot compile {self.source} for input "
                               f"{'x'.join(map(str, shape))} ({type(exc).__name__}: {exc}); "
                               f"use --engine tensorflow") from exc
            self.compiled[shape] = (compiled, compiled.create_infer_request())
        return self.compiled[shape]

    def __call__(self, x: Any) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        compiled, request = self._compiled(tuple(int(s) for s in x.shape))
        # The request owns its output buffer and reuses it on the next call: copy.
        return np.array(request.infer({0: x})[compiled.output(0)], dtype=np.float32)


class OpenVinoEngine(Engine):
    def missing(self) -> str | None:
        reason = openvino.missing()
        if reason is not None:
            return f"openvino, which is not installed ({reason})"
        return onnx_conversion.missing()

    def host_reason(self, precision: str) -> str | None:
        if precision != "bf16":
            return None
        capabilities = core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in capabilities:
            return (f"OpenVINO computes bf16 only on a CPU with native bfloat16; this one "
                    f"offers {', '.join(capabilities)}")
        return None

    def versions(self) -> dict[str, str]:
        return {"openvino": openvino.__version__}

    def prepare(self, model: Model, precision: str, path: str) -> tuple[Call, float]:
        if precision == "int8":
            return quantize.prepared(model, self.name)
        data, seconds = onnx_conversion.model_bytes(model, self.name)
        call = OpenVinoCall(data, model.source, {"INFERENCE_PRECISION_HINT": HINTS[precision]})
        return call, seconds


ENGINE = OpenVinoEngine(engine_row("openvino"))
