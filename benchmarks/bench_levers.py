"""What each training lever does to quality, measured the same way in one run.

Every variant starts from the same seed, sees the same batches (the loader's plan
for ``seed``/``epoch``), trains the same number of steps through
``dgf.train.GANTrainer`` on a real HDF5 file, and is scored with
``dgf.scoring.evaluate_split`` on the same evenly spaced test pairs (BatchNorm
statistics re-estimated first, as the trainer does, when the variant has them).
The baseline is the recipe (``configs/cpu-pairs-small.yaml``) with one setting
changed per row.

    python benchmarks/bench_levers.py data/pairs-small.h5 --steps 120
    python benchmarks/bench_levers.py data/pairs-small.h5 --variants recipe paper
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from bench_train import run_worker  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]

# One setting changed from the recipe per variant (the recipe's warm-up means no GAN).
VARIANTS = {
    "recipe": {},
    "paper": {"residual": False, "batchnorm": True},
    "batchnorm": {"batchnorm": True},
    "l1": {"pixel_loss": "l1", "ssim_weight": 0.0},
    "l2": {"ssim_weight": 0.0},
    "charbonnier": {"pixel_loss": "charbonnier", "ssim_weight": 0.0},
    "no-edge-crops": {"edge_crops": 0.0},
    "no-ema": {"ema_decay": 0.0},
    "s2d2-cr32": {"space_to_depth": 2, "channel_rate": 32},
    "s2d4-cr32": {"space_to_depth": 4, "channel_rate": 32, "crop": 128},
    "s2d4-cr64": {"space_to_depth": 4, "channel_rate": 64, "crop": 128},
    "s2d2-cr16": {"space_to_depth": 2},
    "cr32": {"channel_rate": 32},
}

WORKER = r"""
import json, sys, time
args = json.loads(sys.argv[1])
sys.path.insert(0, args["repo"])
import keras, tensorflow as tf
from dgf.config import TrainConfig, load_config_file
from dgf.batching import plan_batch
from dgf.data import LoaderOptions, make_dataset
from dgf.evaluate import EVAL_SPEC
from dgf.metrics import ScoreSettings
from dgf.predictor import Predictor
from dgf.scoring import EvalOptions, evaluate_split
from dgf.actions import BatchNormReestimation
from dgf.distributed import select_strategy
from dgf.train import GANTrainer
from dgf.data import split_info
values = load_config_file(args["config"])
values.update(h5=args["h5"], run_dir=None, **args["changes"])
cfg = TrainConfig.from_dict(values)
cfg = cfg.replace(batch_size=plan_batch(cfg.batch_size, 1).global_batch)  # one replica
keras.utils.set_random_seed(cfg.seed)
strategy = select_strategy("one")
loader = LoaderOptions(crop=cfg.crop, seed=cfg.seed, augment=cfg.augment,
                       edge_crops=cfg.edge_crops)
def batches():
    epoch = 0
    while True:
        yield from make_dataset(cfg.h5, "train", cfg.batch_size, loader, epoch=epoch)
        epoch += 1
if args["seconds"]:
    # Equal wall time: a throwaway trainer times this variant's step, and the real one
    # gets as many steps as fit in the budget (so its schedule ends with the budget).
    probe = GANTrainer(cfg, strategy, total_steps=100, perceptual=None)
    feed = batches()
    for _ in range(3):
        probe.step(next(feed), warmup=True)
    t0 = time.perf_counter()
    for _ in range(8):
        probe.step(next(feed), warmup=True)
    args["steps"] = max(1, int(args["seconds"] / ((time.perf_counter() - t0) / 8)))
    del probe
    keras.utils.set_random_seed(cfg.seed)
trainer = GANTrainer(cfg, strategy, total_steps=args["steps"], perceptual=None)
started = time.perf_counter()
done, epoch = 0, 0
while done < args["steps"]:
    for batch in make_dataset(cfg.h5, "train", cfg.batch_size, loader, epoch=epoch):
        trainer.step(batch, warmup=True)
        done += 1
        if done == args["steps"]:
            break
    epoch += 1
seconds = time.perf_counter() - started
BatchNormReestimation(cfg, split_info(cfg.h5, "train"))(trainer.averaged, 0)
summary, _ = evaluate_split(Predictor(trainer.averaged, EVAL_SPEC), cfg.h5,
                            EvalOptions(limit=args["pairs"],
                                        settings=ScoreSettings(args["crop_border"])),
                            progress=False)
summary["train_seconds"] = seconds
summary["steps"] = args["steps"]
print("RESULT", json.dumps(summary))
"""


def run_variant(h5: str, config: str, changes: dict, steps: int, pairs: int,
                crop_border: int, seconds: float = 0.0) -> dict:
    spec = dict(repo=str(REPO), h5=h5, config=config, changes=changes, steps=steps,
                pairs=pairs, crop_border=crop_border, seconds=seconds)
    return run_worker(WORKER, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("h5", help="HDF5 pairs file (pairs-small built at 256x256)")
    parser.add_argument("--config", default=str(REPO / "configs" / "cpu-pairs-small.yaml"))
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--pairs", type=int, default=32, help="test pairs scored")
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="train each variant for this much wall time instead of "
                        "--steps (its step is timed first; the schedule spans the budget)")
    parser.add_argument("--crop-border", type=int, default=8,
                        help="pixels removed at each side before scoring")
    parser.add_argument("--variants", nargs="+", default=["recipe", "paper"],
                        choices=sorted(VARIANTS))
    args = parser.parse_args()
    print(f"{args.steps} content-loss steps per variant, {args.pairs} test pairs at "
          f"crop border {args.crop_border}, "
          f"CPU cores: {os.cpu_count()}")
    print(f"{'variant':14s} {'changes':44s} {'PSNR':>7s} {'dPSNR':>7s} {'SSIM':>7s} "
          f"{'dSSIM':>7s} {'train s':>8s} {'steps':>6s}")
    for name in args.variants:
        r = run_variant(args.h5, args.config, VARIANTS[name], args.steps, args.pairs,
                        args.crop_border, args.seconds)
        changes = json.dumps(VARIANTS[name]) if VARIANTS[name] else "(the recipe)"
        print(f"{name:14s} {changes:44s} {r['psnr']:7.3f} {r['psnr'] - r['blurred_psnr']:+7.3f} "
              f"{r['ssim']:7.4f} {r['ssim'] - r['blurred_ssim']:+7.4f} {r['train_seconds']:8.0f} {r['steps']:6d}",
              flush=True)
    print(f"blurred input: PSNR {r['blurred_psnr']:.3f} dB, SSIM {r['blurred_ssim']:.4f}")


if __name__ == "__main__":
    main()
