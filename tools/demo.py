"""The offline end-to-end demo behind `make demo`.

Runs the whole pipeline on a CPU-sized configuration, with no data and no network:
synthetic pairs from the photos bundled with scikit-image, build-hdf5, a short
dgf-train, dgf-eval, and dgf-deblur on one photo. Each step prints the command a
user would type for it. Everything goes to ``demo_out/`` (replaced on each run).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dgf import cli, startup  # noqa: E402


def step(title: str, command: str, main, argv: list[str]) -> None:
    print(f"\n=== {title}\n$ {command} {' '.join(argv)}", flush=True)
    status = main(argv)
    if status:
        raise SystemExit(f"demo step failed ({command} exited {status})")


def vgg_available() -> bool:
    from dgf.losses import vgg_weights_cached

    return vgg_weights_cached()


def main(argv: list[str] | None = None) -> None:
    startup.install()  # a process that exists to run dgf's commands, as each command's own
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "demo_out")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--per-image", type=int, default=8,
                        help="synthetic pairs made from each sample photo (random crops, each "
                             "with its own camera shake); fewer make shorter epochs")
    args = parser.parse_args(argv)
    out: Path = args.out
    started = time.perf_counter()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    pairs, h5, run = out / "pairs", out / "data.h5", out / "run"

    step("1/7 synthetic pairs from the bundled sample photos", "dgf-make-pairs", cli.make_pairs_main,
         [str(pairs), "--sample-photos", "--per-image", str(args.per_image), "--size", "128",
          "--kernel-size", "15", "--test-fraction", "0.2", "--seed", "0"])
    step("2/7 pack the pairs into HDF5", "build-hdf5", cli.build_hdf5_main,
         [str(pairs), "-o", str(h5), "--size", "128"])

    # The CPU recipe (configs/cpu-pairs-small.yaml: residual generator without
    # BatchNorm, L2 + SSIM content loss, EMA weights), sized for the demo's images.
    train_args = ["--config", str(REPO / "configs" / "cpu-pairs-small.yaml"),
                  "--h5", str(h5), "--run-dir", str(run), "--epochs", str(args.epochs),
                  "--warmup-epochs", str(max(0, args.epochs - 3)), "--crop", "64",
                  "--val-samples", "full", "--strip-pairs", "4",
                  # Scored (and generator_best.keras chosen) every second epoch: step
                  # 4/7 scores every epoch's snapshot anyway, and scoring all 16 test
                  # pairs (at --per-image 8) costs a fifth of one of these short epochs.
                  "--eval-every", "2"]
    if vgg_available():
        print("\nVGG16 ImageNet weights found in the Keras cache: training with the "
              "perceptual loss.")
        train_args += ["--perceptual-weight", "145"]
    else:
        print("\nVGG16 ImageNet weights are not in the Keras cache and cannot be downloaded "
              "here, so the demo trains with --perceptual-weight 0 (L2 + SSIM + adversarial). "
              "Put vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 in ~/.keras/models/ to "
              "use the full loss.")
    step("3/7 train a small residual DGF (channel rate 16, 64x64 crops)", "dgf-train",
         cli.train_main, train_args)
    step("4/7 per-epoch strips and PSNR/SSIM", "dgf-eval", cli.eval_main,
         ["--run", str(run), "--strips", "4"])

    photo = out / "blurred_photo.png"
    _blurred_test_photo(h5, photo)
    step("5/7 deblur one photo with the model just trained", "dgf-deblur", cli.deblur_main,
         [str(photo), "-o", str(out / "deblurred"), "--model",
          str(run / "generator_best.keras"), "--compare"])
    test_photo, what = _bundled_model_photo(out)
    step(f"6/7 deblur {what} with the bundled model", "dgf-deblur",
         cli.deblur_main, [str(test_photo), "-o", str(out / "deblurred_bundled"), "--compare"])
    large = out / "large_shaken_photo.png"
    _large_shaken_photo(large)
    step("7/7 deblur a large photo (a scikit-image sample photo, 600x400, with a synthetic "
         "camera shake of up to 61 px) with the bundled model, run at the scale of its "
         "training images (--scale auto)", "dgf-deblur", cli.deblur_main,
         [str(large), "-o", str(out / "deblurred_large"), "--compare", "--scale", "auto"])

    minutes = (time.perf_counter() - started) / 60
    epochs = _epoch_records(run / "metrics.jsonl")
    best = _best_epoch(epochs)
    print(f"\ndemo finished in {minutes:.1f} min; work at the epochs' ends (scoring, "
          f"strips, model files) took {100 * _epoch_end_share(epochs):.0f}% "
          f"of the training steps' time.")
    interior = _interior_scores(run / "generator_best.keras", h5)
    print(f"test pairs, best epoch ({best['epoch']}), PSNR dB / SSIM:")
    print(f"  {'':18s} {'whole image':>16s} {'interior (crop border 8)':>26s}")
    print(f"  {'blurred input':18s} {best['blurred_psnr']:9.2f} / {best['blurred_ssim']:.3f} "
          f"{interior['blurred_psnr']:15.2f} / {interior['blurred_ssim']:.3f}")
    print(f"  {'deblurred':18s} {best['psnr']:9.2f} / {best['ssim']:.3f} "
          f"{interior['psnr']:15.2f} / {interior['ssim']:.3f}")
    verdict = ("closer to the sharp photos than the blurred input on both"
               if interior["psnr"] > interior["blurred_psnr"]
               and interior["ssim"] > interior["blurred_ssim"]
               else "NOT yet better than the blurred input on both")
    print(f"That is, inside the picture the network's outputs are {verdict} measures "
          f"(higher is better).")
    print("Look at:")
    print(f"  learning, one strip per epoch:  {run / 'eval' / 'progress.png'}")
    print(f"  PSNR/SSIM per epoch:           {run / 'eval' / 'metrics.png'} "
          f"(table: {run / 'eval' / 'metrics.csv'})")
    print(f"  per-epoch strips:              {run / 'eval' / 'strips'}/")
    print(f"  deblurred photo:               {out / 'deblurred' / photo.name}")
    print(f"  blurred | deblurred:           {out / 'deblurred' / 'compare'}/")
    print(f"  {what}, bundled model: {out / 'deblurred_bundled' / 'compare'}/")
    print(f"  a large photo at --scale auto: {out / 'deblurred_large' / 'compare'}/")
    print(f"  TensorBoard:                   tensorboard --logdir {run / 'tensorboard'}")


def _epoch_records(metrics: Path) -> list[dict]:
    import json

    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("kind") == "epoch"]


def _best_epoch(epochs: list[dict]) -> dict:
    """The scored epoch with the best test PSNR (the one generator_best.keras holds)."""
    return max((r for r in epochs if "psnr" in r), key=lambda r: r["psnr"])


def _epoch_end_share(epochs: list[dict]) -> float:
    """Seconds of epoch-end work per second of training steps, over the whole run."""
    return sum(r["end_seconds"] for r in epochs) / sum(r["train_seconds"] for r in epochs)


def _interior_scores(model: Path, h5: Path) -> dict:
    """The model's scores on the test split with 8 px cut at each side."""
    from dgf.evaluate import EVAL_SPEC
    from dgf.metrics import ScoreSettings
    from dgf.predictor import Predictor
    from dgf.runtime import load_generator
    from dgf.scoring import EvalOptions, evaluate_split

    predictor = Predictor(load_generator(model), EVAL_SPEC, source=model)
    summary, _ = evaluate_split(predictor, h5, EvalOptions(settings=ScoreSettings(8)),
                                progress=False)
    return summary


