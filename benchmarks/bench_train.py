"""Train-step throughput: dgf's compiled step against a seed-style loop, same run.

The seed-style loop is what the tutorial code does per batch: ``g.predict``, then
``d.train_on_batch``, then ``d_on_g.train_on_batch``, then ``g.train_on_batch``: the
generator runs forward three times and backward twice per step. dgf's step runs it
forward once and backward once.

Each variant runs in its own subprocess (mixed-precision policies and XLA are
process-wide), on random uint8 batches held in memory, so only the step is timed.
The VGG16 perceptual loss is included with random weights (same cost as ImageNet's).

    python benchmarks/bench_train.py            # small (cr 16, 64x64) and full size
    python benchmarks/bench_train.py --small    # small configurations only
    python benchmarks/bench_train.py --flops --config configs/gopro-gpu.yaml
                                                # arithmetic only: FLOPs and GPU estimates

The "loop" rows run ``dgf.session.train`` itself on an HDF5 file of random pairs (so
the loader, logging and progress bar are included) and report the rate it logs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, os, resource, sys, time
import numpy as np
args = json.loads(sys.argv[1])
import keras
import tensorflow as tf
sys.path.insert(0, args["repo"])
from dgf.config import TrainConfig
from dgf.losses import PerceptualLoss

cr, size, batch = args["channel_rate"], args["size"], args["batch"]
patch = 64 if size % 64 == 0 else 32
rng = np.random.default_rng(0)
blurred = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
sharp = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)

def timed(step, warmup, steps):
    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t)

if args["mode"] == "dgf":
    from dgf.session import _policy_name
    from dgf.train import GANTrainer
    keras.mixed_precision.set_dtype_policy(_policy_name(args["precision"]))
    extra = args.get("extra") or {}
    cfg = TrainConfig(**{"channel_rate": cr, "patch": patch, "crop": size, "batch_size": batch,
                         "precision": args["precision"], "jit": args["jit"], **extra})
    strategy = tf.distribute.get_strategy()
    perceptual = PerceptualLoss(weights=None)
    trainer = GANTrainer(cfg, strategy, total_steps=1000, perceptual=perceptual)
    data = (tf.constant(blurred), tf.constant(sharp))
    def step():
        logs = trainer.step(data)
        float(logs["g_loss"])
elif args["mode"] == "flops":
    # Convolution arithmetic per step (dgf.costs.step_cost, dgf.tiling.conv_flops on the
    # networks dgf builds): G = generator forward, D = discriminator forward, V = VGG16
    # to block3_conv3 forward, each on one batch. A backward pass costs about twice
    # its forward when weight gradients are needed (G, D being trained) and once when
    # only input gradients are (VGG; D inside the generator's loss).
    from dgf.costs import step_cost
    cost = step_cost(TrainConfig(channel_rate=cr, patch=patch, crop=size))
    g, d, v = (batch * n / 1e9 for n in (cost.generator, cost.discriminator, cost.vgg))
    # seed: predict (G) + D trained on 2 batches (6D) + d_on_g (3G + 2D + 3V)
    #       + g.train_on_batch (3G + 3V).  dgf: G once forward and backward (3G),
    #       D trained on 2 batches (6D), D in G's loss (2D), VGG 3V.
    print("RESULT", json.dumps({"G": g, "D": d, "V": v, "seed": 7 * g + 8 * d + 6 * v,
                                "dgf": batch * cost.per_image / 1e9}))
    sys.exit(0)
elif args["mode"] == "loop":
    # The whole training loop (dgf.session.train) on an HDF5 file of the same random
    # pairs: loader, step, logging, progress. Its rate is what metrics.jsonl reports,
    # from step launch times over the last 20 steps.
    import h5py, tempfile
    from pathlib import Path
    from dgf.session import train
    root = Path(tempfile.mkdtemp())
    n = 64 * batch
    with h5py.File(root / "pairs.h5", "w") as f:
        for split, count in (("train", n), ("test", 2)):
            for name in ("full", "blur"):
                f.create_dataset(f"{split}_data_{name}", data=rng.integers(
                    0, 256, (count, max(size, 128), max(size, 128), 3), dtype=np.uint8))
    cfg = TrainConfig(h5=str(root / "pairs.h5"), run_dir=str(root / "run"), channel_rate=cr,
                      patch=patch, crop=size, batch_size=batch, precision=args["precision"],
                      jit=args["jit"], log_every=1, epochs=1, snapshots=False)
    train(cfg, progress=False, perceptual_override=PerceptualLoss(weights=None),
          max_steps=args["warmup"] + args["steps"])
    records = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    rate = [r["images_per_sec"] for r in records if r.get("kind") == "step"][-1]
    print("RESULT", json.dumps({"images_per_sec": rate,
          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    sys.exit(0)
else:
    from dgf.models import build_discriminator, build_generator
    from dgf.losses import FEATURE_SCALE, l1_loss, vgg_preprocess
    vgg = PerceptualLoss(weights=None).features
    def perceptual(y_true, y_pred):
        # The seed's own perceptual loss: one VGG call per image batch (the target's
        # features get no backward pass, having no path to a weight), same scaling.
        return FEATURE_SCALE * keras.ops.mean(keras.ops.square(
            vgg(vgg_preprocess(y_true)) - vgg(vgg_preprocess(y_pred))))
    g = build_generator(channel_rate=cr)
    d = build_discriminator(channel_rate=cr, patch=patch)
    inp = keras.Input((size, size, 3))
    n_patches = (size // patch) ** 2
    prob = keras.layers.Activation("sigmoid")(d(inp))
    prob = keras.layers.GlobalAveragePooling1D()(keras.layers.Reshape((n_patches, 1))(prob))
    d_prob = keras.Model(inp, prob)
    d_prob.compile(keras.optimizers.Adam(3e-4, beta_1=0.5), loss="binary_crossentropy")
    def generator_loss(y_true, y_pred):
        return 145 * perceptual(y_true, y_pred) + 170 * l1_loss(y_true, y_pred)
    def adversarial_loss(y_true, y_pred):
        return -keras.ops.mean(keras.ops.log(y_pred + 1e-7))
    g.compile(keras.optimizers.Adam(3e-4, beta_1=0.5), loss=generator_loss)
    d_prob.trainable = False
    gin = keras.Input((size, size, 3))
    gen = g(gin)
    d_on_g = keras.Model(gin, [gen, d_prob(gen)])
    d_on_g.compile(keras.optimizers.Adam(3e-4, beta_1=0.5),
                   loss=[generator_loss, adversarial_loss], loss_weights=[1.0, 1.0])
    xb = blurred.astype("float32") / 127.5 - 1
    xs = sharp.astype("float32") / 127.5 - 1
    ones, zeros = np.ones((batch, 1), "float32"), np.zeros((batch, 1), "float32")
    def step():
        generated = g.predict(xb, verbose=0)
        d_prob.trainable = True
        d_prob.train_on_batch(np.concatenate([xs, generated]), np.concatenate([ones, zeros]))
        d_prob.trainable = False
        d_on_g.train_on_batch(xb, [xs, ones])
        g.train_on_batch(xb, xs)

rate = timed(step, args["warmup"], args["steps"])
print("RESULT", json.dumps({"images_per_sec": rate,
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_worker(source: str, spec: dict) -> dict:
    """Run ``source`` in a fresh Python with ``spec`` as JSON in argv[1]; return the
    JSON it prints after ``RESULT ``. A fresh process per variant keeps process-wide
    settings (mixed-precision policy, XLA, seeds) from leaking between variants."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", source, json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{spec} failed:\n{done.stderr[-3000:]}")


