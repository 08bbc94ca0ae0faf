"""Does dgf-make-pairs' camera realism help a model on real blurred photos?

Each variant blurs the same sharp photos (the sharp halves of a side-by-side pairs
folder's train split) with the same crops and kernels (same seed), with one set of
camera steps switched on; the real test split of that folder is copied beside each
set. Every variant then trains the same recipe for the same number of steps
(``configs/cpu-pairs-small-s2d4.yaml``, content loss only) and is scored on the real
test pairs at crop border 8. The numbers compare at equal steps, so training the
variants side by side (``--parallel``, one thread each) does not bias them.

    python benchmarks/bench_realism.py ../shared/data/pairs-small --out /tmp/realism
    python benchmarks/bench_realism.py ../shared/data/pairs-small --variants plain jpeg
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dgf.images import find_images, read_rgb, write_image  # noqa: E402
from dgf.synth import MakePairsOptions, make_pairs  # noqa: E402

VARIANTS = {
    "plain": {},
    "linear": {"linear_light": True},
    "highlight": {"linear_light": True, "highlight_gain": 4.0},
    "jpeg": {"jpeg_quality_range": (70, 95)},
    "camera": {"linear_light": True, "highlight_gain": 4.0, "jpeg_quality_range": (70, 95)},
}
RECIPE = REPO / "configs" / "cpu-pairs-small-s2d4.yaml"


def _command(name: str, *args: str) -> list[str]:
    """Run the console script ``name`` with this interpreter (and this checkout)."""
    return [sys.executable, "-c", f"import sys; from dgf.cli import {name}; "
            f"sys.exit({name}(sys.argv[1:]))", *args]


def sharp_halves(pairs: Path, out: Path) -> Path:
    """The left (sharp) halves of PAIRS/train, as PNG files in OUT/sharp."""
    folder = out / "sharp"
    folder.mkdir(parents=True, exist_ok=True)
    for path in find_images(pairs / "train"):
        image = read_rgb(path)
        write_image(folder / f"{path.stem}.png", image[:, : image.shape[1] // 2])
    return folder


def prepare(variant: str, sharp: Path, pairs: Path, out: Path, seed: int) -> Path:
    """Synthetic train pairs of one variant beside the real test pairs, as HDF5."""
    folder = out / variant
    options = MakePairsOptions(per_image=2, size=256, test_fraction=0, seed=seed,
                               **VARIANTS[variant])
    make_pairs(sharp, folder, options, overwrite=True, progress=False)
    shutil.rmtree(folder / "test", ignore_errors=True)
    shutil.copytree(pairs / "test", folder / "test")
    h5 = out / f"{variant}.h5"
    h5.unlink(missing_ok=True)
    subprocess.run(_command("build_hdf5_main", str(folder), "-o", str(h5), "--no-progress"),
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return h5


def train_command(h5: Path, run: Path, epochs: int) -> list[str]:
    return _command("train_main", "--config", str(RECIPE), "--h5", str(h5),
                    "--run-dir", str(run), "--epochs", str(epochs),
                    "--warmup-epochs", str(epochs), "--eval-every", str(epochs),
                    "--val-samples", "full", "--no-progress")


def last_score(run: Path) -> dict:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("kind") == "epoch" and "psnr" in r][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", type=Path, help="folder with train/ and test/ of side-by-side pairs")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_realism"))
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS),
                        default=["plain", "camera"])
    parser.add_argument("--epochs", type=int, default=10,
                        help="epochs per variant (270 steps each at 540 photos)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parallel", action="store_true",
                        help="train the variants at once, one thread each")
    args = parser.parse_args()
    sharp = sharp_halves(args.pairs, args.out)
    runs = {v: args.out / "runs" / v for v in args.variants}
    commands = {v: train_command(prepare(v, sharp, args.pairs, args.out, args.seed), runs[v],
                                 args.epochs) for v in args.variants}
    env = dict(os.environ)
    if args.parallel:
        env.update(TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
        for job in [subprocess.Popen(c, cwd=REPO, env=env) for c in commands.values()]:
            if job.wait() != 0:
                raise SystemExit(f"training failed: {job.args}")
    else:
        for command in commands.values():
            subprocess.run(command, check=True, cwd=REPO, env=env)
    print(f"{'variant':10} {'PSNR':>7} {'gain':>7} {'SSIM':>7} {'gain':>7}  (crop border 8)")
    for variant, run in runs.items():
        s = last_score(run)
        print(f"{variant:10} {s['psnr']:7.2f} {s['psnr'] - s['blurred_psnr']:+7.2f} "
              f"{s['ssim']:7.4f} {s['ssim'] - s['blurred_ssim']:+7.4f}")
    print(f"input      {s['blurred_psnr']:7.2f}         {s['blurred_ssim']:7.4f}")


if __name__ == "__main__":
    main()