def _bundled_model_photo(out: Path) -> tuple[Path, str]:
    """A photo for the bundled model and what it is: the blurred half of a
    pairs-small test pair (real pairs, the data the model learned from) when the
    shared data is there, else the demo's own synthetic blurred test image."""
    from PIL import Image

    real = REPO.parent / "shared" / "data" / "pairs-small" / "test" / "650.jpg"
    if real.is_file():
        path = out / "pairs_small_test_blurred.png"
        with Image.open(real) as pair:
            width, height = pair.size
            pair.crop((width // 2, 0, width // 2 * 2, height)).save(path)
        return path, "the blurred half of a pairs-small test pair (650.jpg)"
    path = out / "synthetic_blurred_photo.png"
    shutil.copy(out / "blurred_photo.png", path)
    return path, "the demo's own synthetic blurred test image"


def _large_shaken_photo(path: Path) -> None:
    """A 600x400 scikit-image sample photo blurred by a synthetic camera shake."""
    import numpy as np
    from PIL import Image

    from dgf.kernels import blur, random_kernel
    from dgf.synth import sample_photos

    photos = dict(sample_photos())
    photo = photos.get("coffee", next(iter(photos.values())))
    kernel = random_kernel(np.random.default_rng(7), size=61, strength=0.8)
    Image.fromarray(blur(photo, kernel)).save(path)


def _blurred_test_photo(h5: Path, path: Path) -> None:
    """Write the blurred half of the first test pair as a standalone photo."""
    import h5py
    from PIL import Image

    with h5py.File(h5, "r") as f:
        Image.fromarray(f["test_data_blur"][0]).save(path)


if __name__ == "__main__":
    main()