def run(mode: str, channel_rate: int, size: int, batch: int, precision: str = "fp32",
        jit: bool = False, warmup: int = 2, steps: int = 5, extra: dict | None = None) -> dict:
    spec = dict(mode=mode, channel_rate=channel_rate, size=size, batch=batch,
                precision=precision, jit=jit, warmup=warmup, steps=steps, repo=str(REPO),
                extra=extra or {})
    return run_worker(WORKER, spec)


def table(title: str, rows: list[tuple[str, dict]], baseline: dict) -> None:
    print(f"\n{title}")
    print(f"{'variant':34s} {'images/s':>9s} {'ratio':>7s} {'peak RSS MiB':>13s}")
    for name, r in rows:
        ratio = r["images_per_sec"] / baseline["images_per_sec"]
        print(f"{name:34s} {r['images_per_sec']:9.2f} {ratio:7.2f} {r['peak_rss_mib']:13.0f}")


# The bundled model's recipe (configs/cpu-pairs-small-s2d4.yaml), as TrainConfig fields.
S2D4_RECIPE = dict(space_to_depth=4, residual=True, batchnorm=False, dropout=0.0,
                   pixel_loss="l2", ssim_weight=8.5, perceptual_weight=0.0, ema_decay=0.999)


def precision_study() -> None:
    """Train-step images/s at fp32 and bf16, without and with XLA, two shapes, one run."""
    from dgf.host import cpu_flags

    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    print(f"CPU flags: {' '.join(flags) or 'none of avx2 avx512f avx512_bf16 amx_bf16'}")
    shapes = {
        "channel_rate 16, 64x64 crops, batch 4": dict(channel_rate=16, size=64, batch=4),
        "bundled recipe: space-to-depth 4, channel_rate 32, 128x128 crops, batch 4":
            dict(channel_rate=32, size=128, batch=4, extra={**S2D4_RECIPE, "patch": 32}),
    }
    for title, shape in shapes.items():
        rows = [(f"dgf step, {p}" + (" + XLA" if jit else ""),
                 run("dgf", precision=p, jit=jit, warmup=3, steps=10, **shape))
                for p in ("fp32", "bf16") for jit in (False, True)]
        table(title, rows, rows[0][1])


