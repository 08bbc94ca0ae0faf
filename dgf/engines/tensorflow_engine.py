"""``--engine tensorflow``: the folded copy in TensorFlow, with or without XLA.

Its two paths are ``plain`` (TensorFlow's graph with its oneDNN kernels) and ``xla``
(compiled with ``jit_compile``, once per input shape). XLA fuses the concatenations
and elementwise work into loops around the convolutions, which was 1.2-1.5x faster on
an AVX2 host; on an AVX-512 host TensorFlow's own oneDNN kernels win (XLA 1.4-1.7x
slower at fp32, about 3x at bf16), so ``--jit auto`` measures both
(:class:`dgf.predictor.Predictor`). bf16 runs where TensorFlow runs a bfloat16
convolution (:func:`dgf.runtime.check_precision`).
"""
from __future__ import annotations

from dgf import runtime
from dgf.engines.base import Call, Engine, Model
from dgf.options import engine_row


class TensorFlowEngine(Engine):
    def host_reason(self, precision: str) -> str | None:
        if precision == "bf16":
            return runtime.bf16_unsupported_reason()
        return None

    def prepare(self, model: Model, precision: str, path: str) -> tuple[Call, float]:
        copy = model.folded(precision)
        return runtime.compiled_generator(copy, jit_compile=path == "xla"), 0.0


ENGINE = TensorFlowEngine(engine_row("tensorflow"))
