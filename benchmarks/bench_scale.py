"""What ``dgf-deblur --scale`` buys on large photos whose sharp image is known.

**--phone** (the phone-like bench): sharp photos of 2048-4032 px, scikit-image's
sample photos enlarged (bicubic) to ``--long-side`` and the sharp halves of an HDF5
file's test pairs enlarged ``--enlarge`` times, ``--photos`` of each kind, blurred
with dgf's camera-shake kernels drawn at streak lengths (:func:`dgf.blur.streak_length`)
of ``--fractions`` of the shorter side, plus Gaussian sensor noise (``--noise``
levels) and JPEG at ``--jpeg``. Each is deblurred at every ``--scales`` value and at
``auto`` (the photo's estimated streak mapped onto the model's training blur,
:func:`dgf.tiling.auto_scale`), and scored at full size on the interior
(``--crop-border`` px cut at each side): PSNR/SSIM (:mod:`dgf.metrics`). The table
gives, per streak length, the mean gain over the blurred input of each scale and of
auto, and auto's distance to the best fixed scale.

    python benchmarks/bench_scale.py data/pairs-small.h5 --phone --photos 2

Without --phone (the older bench): test pairs enlarged by ``--enlarge`` (bicubic,
sharp and blurred alike), so the streaks keep their share of the picture (8-15% for
pairs-small); each is deblurred at every scale and at auto (each pair its own),
returning to full size by adding the enlarged correction (``correction``, what
dgf-deblur does) or by enlarging the small deblurred image (``image``).

    python benchmarks/bench_scale.py data/pairs-small.h5 --pairs 6 --enlarge 4
"""
from __future__ import annotations

import argparse
import json
import os
import time

import h5py
import numpy as np
from PIL import Image

from dgf.blur import estimate_blur, model_reference, shake_kernel, streak_length
from dgf.images import to_uint8, to_unit, write_image
from dgf.kernels import blur
from dgf.metadata import read_metadata, training_side
from dgf.metrics import psnr, ssim
from dgf.photos import picture
from dgf.predictor import Predictor
from dgf.realism import jpeg_roundtrip
from dgf.runtime import load_generator
from dgf.schema import blurred_name, sharp_name
from dgf.spec import InferenceSpec
from dgf.synth import sample_photos
from dgf.tiling import _resize_rows, auto_scale, scaled_size

PHONE_SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle")




