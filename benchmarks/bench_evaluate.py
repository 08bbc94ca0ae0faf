"""How long per-epoch scoring takes, and what the cached blurred baseline saves.

Packs the real test pairs (``../shared/data/pairs-small/test``, 256x256 halves) into
a temporary HDF5 file, then times ``evaluate_split`` with a channel-rate-8 DGF
generator: the first call scores the blurred inputs too (the baseline of this run),
the next calls reuse the in-process cache, as the trainer's per-epoch calls do.
Also times the metrics alone against scikit-image called directly.

    .venv/bin/python benchmarks/bench_evaluate.py [--pairs DIR] [--count 64]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py
import numpy as np
from PIL import Image

from dgf import metrics, scoring
from dgf.images import to_unit
from dgf.predictor import Predictor
from dgf.spec import InferenceSpec
from dgf.schema import blurred_name, sharp_name

DEFAULT_PAIRS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pairs-small"


def load_pairs(folder: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    sharp, blurred = [], []
    for path in sorted(folder.glob("*.jpg"))[:count]:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"))
        half = arr.shape[1] // 2
        sharp.append(arr[:, :half])
        blurred.append(arr[:, half : 2 * half])
    if not sharp:
        raise SystemExit(f"no .jpg pairs in {folder}")
    return np.stack(sharp), np.stack(blurred)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import keras

    from dgf.models import build_generator

    sharp, blurred = load_pairs(args.pairs / "test", args.count)
    n, h, w, _ = sharp.shape
    print(f"{n} pairs of {w}x{h}")

    # Metrics alone, ours vs scikit-image called directly (the baseline).
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    t0 = time.perf_counter()
    for s, b in zip(sharp, blurred):
        peak_signal_noise_ratio(s, b, data_range=255)
        structural_similarity(s, b, channel_axis=-1, data_range=255)
    t_sk = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for s, b in zip(sharp, blurred):
        metrics.psnr(s, b)
        metrics.ssim(s, b)
    t_ours = (time.perf_counter() - t0) / n
    print(f"metrics per pair: scikit-image {t_sk * 1e3:.2f} ms, dgf {t_ours * 1e3:.2f} ms "
          f"(ratio dgf/scikit-image {t_ours / t_sk:.2f})")

    keras.utils.set_random_seed(0)
    generator = build_generator(channel_rate=8)
    with tempfile.TemporaryDirectory() as tmp:
        h5 = Path(tmp) / "bench.h5"
        with h5py.File(h5, "w") as f:
            f[sharp_name("test")] = sharp
            f[blurred_name("test")] = blurred
        # The trainer's scoring: one predictor for the run, TensorFlow, 8 images a call.
        run = Predictor(generator, InferenceSpec(engine="tensorflow", batch=8))
        run.deblur_batch(blurred[:8])  # first-call setup out of the timings
        t0 = time.perf_counter()
        first, _ = scoring.evaluate_split(run, h5, progress=False)
        t_first = time.perf_counter() - t0
        cached = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            summary, _ = scoring.evaluate_split(run, h5, progress=False)
            cached.append(time.perf_counter() - t0)
        t_cached = min(cached)
        # Inference: the predictor's compiled call vs the plain eager call,
        # interleaved and reduced to medians so a busy machine hurts both alike.
        batch = blurred[:8]
        generator(to_unit(batch), training=False)
        eager, compiled = [], []
        for _ in range(max(3, 2 * args.repeats)):
            t0 = time.perf_counter()
            generator(to_unit(batch), training=False)
            eager.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            run.deblur_batch(batch)
            compiled.append(time.perf_counter() - t0)
        t_eager = float(np.median(eager)) / len(batch)
        t_compiled = float(np.median(compiled)) / len(batch)
    print(f"generator per image: eager {t_eager * 1e3:.1f} ms, predictor (compiled) "
          f"{t_compiled * 1e3:.1f} ms (speed-up {t_eager / t_compiled:.2f}x)")
    print(f"blurred baseline: PSNR {first['blurred_psnr']:.2f} dB, SSIM {first['blurred_ssim']:.4f}")
    print(f"evaluate_split, first call (scores the baseline too): {t_first:.2f} s "
          f"({t_first / n * 1e3:.1f} ms/pair)")
    print(f"evaluate_split, cached baseline (per-epoch calls):   {t_cached:.2f} s "
          f"({t_cached / n * 1e3:.1f} ms/pair); speed-up {t_first / t_cached:.2f}x")
    print(f"generator share of a cached call: "
          f"{summary['seconds_per_image'] * n / t_cached:.0%}")


if __name__ == "__main__":
    main()
