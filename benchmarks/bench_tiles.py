"""Tiles shaped to the image against square tiles, in one process.

:meth:`dgf.predictor.Predictor.deblur_image` on one image with the bundled model
(or ``--model``), once with the tiles :func:`dgf.tiling.tile_shape` fits to the
image and once with square tiles of the ``--tile`` edge (the layout before it),
interleaved for ``--rounds`` rounds after a warm-up of each; prints the tiles, the
pixels through the model and the median seconds of each, and their ratio. The
default image is what the 12 MP phone photo of ``bench_deblur.py --command``
becomes at its auto scale (1596x1196); the path is fixed (``--engine``, ``--jit``,
``--precision``) so that no calibration runs.

    .venv/bin/python benchmarks/bench_tiles.py
    .venv/bin/python benchmarks/bench_tiles.py --size 4032 3024 --precision fp32
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dgf import quiet  # noqa: E402

quiet.install()  # TensorFlow's start-up lines hidden, as in dgf's commands
from dgf import tiling  # noqa: E402
from dgf.host import cpu_flags, cpu_model  # noqa: E402
from dgf.predictor import Predictor  # noqa: E402
from dgf.runtime import load_generator  # noqa: E402
from dgf.spec import InferenceSpec  # noqa: E402
from dgf.weights import bundled_model  # noqa: E402


def _square(height: int, width: int, tile: int, overlap: int, step: int = 0) -> tuple[int, int]:
    return min(tile, height), min(tile, width)


def _layout(height: int, width: int, tile: int, overlap: int, shape) -> tuple[int, float]:
    th, tw = shape(height, width, tile, overlap)
    count = len(tiling.tile_starts(height, th, overlap)) * len(tiling.tile_starts(width, tw, overlap))
    return count, count * th * tw / 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    p.add_argument("--size", type=int, nargs=2, default=(1596, 1196), metavar=("W", "H"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--engine", default="tensorflow")
    p.add_argument("--jit", default="off", choices=("on", "off"))
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")))
    print(f"host: {cpu_model()}, flags {' '.join(flags)}")
    generator = load_generator(args.model or bundled_model())
    predictor = Predictor(generator, InferenceSpec(precision=args.precision, jit=args.jit,
                                                   engine=args.engine))
    tile, overlap = predictor.tiling()
    width, height = args.size
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    layouts = {"shaped": tiling.tile_shape, "square": _square}
    real = tiling.tile_shape
    seconds: dict[str, list[float]] = {name: [] for name in layouts}
    try:
        for round_ in range(args.rounds + 1):  # round 0 warms each layout up
            for name, shape in layouts.items():
                tiling.tile_shape = shape
                start = time.perf_counter()
                predictor.deblur_image(image)
                if round_:
                    seconds[name].append(time.perf_counter() - start)
    finally:
        tiling.tile_shape = real
    print(f"{width}x{height}, tile {tile}, overlap {overlap}, {args.precision} on "
          f"{args.engine} (jit {args.jit}), median of {args.rounds} rounds")
    for name, shape in layouts.items():
        th, tw = shape(height, width, tile, overlap)
        count, pixels = _layout(height, width, tile, overlap, shape)
        print(f"{name:7s} {count} tiles of {th}x{tw} ({pixels:.2f} MP): "
              f"{statistics.median(seconds[name]):.3f} s")
    ratio = statistics.median(seconds["shaped"]) / statistics.median(seconds["square"])
    print(f"ratio shaped / square: {ratio:.2f}x")


if __name__ == "__main__":
    main()
