"""Peak memory and time of dgf-deblur: tiled vs untiled on a 12-megapixel image, and
the whole command (read, deblur at ``--scale``, write) on 12 and 200 MP photos.

Each measurement runs in its own subprocess so ``ru_maxrss`` is that run's peak.

**Tiled vs untiled** (the default): :meth:`Predictor.deblur_image` at scale 1 with a
generator of random weights (speed and memory do not depend on them). Baseline,
measured in the same run: the whole image at once (``tile=0``). A 12 MP image does not
fit untiled on a small machine, so by default the untiled run uses a smaller image
(``--untiled-size``) and its activation memory (peak minus the idle process with the
model built) is extrapolated linearly in the pixel count to the 12 MP size; the script
says when it does so. Seconds are compared per megapixel.

**Photos** (``--photos``): :func:`dgf.infer.deblur_paths`, as ``dgf-deblur`` runs it,
on synthetic JPEG photos (smooth shapes and mild noise, quality 90) of 12 MP
(4032x3024) and 200 MP (16320x12240), with the bundled model at ``--scale auto`` and
with a random channel-rate-32 space-to-depth-4 generator (the bundled model's layout)
at ``--scale 0.25``; TensorFlow without XLA, fp32, so no engine is calibrated. The
idle row deblurs a 256x256 photo: the process with TensorFlow and the model at rest.
``--dgf PATH`` imports dgf from another checkout (an older commit), so the same script
measures the code before a change.

    .venv/bin/python benchmarks/bench_deblur.py                 # cr 16, 4032x3024
    .venv/bin/python benchmarks/bench_deblur.py --channel-rate 64 --size 1024 768
    .venv/bin/python benchmarks/bench_deblur.py --photos        # 12 and 200 MP photos
    .venv/bin/python benchmarks/bench_deblur.py --photos --sizes 4032x3024 --dgf ../old

**The whole process** (``--command``): what a person deblurring phone photos waits
for, ``dgf-deblur PHOTO -o OUT`` at its defaults (bundled model, ``--scale auto``,
``--engine auto``), timed from process start to exit, on a 12 MP (4032x3024)
phone-like photo: scikit-image's coffee enlarged, shaken along a camera-shake path
of 1% of its shorter side, noise 2, JPEG 90. Run in this order: one photo on a fresh
speed-choice cache (``DGF_CACHE_DIR`` empty), a folder of 20 copies in one process
(whose first photo measures the paths and stores the choice, where the photo alone
may not), the one photo again with the choice stored, and the folder again (seconds
per photo after the first: (folder again - one photo stored) / 19). ``--dgf PATH``
adds the same rows for another checkout (an older commit) in the same run, its cache
apart.

    .venv/bin/python benchmarks/bench_deblur.py --command --dgf ../old
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTO_SIZES = ("4032x3024", "16320x12240")
#: (label, model, scale) of the --photos rows: "bundled" or the random generator.
PHOTO_RUNS = (("bundled model, --scale auto", "bundled", "auto"),
              ("random cr32 s2d4, --scale 0.25", "random", "0.25"))


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
    return _run_child(cmd, mode)


def _run_child(cmd: list[str], what: str) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{what} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _tiling(args: argparse.Namespace) -> None:
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


# --- --photos: the whole command -----------------------------------------------------
def _synthetic_photo(path: Path, width: int, height: int) -> None:
    """A JPEG of smooth shapes and mild noise, built band by band (little memory)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    photo = np.empty((height, width, 3), np.uint8)
    xx = np.arange(width, dtype=np.float32)
    for top in range(0, height, 512):
        yy = np.arange(top, min(top + 512, height), dtype=np.float32)[:, None]
        shade = (np.sin(xx / 97.0) + np.cos(yy / 131.0) + 2) * 55
        band = shade[..., None] + np.array([0, 10, 20], np.float32)
        band += rng.normal(0, 6, band.shape).astype(np.float32)
        photo[top : top + len(yy)] = np.clip(band, 0, 255)
    Image.fromarray(photo).save(path, quality=90)


