"""What an inference engine is: :class:`Engine`, and what it is handed (:class:`Model`).

An engine is one module ``dgf/engines/NAME_engine.py`` holding ``ENGINE``, an
:class:`Engine` built on its row of :data:`dgf.options.ENGINE_TABLE` (name, words,
extra, precisions, paths). It says whether it is installed (:meth:`Engine.missing`),
which precisions it runs on this host (:meth:`Engine.precision_reason`), the versions
its speed and output depend on, and prepares a call of a model (:meth:`Engine.prepare`):
a function from (B, H, W, 3) float32 in [-1, 1] to the same, whatever runs inside.
Tiling, blending, ``--scale`` and the uint8 rounding stay dgf's own, so every engine
writes the same kind of output. :mod:`dgf.engines` lists the engines;
:class:`dgf.predictor.Predictor` chooses between them and keeps what they prepare.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

from dgf.errors import DgfError, install_hint
from dgf.options import ENGINE_TABLE, PRECISIONS, EngineRow

#: A prepared call: (B, H, W, 3) float32 in [-1, 1] in, the generator's output out.
Call = Callable[[Any], Any]


class Model(Protocol):
    """What an engine is handed to prepare (a :class:`dgf.predictor.Predictor`)."""

    #: The model file the generator came from, or words for an in-memory one.
    source: str
    #: The Keras generator itself.
    generator: Any

    def folded(self, precision: str) -> Any:
        """The BatchNorm-folded Keras copy at ``precision`` (fp32 or bf16), holding
        the generator's current weights (:func:`dgf.runtime.inference_model`)."""

    def content(self) -> str:
        """A digest of the fp32 folded copy's layout and current weights."""

    def calibration(self) -> Any:
        """The int8 calibration images (:func:`dgf.quantize.calibration_set`)."""


class Engine:
    """One engine of the table. Subclasses set nothing but override what differs:
    :meth:`missing` (optional modules), :meth:`host_reason` (precisions this host
    lacks), :meth:`versions` and :meth:`prepare`."""

    def __init__(self, row: EngineRow) -> None:
        self.row = row
        self.name = row.name

    def missing(self) -> str | None:
        """None when the engine can run here, else what is missing (an import error)."""
        return None

    def host_reason(self, precision: str) -> str | None:
        """None when this host runs ``precision`` (one of the row's), else why not."""
        return None

    def precision_reason(self, precision: str) -> str | None:
        """None when the installed engine runs ``precision`` here, else why not."""
        if precision not in PRECISIONS:
            raise DgfError(f"unknown precision {precision!r}; choose one of "
                           f"{', '.join(PRECISIONS)}")
        if precision not in self.row.precisions:
            others = [row.name for row in ENGINE_TABLE if precision in row.precisions]
            return (f"{self.row.words} does not run {precision} in dgf (engines that do: "
                    f"{', '.join(others) or 'none'})")
        return self.host_reason(precision)

    def check(self, precision: str | None = None) -> None:
        """DgfError when the engine is not installed (naming the extra that installs
        it) or, with ``precision`` given, cannot run it here."""
        reason = self.missing()
        if reason is not None:
            raise DgfError(f"--engine {self.name} needs {reason}; install it with "
                           f"{install_hint(self.row.extra)} (or use --engine tensorflow)")
        if precision is not None:
            reason = self.precision_reason(precision)
            if reason is not None:
                others = [row.name for row in ENGINE_TABLE if precision in row.precisions
                          and row.name != self.name]
                instead = (f"--engine {' or '.join(others)}" if others else "")
                raise DgfError(f"--engine {self.name} cannot run --precision {precision}: "
                               f"{reason}; use another --precision"
                               + (f", or {instead}" if instead else ""))

    def versions(self) -> dict[str, str]:
        """The versions the engine's speed and output depend on (part of cache keys)."""
        return {}

    def prepare(self, model: Model, precision: str, path: str) -> tuple[Call, float]:
        """The call of ``model`` at ``precision`` on ``path`` (one of the row's paths),
        and the seconds spent converting (0.0 when it came from a cache)."""
        raise NotImplementedError

