"""What bf16 inference does to PSNR/SSIM on real pairs, against fp32, in one run.

Deblurs every pair of a split (``--limit`` evenly spaced ones) with the generator's
folded copy at fp32 and at bf16 (``dgf.predictor.Predictor``) and scores both with
the documented metrics (``dgf.metrics.psnr`` / ``ssim``, mean of per-image values).
Prints each precision's mean PSNR and SSIM against the sharp images, their
difference, and how far the bf16 image is from the fp32 one (PSNR of bf16 against
fp32, largest pixel difference). Also the seconds per image of each.

The generator is ``--model`` (a trained .keras file) or, without one, a fresh
generator at ``--channel-rate`` with random weights and random BatchNorm statistics
(the absolute PSNR is then meaningless; the fp32-bf16 differences still show what
bf16 rounding does to a network of this shape).

    .venv/bin/python benchmarks/bench_bf16_psnr.py data/pairs-small.h5
    .venv/bin/python benchmarks/bench_bf16_psnr.py data/pairs-small.h5 --model RUN/generator.keras
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("h5", type=Path, help="HDF5 pairs file (build-hdf5)")
    p.add_argument("--split", default="test")
    p.add_argument("--model", type=Path, default=None, help="trained generator .keras")
    p.add_argument("--channel-rate", type=int, default=16)
    p.add_argument("--limit", type=int, default=None, help="pairs to score (default all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop-border", type=int, default=0,
                   help="pixels cut at each side before scoring (dgf-eval --crop-border)")
    p.add_argument("--jit", choices=("auto", "on", "off"), default="auto",
                   help="XLA for both precisions (TensorFlow, dgf.predictor.Predictor)")
    args = p.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO))
    import keras
    import numpy as np

    from dgf.metrics import mean_psnr, psnr, ssim
    from dgf.predictor import Predictor
    from dgf.scoring import open_split, read_pairs, strip_indices
    from dgf.spec import InferenceSpec
    from dgf.models import build_generator
    from dgf.runtime import bf16_native, load_generator

    if args.model is not None:
        generator, what = load_generator(args.model), str(args.model)
    else:
        keras.utils.set_random_seed(0)
        generator = build_generator(channel_rate=args.channel_rate)
        rng = np.random.default_rng(0)
        for layer in generator.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                c = layer.moving_mean.shape[0]
                layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c),
                                   rng.normal(0, 0.1, c), rng.uniform(0.5, 2.0, c)])
        what = f"random generator, channel rate {args.channel_rate}"
    h5, info = open_split(args.h5, args.split)
    h5.close()
    indices = (list(range(info.count)) if args.limit is None
               else strip_indices(info.count, args.limit))
    sharp, blurred = read_pairs(args.h5, args.split, indices)
    print(f"{what}; {len(indices)} pairs of {args.h5} [{args.split}], "
          f"{blurred.shape[2]}x{blurred.shape[1]}, crop border {args.crop_border}, "
          f"--jit {args.jit}; bf16 "
          f"{'native' if bf16_native() else 'in software (no bfloat16 instructions)'}")

    out, seconds = {}, {}
    for precision in ("fp32", "bf16"):
        run = Predictor(generator, InferenceSpec(precision=precision, jit=args.jit,
                                                 engine="tensorflow", batch=args.batch_size))
        # Warm-up (and the --jit auto calibration) at the batch shape that is timed.
        run.deblur_batch(blurred[: args.batch_size])
        start = time.perf_counter()
        out[precision] = np.concatenate([
            run.deblur_batch(blurred[i : i + args.batch_size])
            for i in range(0, len(blurred), args.batch_size)
        ])
        seconds[precision] = (time.perf_counter() - start) / len(blurred)
    scores = {
        precision: (mean_psnr([psnr(s, d, args.crop_border) for s, d in zip(sharp, images)]),
                    float(np.mean([ssim(s, d, args.crop_border)
                                   for s, d in zip(sharp, images)])))
        for precision, images in out.items()
    }
    print(f"{'':6} {'PSNR (dB)':>10} {'SSIM':>8} {'s/img':>7}")
    for precision, (p_db, s_val) in scores.items():
        print(f"{precision:6} {p_db:>10.3f} {s_val:>8.4f} {seconds[precision]:>7.3f}")
    print(f"bf16 - fp32: PSNR {scores['bf16'][0] - scores['fp32'][0]:+.3f} dB, "
          f"SSIM {scores['bf16'][1] - scores['fp32'][1]:+.5f}")
    diff = np.abs(out["bf16"].astype(int) - out["fp32"].astype(int))
    print(f"bf16 image against the fp32 image: mean PSNR "
          f"{mean_psnr([psnr(a, b) for a, b in zip(out['fp32'], out['bf16'])]):.2f} dB, "
          f"largest pixel difference {diff.max()} levels, "
          f"{(diff > 0).mean():.1%} of values differ, mean |diff| {diff.mean():.3f}")


if __name__ == "__main__":
    main()