def _photo_child(args: argparse.Namespace) -> None:
    """Run deblur_paths on one photo; print a JSON line: seconds, peak, failures."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(args.dgf or REPO))
    import warnings

    from dgf.infer import WriteOptions, deblur_paths
    from dgf.spec import InferenceSpec

    spec = InferenceSpec(precision="fp32", engine="tensorflow", jit="off",
                         scale=args.scale if args.scale == "auto" else float(args.scale))
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = deblur_paths(args.model, [args.photo], args.out, spec,
                              writing=WriteOptions(overwrite=True), progress=False)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    import dgf

    print(json.dumps({"seconds": seconds, "peak_mib": peak_kib / 1024,
                      "dgf": str(Path(dgf.__file__).parent),
                      "failed": [reason for _, reason in report.failed],
                      "warnings": sorted({type(w.message).__name__ for w in caught
                                          if "Bomb" in type(w.message).__name__})}))


def _photo_rows(args: argparse.Namespace) -> None:
    import dgf.weights  # noqa: F401 - the bundled model's path, from this checkout

    load = os.getloadavg()
    print(f"dgf from {args.dgf or REPO}; {os.cpu_count()} CPU cores; load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the start")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = {"bundled": Path(dgf.weights.__file__).parent / dgf.weights.BUNDLED_MODEL_NAME,
                  "random": tmp / "random.keras"}
        _run_child([sys.executable, __file__, "--child", "model", "--model",
                    str(models["random"])], "model")
        sizes = ["256x256", *args.sizes]
        for size in sizes:
            width, height = (int(n) for n in size.split("x"))
            photo = tmp / f"photo_{size}.jpg"
            _synthetic_photo(photo, width, height)
            for label, model, scale in PHOTO_RUNS:
                cmd = [sys.executable, __file__, "--child", "photo", "--photo", str(photo),
                       "--model", str(models[model]), "--scale", scale,
                       "--out", str(tmp / "out")]
                if args.dgf:
                    cmd += ["--dgf", str(args.dgf)]
                got = _run_child(cmd, f"{size} {label}")
                if size == sizes[0] and model == "bundled":
                    print(f"(the runs import dgf from {got['dgf']})")
                name = "idle (256x256)" if size == "256x256" else \
                    f"{size} ({width * height / 1e6:.0f} MP)"
                note = f"  FAILED: {got['failed'][0]}" if got["failed"] else ""
                note += f"  warnings: {', '.join(got['warnings'])}" if got["warnings"] else ""
                print(f"{name:22} {label:31} peak {got['peak_mib']:7.0f} MiB "
                      f"({got['peak_mib'] / 1024:.2f} GiB)  {got['seconds']:7.1f} s{note}",
                      flush=True)
            photo.unlink()
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the end")


# --- --command: the whole dgf-deblur process ------------------------------------------
#: Copies of the photo in the folder row.
FOLDER_PHOTOS = 20


def _phone_photo(path: Path, width: int = 4032, height: int = 3024) -> None:
    """A phone-like JPEG: scikit-image's coffee enlarged to ``width`` x ``height``,
    shaken along a camera-shake path of 1% of the shorter side, noise 2, JPEG 90."""
    import numpy as np
    from PIL import Image

    from dgf.blur import shake_kernel
    from dgf.kernels import blur
    from dgf.synth import sample_photos

    coffee = dict(sample_photos())["coffee"]
    sharp = np.asarray(Image.fromarray(coffee).resize((width, height),
                                                      Image.Resampling.BICUBIC))
    shaken = blur(sharp, shake_kernel(1, 0.01 * min(width, height))).astype(np.float32)
    shaken += np.random.default_rng(1).normal(0.0, 2.0, shaken.shape).astype(np.float32)
    Image.fromarray(np.clip(np.rint(shaken), 0, 255).astype(np.uint8)).save(path, quality=90)


def _deblur_process(checkout: Path, inputs: Path, out: Path, cache: Path) -> float:
    """Seconds from start to exit of ``dgf-deblur INPUTS -o OUT`` (defaults) run from
    ``checkout`` with its speed-choice cache in ``cache``."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "DGF_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-c", "import sys; from dgf.cli import deblur_main; "
           "sys.exit(deblur_main())", str(inputs), "-o", str(out), "--overwrite",
           "--no-progress"]
    start = time.perf_counter()
    # Run from the checkout: ``-c`` puts the working folder first on sys.path, ahead of
    # PYTHONPATH, so run from another checkout it would import that one's dgf.
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False,
                          cwd=checkout)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"dgf-deblur from {checkout} failed:\n{done.stderr[-3000:]}")
    return seconds


