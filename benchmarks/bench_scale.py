"""What ``dgf-deblur --scale`` buys on large photos whose sharp image is known.

Large pairs are made from an HDF5 file's test pairs by enlarging both the sharp and
the blurred image by ``--enlarge`` (bicubic): a 256 px pair enlarged x4 is a
1024 px photo whose blur streaks are 4x as long (80-160 px for pairs-small), as in
a full-size photo, beyond the generator's reach at scale 1. Each is deblurred at
every scale, and PSNR/SSIM are taken at the photo's own size, interior only
(``--crop-border`` pixels at each side, scaled with the photo).

Two ways to return to full size are compared:
* ``correction`` (what dgf-deblur does): the generator's correction at the small
  scale, enlarged and added to the full-size photo;
* ``image``: the small deblurred image itself, enlarged.

    python benchmarks/bench_scale.py data/pairs-small.h5 --model runs/x/generator_best.keras
"""
from __future__ import annotations

import argparse
import os
import time

import h5py
import numpy as np

from dgf.metrics import psnr, ssim
from dgf.images import to_uint8, to_unit
from dgf.metadata import read_metadata, training_side
from dgf.runtime import load_generator
from dgf.predictor import Predictor
from dgf.spec import InferenceSpec
from dgf.tiling import _resize, auto_scale, scaled_size
from dgf.schema import blurred_name, sharp_name


def enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape[:2]
    return to_uint8(_resize(to_unit(image), h * factor, w * factor))


def image_method(run: Predictor, blurred: np.ndarray, scale: float) -> np.ndarray:
    h, w = blurred.shape[:2]
    small_h, small_w = scaled_size(h, w, scale)
    small = to_uint8(_resize(to_unit(blurred), small_h, small_w))
    out = run.deblur_image(small)
    return to_uint8(_resize(to_unit(out), h, w))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("h5")
    parser.add_argument("--model", default=None, help="generator (default: the bundled one)")
    parser.add_argument("--pairs", type=int, default=8, help="test pairs, evenly spaced")
    parser.add_argument("--enlarge", type=int, default=4)
    parser.add_argument("--crop-border", type=int, default=8,
                        help="border at the pairs' own size; scaled by --enlarge")
    parser.add_argument("--scales", nargs="+", default=["1", "0.5", "0.25", "0.125", "auto"])
    args = parser.parse_args()
    if args.model is None:
        from dgf.weights import bundled_model
        args.model = str(bundled_model())
    # TensorFlow (XLA or not, measured), the model's seamless tiling.
    run = Predictor(load_generator(args.model), InferenceSpec(engine="tensorflow"),
                    source=args.model)
    side = training_side(read_metadata(args.model))
    with h5py.File(args.h5) as f:
        count = f[sharp_name("test")].shape[0]
        picks = np.linspace(0, count - 1, args.pairs).round().astype(int)
        sharp = [f[sharp_name("test")][i] for i in picks]
        blurred = [f[blurred_name("test")][i] for i in picks]
    big_sharp = [enlarge(s, args.enlarge) for s in sharp]
    big_blurred = [enlarge(b, args.enlarge) for b in blurred]
    border = args.crop_border * args.enlarge
    h, w = big_sharp[0].shape[:2]
    print(f"{args.pairs} test pairs enlarged x{args.enlarge} to {w}x{h}; model {args.model} "
          f"(training side {side}); crop border {border}; CPU cores: {os.cpu_count()}")
    base_p = np.mean([psnr(s, b, border) for s, b in zip(big_sharp, big_blurred)])
    base_s = np.mean([ssim(s, b, border) for s, b in zip(big_sharp, big_blurred)])
    print(f"blurred input: {base_p:.3f} dB / {base_s:.4f}")
    print(f"{'scale':>8s} {'method':>10s} {'PSNR':>8s} {'dPSNR':>7s} {'SSIM':>7s} "
          f"{'dSSIM':>7s} {'s/img':>6s}")
    for text in args.scales:
        scale = auto_scale(h, w, side) if text == "auto" else float(text)
        methods = ["correction"] + (["image"] if scale < 1 else [])
        for method in methods:
            t0 = time.perf_counter()
            if method == "correction":
                outs = [run.deblur_image(b, scale=scale) for b in big_blurred]
            else:
                outs = [image_method(run, b, scale) for b in big_blurred]
            seconds = (time.perf_counter() - t0) / len(outs)
            p = np.mean([psnr(s, o, border) for s, o in zip(big_sharp, outs)])
            q = np.mean([ssim(s, o, border) for s, o in zip(big_sharp, outs)])
            label = f"auto={scale:.3g}" if text == "auto" else f"{scale:g}"
            print(f"{label:>8s} {method:>10s} {p:8.3f} {p - base_p:+7.3f} {q:7.4f} "
                  f"{q - base_s:+7.4f} {seconds:6.2f}", flush=True)


if __name__ == "__main__":
    main()
