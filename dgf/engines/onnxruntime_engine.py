"""``--engine onnxruntime``: the generator's ONNX conversion under ONNX Runtime's CPU
provider (extra ``onnx``).

fp32 runs the converted file (:mod:`dgf.engines.onnx_conversion`). Its CPU provider has
no bfloat16 convolution, so bf16 is not in its row and ``--precision auto`` is fp32
here. int8 runs the file quantised by :func:`dgf.quantize.int8_call` (QDQ, calibrated
on real images).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from dgf import quantize
from dgf.engines import onnx_conversion
from dgf.engines.base import Call, Engine, Model
from dgf.errors import DgfError
from dgf.optional import Lazy
from dgf.options import engine_row

onnxruntime = Lazy("onnxruntime")  # optional (extra onnx), imported on first use


class OnnxRuntimeCall:
    """ONNX Runtime's CPU session of an ONNX model: float32 in, float32 out."""

    def __init__(self, data: bytes, source: str) -> None:
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = onnxruntime.InferenceSession(
                data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own error types
            raise DgfError(f"ONNX Runtime cannot load the conversion of {source} "
                           f"({type(exc).__name__}: {exc}); use --engine tensorflow") from exc
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: Any) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run(None, {self.input: x})[0]


class OnnxRuntimeEngine(Engine):
    def missing(self) -> str | None:
        reason = onnxruntime.missing()
        if reason is not None:
            return f"onnxruntime, which is not installed ({reason})"
        return onnx_conversion.missing()

    def versions(self) -> dict[str, str]:
        return {"onnxruntime": onnxruntime.__version__}

    def prepare(self, model: Model, precision: str, path: str) -> tuple[Call, float]:
        if precision == "int8":
            return quantize.prepared(model, self.name)
        data, seconds = onnx_conversion.model_bytes(model, self.name)
        return OnnxRuntimeCall(data, model.source), seconds


ENGINE = OnnxRuntimeEngine(engine_row("onnxruntime"))
