"""What an inference run is asked to do: one frozen object, built once per command.

``dgf-deblur``, ``dgf-eval`` and the trainer's per-epoch scoring each build one
:class:`InferenceSpec` from their flags (or the trainer's config) and hand it, with a
generator, to :class:`dgf.predictor.Predictor`, which does the work. Every setting is
validated here, once, against the choices and defaults of :mod:`dgf.options` (so the
spec is its one home of defaults), and nothing below takes these settings as loose
arguments. This module imports no TensorFlow: a command builds its spec, and reports a
bad value, before the model loads.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgf.checks import is_int, is_number
from dgf.errors import DgfError
from dgf.options import (
    DEFAULT_BATCH, DEFAULT_CALIBRATION_COUNT, DEFAULT_CALIBRATION_SEED, DEFAULT_ENGINE,
    DEFAULT_JIT, DEFAULT_PRECISION, DEFAULT_TILE, ENGINE_CHOICES, JIT_CHOICES, PRECISION_CHOICES,
)


#: Smallest side, in pixels, a photo may have after ``--scale``.
MIN_SCALED_SIDE = 16


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) of an image shrunk by ``scale``, rounded, at least 1."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def check_scale(scale: Any, height: int | None = None, width: int | None = None) -> float:
    """``scale`` as a float in (0, 1], or DgfError naming the value; with the image
    size given, also refuse a scale that leaves it under ``MIN_SCALED_SIDE`` px."""
    try:
        if isinstance(scale, bool):
            raise TypeError(scale)
        value = float(scale)
    except (TypeError, ValueError):
        raise DgfError(f"scale must be a number in (0, 1] or 'auto', got {scale!r}") from None
    if not 0.0 < value <= 1.0:
        raise DgfError(f"scale {scale!r} is outside (0, 1]: it is the factor the photo is "
                       f"shrunk by before the generator runs (1: full size)")
    if height is not None and width is not None:
        small = min(scaled_size(height, width, value))
        if small < MIN_SCALED_SIDE:
            raise DgfError(f"scale {value:g} leaves a {width}x{height} image {small} px on "
                           f"its shorter side; use a scale of at least "
                           f"{MIN_SCALED_SIDE / min(height, width):.3g}")
    return value


def parse_scale(scale: Any) -> str | float:
    """``"auto"``, or the factor as a float in (0, 1]; DgfError naming the value."""
    if isinstance(scale, str) and scale.strip().lower() == "auto":
        return "auto"
    return check_scale(scale)


def check_tiling(tile: int, overlap: int, batch_size: int) -> None:
    """Raise DgfError for a tile / overlap / batch combination that cannot work."""
    for name, value in (("tile size", tile), ("overlap", overlap), ("batch size", batch_size)):
        if not is_int(value):
            raise DgfError(f"{name} must be a whole number; got {value!r}")
    if tile < 0:
        raise DgfError(f"tile size {tile} is negative; use a size in pixels or 0.")
    if overlap < 0:
        raise DgfError(f"overlap {overlap} is negative.")
    if tile and 2 * overlap >= tile:
        raise DgfError(
            f"overlap {overlap} is too large for tile {tile}: each side's overlap "
            f"must be less than half the tile (try --overlap {max(0, (tile - 1) // 2)} "
            f"or a larger --tile)."
        )
    if batch_size < 1:
        raise DgfError(f"batch size {batch_size} must be at least 1.")


@dataclass(frozen=True)
class InferenceSpec:
    """Every inference setting, validated once (:meth:`__post_init__`).

    ``precision``: fp32, bf16, int8 or auto (bf16 where the CPU computes bfloat16
    natively, fp32 elsewhere; never int8). ``jit``: XLA for TensorFlow's call (auto,
    on, off). ``engine``: a row of :data:`dgf.options.ENGINE_TABLE`, or auto (the
    fastest measured here). ``tile`` and ``overlap``: pixels, None for the model's
    seamless default (:func:`dgf.tiling.seamless_tiling`); ``tile`` 0 runs a whole image
    at once. ``scale``: a factor in (0, 1] or ``"auto"`` (dgf-deblur, per photo).
    ``batch``: tiles or images per generator call. ``calibration``: the HDF5 file or
    folder whose images calibrate int8 (None: the file the model's record names), with
    ``calibration_count`` crops drawn with ``calibration_seed``.
    """

    precision: str = DEFAULT_PRECISION
    jit: str = DEFAULT_JIT
    engine: str = DEFAULT_ENGINE
    tile: int | None = None
    overlap: int | None = None
    scale: str | float = 1.0
    batch: int = DEFAULT_BATCH
    calibration: Path | None = None
    calibration_count: int = DEFAULT_CALIBRATION_COUNT
    calibration_seed: int = DEFAULT_CALIBRATION_SEED

    def __post_init__(self) -> None:
        if self.precision not in PRECISION_CHOICES:
            raise DgfError(f"unknown precision {self.precision!r}; choose one of "
                           f"{', '.join(PRECISION_CHOICES)}")
        if self.jit not in JIT_CHOICES:
            raise DgfError(f"unknown jit setting {self.jit!r}; choose one of "
                           f"{', '.join(JIT_CHOICES)}")
        if self.engine not in ENGINE_CHOICES:
            raise DgfError(f"unknown engine {self.engine!r}; choose one of "
                           f"{', '.join(ENGINE_CHOICES)}")
        # The model's own tile and overlap are checked once it is loaded (Predictor).
        check_tiling(DEFAULT_TILE if self.tile is None else self.tile,
                     0 if self.overlap is None else self.overlap, self.batch)
        if self.tile is not None and self.overlap is not None:
            check_tiling(self.tile, self.overlap, self.batch)
        object.__setattr__(self, "scale", parse_scale(self.scale))
        if self.calibration is not None:
            if self.precision != "int8":
                raise DgfError(f"--calibration {self.calibration} applies to --precision int8 "
                               f"only (asked: {self.precision})")
            object.__setattr__(self, "calibration", Path(self.calibration))
        if not is_int(self.calibration_count) or self.calibration_count < 16:
            raise DgfError(f"the int8 calibration needs at least 16 crops; got "
                           f"{self.calibration_count!r}")
        if not is_int(self.calibration_seed):
            raise DgfError(f"the calibration seed must be a whole number; got "
                           f"{self.calibration_seed!r}")

    def replace(self, **changes: Any) -> "InferenceSpec":
        """A copy with ``changes``, validated again."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """The settings as JSON values (what a summary records)."""
        return {key: (str(value) if isinstance(value, Path) else value)
                for key, value in dataclasses.asdict(self).items()}