def flops_report(config: Path | None) -> None:
    """``--flops``: what a training step costs per image and what that means for one
    H100, its loader and the all-reduce, every GPU figure an estimate."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow's import
    from dgf.config import TrainConfig, load_config_file
    from dgf.costs import (
        CPU_FLOPS, GPU_UTILISATION, GPU_UTILISATION_REASON, H100_BF16_PEAK, gpu_flops,
        gpu_images_per_second, number, seconds_per_step, span, step_cost,
    )

    cfg = TrainConfig.from_dict(load_config_file(config) if config else {}, str(config or ""))
    cost = step_cost(cfg)
    g = lambda flops: f"{flops / 1e9:,.2f} GFLOP"  # noqa: E731
    print(f"{config or 'dgf-train defaults'}: channel rate {cfg.channel_rate}, space-to-depth "
          f"{cfg.space_to_depth}, {cost.height}x{cost.width} crops, discriminator patch "
          f"{cfg.patch}, critic steps {cfg.critic_steps}")
    print("per-image training FLOPs (dgf.costs.step_cost: dgf.tiling.conv_flops on the "
          "networks dgf builds, convolutions only, as dgf-info counts):")
    d_times = 6 * cost.critic_steps + 2
    print(f"  G  generator forward                {g(cost.generator):>18s}  x 3 (forward + "
          f"backward) = {g(cost.generator_passes)}")
    print(f"  D  discriminator forward            {g(cost.discriminator):>18s}  x {d_times} "
          f"(trained on sharp and generated, and in G's loss) = {g(cost.discriminator_passes)}")
    print(f"  V  VGG16 to block3_conv3 forward    {g(cost.vgg):>18s}  x 3 (sharp forward, "
          f"generated forward + backward) = {g(cost.vgg_passes)}")
    print(f"  step per image: 3G + {d_times}D + 3V = {g(cost.per_image)}")
    low, high = seconds_per_step(cost, 1, CPU_FLOPS)
    print(f"CPU, batch 1 (estimate): {'-'.join(number(f / 1e9) for f in CPU_FLOPS)} GFLOP/s "
          f"(what the 2-core hosts sustained at inference) -> {span(low, high)} per step")
    sustained = gpu_flops()
    images = gpu_images_per_second(cost)
    print(f"one H100 SXM (estimate): {H100_BF16_PEAK / 1e12:.0f} TFLOP/s dense bf16 peak x "
          f"{GPU_UTILISATION[0] * 100:.0f}-{GPU_UTILISATION[1]:.0%} = "
          f"{sustained[0] / 1e12:.0f}-{sustained[1] / 1e12:.0f} TFLOP/s sustained -> "
          f"{images[0]:.0f}-{images[1]:.0f} images/s, "
          f"{span(1 / images[1], 1 / images[0])} per image")
    print(f"  utilisation {GPU_UTILISATION_REASON}")
    pair = 2 * cost.height * cost.width * 3
    print(f"loader (estimate): {images[0]:.0f}-{images[1]:.0f} pairs/s per GPU (one pair per "
          f"image); {pair / 1e3:,.0f} KB per uint8 pair at the crop: "
          f"{images[0] * pair / 1e6:.0f}-{images[1] * pair / 1e6:.0f} MB/s per GPU")
    size = cost.gradient_bytes
    print(f"all-reduce: {cost.gradient_values:,} trainable parameters (generator and "
          f"discriminator) x 4 bytes (float32 gradients) = S = {size / 1e6:.2f} MB per step; "
          f"a ring over N workers moves 2(N-1)/N x S through each link: "
          f"{size / 1e6:.2f} MB at N = 2, {1.75 * size / 1e6:.2f} MB at N = 8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="skip the full-size model")
    parser.add_argument("--precisions", action="store_true",
                        help="only the precision study: fp32 and bf16, with and without XLA, "
                        "for cr 16 at 64x64 and the bundled model's recipe "
                        "(configs/cpu-pairs-small-s2d4.yaml: space-to-depth 4, cr 32, 128x128)")
    parser.add_argument("--flops", action="store_true",
                        help="only the arithmetic: the per-image training FLOPs of --config's "
                        "networks at its crop (dgf.costs, counted as dgf-info counts), the "
                        "one-H100 estimate they give, the loader's and the all-reduce's needs")
    parser.add_argument("--config", type=Path, default=None,
                        help="with --flops: a dgf-train config file (default: dgf-train's "
                        "defaults, the DGF paper's model at 256x256)")
    args = parser.parse_args()
    if args.flops:
        flops_report(args.config)
        return
    print(f"CPU cores: {os.cpu_count()}")
    if args.precisions:
        precision_study()
        return

    small = dict(channel_rate=16, size=64, batch=4, warmup=3, steps=10)
    seed = run("seed", **small)
    step = run("dgf", **small)
    rows = [("seed-style loop, fp32", seed),
            ("dgf step, fp32", step),
            ("dgf train() loop on HDF5, fp32", run("loop", channel_rate=16, size=64, batch=4,
                                                    warmup=5, steps=21)),
            ("dgf step, bf16", run("dgf", precision="bf16", **small)),
            ("dgf step, fp32 + XLA", run("dgf", jit=True, **small)),
            ("dgf step, bf16 + XLA", run("dgf", precision="bf16", jit=True, **small))]
    table("channel_rate 16, 64x64 crops, batch 4", rows, seed)
    print(f"loop / bare step: {rows[2][1]['images_per_sec'] / step['images_per_sec']:.2f}")
    count = run("flops", **small)
    print(f"convolution arithmetic per step (GFLOP): G {count['G']:.2f}, D {count['D']:.3f}, "
          f"VGG {count['V']:.2f} forward; seed-style {count['seed']:.1f}, dgf "
          f"{count['dgf']:.1f}: the seed does {count['seed'] / count['dgf']:.2f}x dgf's "
          f"arithmetic, the most its step can gain on compute-bound hardware")

    recipe = dict(channel_rate=16, size=96, batch=4)
    step = run("dgf", warmup=3, steps=10, **recipe)
    loop = run("loop", warmup=5, steps=21, **recipe)
    table("the CPU recipe's shape: channel_rate 16, 96x96 crops, batch 4",
          [("dgf step, fp32", step), ("dgf train() loop on HDF5, fp32", loop)], step)
    print(f"loop / bare step: {loop['images_per_sec'] / step['images_per_sec']:.2f}")
    if args.small:
        return

    full = dict(channel_rate=64, size=256, batch=1, warmup=1, steps=3)
    seed = run("seed", **full)
    rows = [("seed-style loop, fp32", seed),
            ("dgf step, fp32", run("dgf", **full)),
            ("dgf step, bf16", run("dgf", precision="bf16", **full)),
            ("dgf step, fp32 + XLA", run("dgf", jit=True, **full))]
    table("full model (channel_rate 64), 256x256, batch 1", rows, seed)

    print("\npeak memory, full model at 256x256 (dgf step, fp32; host RSS on this CPU)")
    for batch in (1, 2):
        r = run("dgf", channel_rate=64, size=256, batch=batch, warmup=1, steps=1)
        print(f"  batch {batch}: {r['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
