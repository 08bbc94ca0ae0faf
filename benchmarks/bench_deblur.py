"""Peak memory and time of dgf-deblur on a 12-megapixel photo, tiled vs untiled.

Each measurement runs in its own subprocess so ``ru_maxrss`` is that run's peak.
The generator has random weights (speed and memory do not depend on them).

Baseline, measured in the same run: the whole image at once (``tile=0``). A 12 MP
image does not fit untiled on a small machine, so by default the untiled run uses a
smaller image (``--untiled-size``) and its activation memory (peak minus the idle
process with the model built) is extrapolated linearly in the pixel count to the
12 MP size; the script says when it does so. Seconds are compared per megapixel.

    .venv/bin/python benchmarks/bench_deblur.py                 # cr 16, 4032x3024
    .venv/bin/python benchmarks/bench_deblur.py --channel-rate 64 --size 1024 768
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _child(args: argparse.Namespace) -> None:
    """Build the generator, deblur one image, print a JSON line of measurements."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO))
    import keras
    import numpy as np

    from dgf.models import build_generator
    from dgf.predictor import Predictor
    from dgf.spec import InferenceSpec

    keras.utils.set_random_seed(0)
    generator = build_generator(channel_rate=args.channel_rate)
    run = Predictor(generator, InferenceSpec(engine="tensorflow", tile=args.tile,
                                             overlap=args.overlap, batch=args.batch))
    # Warm-up on a small image (one tile), so one-off kernel setup is not timed.
    run.deblur_image(np.zeros((32, 32, 3), np.uint8))
    width, height = args.size
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    idle_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = 0.0
    if args.child != "idle":
        start = time.perf_counter()
        out = run.deblur_image(image)
        seconds = time.perf_counter() - start
        assert out.shape == image.shape
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_mib": peak_kib / 1024,
                      "idle_mib": idle_kib / 1024}))


def _measure(mode: str, args: argparse.Namespace, size: tuple[int, int], tile: int) -> dict:
    cmd = [
        sys.executable, __file__, "--child", mode,
        "--channel-rate", str(args.channel_rate), "--size", str(size[0]), str(size[1]),
        "--tile", str(tile), "--overlap", str(args.overlap), "--batch", str(args.batch),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channel-rate", type=int, default=16)
    p.add_argument("--size", type=int, nargs=2, default=(4032, 3024), metavar=("W", "H"))
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--untiled-size", type=int, nargs=2, default=(1024, 768),
                   metavar=("W", "H"), help="image size of the untiled baseline")
    p.add_argument("--child", choices=("idle", "run"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return

    size, small = tuple(args.size), tuple(args.untiled_size)
    mpix, small_mpix = size[0] * size[1] / 1e6, small[0] * small[1] / 1e6
    print(f"generator channel_rate {args.channel_rate}, random weights; "
          f"{os.cpu_count()} CPU cores")
    idle = _measure("idle", args, small, 0)
    print(f"idle process (TF + model):           peak {idle['peak_mib']:8.0f} MiB")
    tiled = _measure("run", args, size, args.tile)
    print(f"tiled   {size[0]}x{size[1]} tile {args.tile} overlap {args.overlap} batch "
          f"{args.batch}: peak {tiled['peak_mib']:8.0f} MiB  {tiled['seconds']:8.1f} s  "
          f"({tiled['seconds'] / mpix:.2f} s/MP)")
    untiled = _measure("run", args, small, 0)
    print(f"untiled {small[0]}x{small[1]}:                       peak "
          f"{untiled['peak_mib']:8.0f} MiB  {untiled['seconds']:8.1f} s  "
          f"({untiled['seconds'] / small_mpix:.2f} s/MP)")
    per_mp = (untiled["peak_mib"] - idle["peak_mib"]) / small_mpix
    if small != size:
        print(f"untiled {size[0]}x{size[1]} extrapolated from {small[0]}x{small[1]} "
              f"(linear in pixels): peak {idle['peak_mib'] + per_mp * mpix:8.0f} MiB")
    full_untiled = idle["peak_mib"] + per_mp * mpix
    tiled_work = tiled["peak_mib"] - idle["peak_mib"]
    print(f"ratio untiled/tiled peak RSS at {mpix:.1f} MP: "
          f"{full_untiled / tiled['peak_mib']:.1f}x (above idle: "
          f"{per_mp * mpix / max(tiled_work, 1.0):.1f}x)")
    print(f"ratio tiled/untiled seconds per MP (tile overlap cost): "
          f"{(tiled['seconds'] / mpix) / (untiled['seconds'] / small_mpix):.2f}x")


if __name__ == "__main__":
    main()