def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` (h, w, C) float32 resized to (height, width) as dgf-deblur's full-size
    steps resize (dgf.tiling: Lanczos shrinking, bicubic enlarging)."""
    return _resize_rows(image, 0, height, (height, width))

def enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape[:2]
    return to_uint8(_resize(to_unit(image), h * factor, w * factor))


def image_method(run: Predictor, blurred: np.ndarray, scale: float) -> np.ndarray:
    h, w = blurred.shape[:2]
    small_h, small_w = scaled_size(h, w, scale)
    small = to_uint8(_resize(to_unit(blurred), small_h, small_w))
    out = run.deblur_image(small)
    return to_uint8(_resize(to_unit(out), h, w))


def pairs_bench(run: Predictor, args: argparse.Namespace, reference: tuple) -> None:
    """The older bench: enlarged test pairs, both ways back to full size."""
    with h5py.File(args.h5) as f:
        count = f[sharp_name("test")].shape[0]
        picks = np.linspace(0, count - 1, args.pairs).round().astype(int)
        sharp = [f[sharp_name("test")][i] for i in picks]
        blurred = [f[blurred_name("test")][i] for i in picks]
    big_sharp = [enlarge(s, args.enlarge) for s in sharp]
    big_blurred = [enlarge(b, args.enlarge) for b in blurred]
    border = args.crop_border
    h, w = big_sharp[0].shape[:2]
    streak, side = reference
    autos = [auto_scale(h, w, side, training_streak=streak,
                        streak=estimate_blur(b).length if streak else None) for b in big_blurred]
    print(f"{args.pairs} test pairs enlarged x{args.enlarge} to {w}x{h}; model {args.model} "
          f"(training blur {streak} px, side {side}); auto scales "
          f"{', '.join(f'{a:.3g}' for a in autos)}; crop border {border}; CPU cores: "
          f"{os.cpu_count()}")
    base_p = np.mean([psnr(s, b, border) for s, b in zip(big_sharp, big_blurred)])
    base_s = np.mean([ssim(s, b, border) for s, b in zip(big_sharp, big_blurred)])
    print(f"blurred input: {base_p:.3f} dB / {base_s:.4f}")
    print(f"{'scale':>8s} {'method':>10s} {'PSNR':>8s} {'dPSNR':>7s} {'SSIM':>7s} "
          f"{'dSSIM':>7s} {'s/img':>6s}")
    for text in args.scales + ["auto"]:
        scales = autos if text == "auto" else [float(text)] * len(big_blurred)
        for method in ["correction"] + (["image"] if min(scales) < 1 else []):
            t0 = time.perf_counter()
            if method == "correction":
                outs = [run.deblur_image(b, scale=s) for b, s in zip(big_blurred, scales)]
            else:
                outs = [image_method(run, b, s) for b, s in zip(big_blurred, scales)]
            seconds = (time.perf_counter() - t0) / len(outs)
            p = np.mean([psnr(s, o, border) for s, o in zip(big_sharp, outs)])
            q = np.mean([ssim(s, o, border) for s, o in zip(big_sharp, outs)])
            label = f"auto~{np.mean(scales):.3g}" if text == "auto" else text
            print(f"{label:>8s} {method:>10s} {p:8.3f} {p - base_p:+7.3f} {q:7.4f} "
                  f"{q - base_s:+7.4f} {seconds:6.2f}", flush=True)


# --- the phone-like bench ------------------------------------------------------------
def phone_photos(args: argparse.Namespace) -> list[tuple[str, np.ndarray]]:
    """(name, sharp photo): ``--photos`` sample photos enlarged to ``--long-side``
    and as many evenly spaced test sharp halves of ``args.h5`` enlarged
    ``--enlarge`` times."""
    samples = dict(sample_photos())
    photos = []
    for name in [n for n in PHONE_SAMPLES if n in samples][: args.photos]:
        image = samples[name]
        factor = args.long_side / max(image.shape[:2])
        h, w = (round(side * factor) for side in image.shape[:2])
        photos.append((name, np.asarray(Image.fromarray(image).resize(
            (w, h), Image.Resampling.BICUBIC))))
    with h5py.File(args.h5) as f:
        data = f[sharp_name("test")]
        picks = np.linspace(0, data.shape[0] - 1, args.photos + 2)[1:-1].round().astype(int)
        for i in picks:
            small = data[int(i)]
            h, w = small.shape[:2]
            photos.append((f"test{int(i)}", np.asarray(Image.fromarray(small).resize(
                (w * args.enlarge, h * args.enlarge), Image.Resampling.BICUBIC))))
    return photos


def shaken(sharp: np.ndarray, kernel: np.ndarray, noise: float, quality: int,
           seed: int) -> np.ndarray:
    """``sharp`` blurred by ``kernel``, with Gaussian noise of ``noise`` levels and
    a JPEG round trip at ``quality``."""
    rng = np.random.default_rng(seed)
    blurred = blur(sharp, kernel).astype(np.float64)
    noisy = np.clip(np.rint(blurred + rng.normal(0.0, noise, blurred.shape)), 0, 255)
    return jpeg_roundtrip(noisy.astype(np.uint8), quality)


def phone_case(run: Predictor, sharp: np.ndarray, blurred: np.ndarray,
               args: argparse.Namespace, reference: tuple) -> tuple[dict, np.ndarray]:
    """Scores of one blurred photo at the input, every scale and auto."""
    border = args.crop_border
    h, w = blurred.shape[:2]
    t0 = time.perf_counter()
    estimate = estimate_blur(blurred).length
    estimate_s = time.perf_counter() - t0
    streak, side = reference
    auto = auto_scale(h, w, side, streak=estimate, training_streak=streak)
    row = {"estimate_px": estimate, "estimate_s": round(estimate_s, 3), "auto": auto,
           "input": [psnr(sharp, blurred, border), ssim(sharp, blurred, border)],
           "scales": {}}
    outputs = {}
    for scale in [float(s) for s in args.scales] + [auto]:
        if scale in outputs:
            continue
        t0 = time.perf_counter()
        out = run.deblur_image(blurred, scale=scale)
        outputs[scale] = out
        row["scales"][repr(scale)] = [psnr(sharp, out, border), ssim(sharp, out, border),
                                      round(time.perf_counter() - t0, 2)]
    row["auto_scores"] = row["scales"][repr(auto)][:2]
    return row, outputs[auto]


def phone_table(rows: list[dict], args: argparse.Namespace) -> None:
    """Mean gains over the input per streak length: every scale, auto, best fixed."""
    scales = [repr(float(s)) for s in args.scales]
    print(f"\nmean gain over the blurred input, dB PSNR / SSIM ({len(rows) // len(args.fractions)}"
          f" photos per streak length)")
    print(f"{'streak':>7} {'input':>13} " + " ".join(f"{float(s):>13.4g}" for s in scales)
          + f" {'auto':>13} {'auto-best':>9} {'scale':>6}")
    for frac in args.fractions:
        chosen = [r for r in rows if r["fraction"] == frac]
        base = np.mean([r["input"] for r in chosen], axis=0)
        gains = {s: np.mean([r["scales"][s][:2] for r in chosen], axis=0) - base
                 for s in scales}
        auto = np.mean([r["auto_scores"] for r in chosen], axis=0) - base
        best = max(gains.values(), key=lambda g: g[0])
        cells = " ".join(f"{g[0]:+6.2f}/{g[1]:+6.3f}" for g in gains.values())
        print(f"{frac:>7.1%} {base[0]:6.2f}/{base[1]:6.3f} {cells} "
              f"{auto[0]:+6.2f}/{auto[1]:+6.3f} {auto[0] - best[0]:+9.2f} "
              f"{np.mean([r['auto'] for r in chosen]):6.3f}")


def phone_bench(run: Predictor, args: argparse.Namespace, reference: tuple) -> None:
    start = time.perf_counter()
    photos = phone_photos(args)
    print(f"{len(photos)} photos ({args.photos} sample, {args.photos} test halves x"
          f"{args.enlarge}), streaks {', '.join(f'{f:.1%}' for f in args.fractions)} of "
          f"the shorter side, noise {args.noise:g}, JPEG {args.jpeg}; model {args.model} "
          f"(training blur {reference[0]} px); crop border {args.crop_border}; CPU cores: "
          f"{os.cpu_count()}", flush=True)
    rows = []
    for p, (name, sharp) in enumerate(photos):
        shorter = min(sharp.shape[:2])
        for f, frac in enumerate(args.fractions):
            kernel = shake_kernel(args.seed * 1000 + 10 * p + f, frac * shorter)
            blurred = shaken(sharp, kernel, args.noise, args.jpeg, args.seed * 1000 + 10 * p + f)
            row, out = phone_case(run, sharp, blurred, args, reference)
            row.update(photo=name, size=list(sharp.shape[:2]), fraction=frac,
                       streak_px=streak_length(kernel))
            rows.append(row)
            best = max(row["scales"].items(), key=lambda kv: kv[1][0])
            print(f"{name:>10} {sharp.shape[1]}x{sharp.shape[0]} streak {row['streak_px']:5.1f}"
                  f" px, estimated {row['estimate_px'] or float('nan'):5.1f} px in "
                  f"{row['estimate_s']:.2f} s: auto {row['auto']:.3f} "
                  f"{row['auto_scores'][0] - row['input'][0]:+.2f} dB, best "
                  f"{float(best[0]):.4g} {best[1][0] - row['input'][0]:+.2f} dB", flush=True)
            if args.picture and p == 0 and frac == args.picture_fraction:
                write_image(args.picture, picture(blurred, out, panel=480), quality=85)
    phone_table(rows, args)
    print(f"{len(rows)} cases in {(time.perf_counter() - start) / 60:.1f} min")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("h5")
    parser.add_argument("--model", default=None, help="generator (default: the bundled one)")
    parser.add_argument("--engine", default="auto", help="as dgf-deblur's --engine")
    parser.add_argument("--phone", action="store_true", help="the phone-like bench (above)")
    parser.add_argument("--pairs", type=int, default=8, help="test pairs, evenly spaced")
    parser.add_argument("--photos", type=int, default=2,
                        help="--phone: photos of each kind (sample photos, test halves)")
    parser.add_argument("--long-side", type=int, default=2048,
                        help="--phone: long side of the enlarged sample photos")
    parser.add_argument("--enlarge", type=int, default=None,
                        help="enlargement of the test pairs (default 4; --phone: 8)")
    parser.add_argument("--fractions", type=float, nargs="+",
                        default=[0.005, 0.01, 0.02, 0.04],
                        help="--phone: streak lengths, fractions of the shorter side")
    parser.add_argument("--noise", type=float, default=2.0, help="--phone: noise std, levels")
    parser.add_argument("--jpeg", type=int, default=90, help="--phone: JPEG quality")
    parser.add_argument("--seed", type=int, default=0, help="--phone: kernel and noise seed")
    parser.add_argument("--crop-border", type=int, default=32,
                        help="pixels cut at each side of the full-size photo before scoring")
    parser.add_argument("--scales", nargs="+",
                        default=["1", "0.5", "0.25", "0.125", "0.0625"],
                        help="fixed scales (auto is added)")
    parser.add_argument("--json", default=None, help="--phone: write every case here")
    parser.add_argument("--picture", default=None,
                        help="--phone: write blurred | auto-deblurred of the first photo "
                        "here (JPEG)")
    parser.add_argument("--picture-fraction", type=float, default=0.01,
                        help="--phone: the streak length of that picture")
    args = parser.parse_args()
    if args.model is None:
        from dgf.weights import bundled_model
        args.model = str(bundled_model())
    if args.enlarge is None:
        args.enlarge = 8 if args.phone else 4
    run = Predictor(load_generator(args.model), InferenceSpec(engine=args.engine),
                    source=args.model)
    record = read_metadata(args.model)
    streak, note = model_reference(record, args.model)
    if note:
        print(note)
    bench = phone_bench if args.phone else pairs_bench
    bench(run, args, (streak, training_side(record)))


if __name__ == "__main__":
    main()