def _command_rows(args: argparse.Namespace) -> None:
    import shutil

    load = os.getloadavg()
    print(f"{os.cpu_count()} CPU cores; load average {load[0]:.1f} {load[1]:.1f} "
          f"{load[2]:.1f} at the start")
    checkouts = [("this checkout", REPO)] + ([("--dgf " + str(args.dgf), args.dgf)]
                                             if args.dgf else [])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "photos"
        folder.mkdir()
        _phone_photo(folder / "photo_00.jpg")
        for i in range(1, FOLDER_PHOTOS):
            shutil.copyfile(folder / "photo_00.jpg", folder / f"photo_{i:02d}.jpg")
        one = tmp / "one.jpg"
        shutil.copyfile(folder / "photo_00.jpg", one)
        print(f"photo: 4032x3024 (12.2 MP), coffee shaken 1% (30 px), noise 2, JPEG 90; "
              f"dgf-deblur PHOTO -o OUT at its defaults, whole process")
        results = {}
        for label, checkout in checkouts:
            cache = tmp / f"cache-{len(results)}"
            cache.mkdir()
            fresh = _deblur_process(checkout, one, tmp / "out", cache)
            measuring = _deblur_process(checkout, folder, tmp / "out-folder", cache)
            stored = _deblur_process(checkout, one, tmp / "out", cache)
            many = _deblur_process(checkout, folder, tmp / "out-folder", cache)
            after = (many - stored) / (FOLDER_PHOTOS - 1)
            results[label] = (fresh, stored, after)
            print(f"{label:40} fresh cache {fresh:6.1f} s   choice stored {stored:6.1f} s"
                  f"   {FOLDER_PHOTOS} photos {many:6.1f} s = {after:5.2f} s per photo "
                  f"after the first (the first folder, fresh choice: {measuring:.1f} s)",
                  flush=True)
        if len(results) == 2:
            (a, b) = results.values()
            print("ratio this checkout / --dgf: " + ", ".join(
                f"{name} {x / y:.2f}x" for name, x, y in
                zip(("fresh", "stored", "per photo after the first"), a, b)))
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the end")


def _model_child(args: argparse.Namespace) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO))
    import keras

    from dgf.models import build_generator

    keras.utils.set_random_seed(0)
    build_generator(channel_rate=32, residual=True, space_to_depth=4).save(args.model)
    print("{}")


def main() -> None:
    sys.path.insert(0, str(REPO))
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channel-rate", type=int, default=16)
    p.add_argument("--size", type=int, nargs=2, default=(4032, 3024), metavar=("W", "H"))
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--untiled-size", type=int, nargs=2, default=(1024, 768),
                   metavar=("W", "H"), help="image size of the untiled baseline")
    p.add_argument("--photos", action="store_true",
                   help="measure the whole command on synthetic photos instead")
    p.add_argument("--sizes", nargs="+", default=list(PHOTO_SIZES), metavar="WxH",
                   help="photo sizes of --photos")
    p.add_argument("--command", action="store_true",
                   help="time the whole dgf-deblur process on a 12 MP phone-like photo: "
                   "fresh cache, choice stored, a folder of 20")
    p.add_argument("--dgf", type=Path, default=None,
                   help="--photos: import dgf from this checkout instead; --command: "
                   "also time this checkout")
    p.add_argument("--child", choices=("idle", "run", "photo", "model"),
                   help=argparse.SUPPRESS)
    p.add_argument("--photo", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--scale", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    children = {"photo": _photo_child, "model": _model_child}
    if args.child:
        children.get(args.child, _child)(args)
    elif args.command:
        _command_rows(args)
    elif args.photos:
        _photo_rows(args)
    else:
        _tiling(args)


if __name__ == "__main__":
    main()
