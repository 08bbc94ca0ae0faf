"""Inference speed of every compiled path of the generator on this host, side by side.

In one run:

(a) **host**: the CPU model, the flags that decide the fastest path (AVX2, AVX-512,
    AVX512_BF16, AMX), cores, TensorFlow, and the load average before and after (a
    machine shared with other work slows every path; the paths are interleaved so
    it slows them alike, and the ratios are what to read).
(b) **generator paths** at each channel rate (random weights, BatchNorm statistics
    randomised so the folded kernels are not trivial) and for the bundled model,
    median seconds per image of ``--repeats`` interleaved calls after a warm-up:
      * ``xla fp32``: the folded copy compiled with XLA, what every entry point
        ran before ``--jit auto`` (a Predictor with precision fp32, jit on, TensorFlow);
      * ``unfolded``: the model as built, no XLA (``compiled_generator(g)``);
      * ``fp32 no XLA``: the same with jit off;
      * ``onnxruntime fp32`` and ``openvino fp32``: ``--engine onnxruntime`` /
        ``openvino`` (the time to build the first, conversion included, is printed);
      * ``fp32 default``: jit and engine auto, what
        ``dgf-eval`` runs by default (the warm-up calibrates, in a fresh cache
        folder; the choice is printed);
      * ``xla bf16``: ``--precision bf16`` before ``--jit auto`` (folded, bf16, XLA);
      * ``bf16 no XLA``, ``openvino bf16`` (on a CPU with native bf16) and ``bf16
        default`` (what ``dgf-deblur`` runs there by default), unless ``--no-bf16``;
      * with ``--ablate``, ``xla only``: the unfolded model compiled with XLA.
    Each path's largest difference from ``fp32 no XLA`` (in [-1, 1]) is printed, and
    each one's speed-up over ``xla fp32`` (bf16 paths also over ``xla bf16``),
    and each default against the fastest other path of its precision.
    ``--no-engines`` leaves ONNX Runtime and OpenVINO out.
(c) with ``--e2e``, **dgf-deblur end to end** on a 12-megapixel photo (a real pair of
    ``--h5`` enlarged to ``--e2e-size``; speed does not depend on the content) with
    the bundled model at ``--scale 1``, each setting in its own process with an
    empty cache folder (but the last), so start-up, loading, conversion, calibration
    and writing all count: the fixed path (``--engine tensorflow --jit on --precision
    fp32``), the default (all auto), TensorFlow alone with auto jit and precision
    (the default before ``--engine``), each engine at fp32, and at bf16 TensorFlow
    with XLA (the fixed ``--precision bf16`` path), TensorFlow, OpenVINO and the default
    engine choice (the bf16 rows only on a CPU with native bf16), and the default
    again with the cache the default's run left (a later run on the same host: no
    conversion, no calibration). Outputs are compared with the fixed fp32 path's, in uint8 levels.
(d) with ``--onnx FILE`` (``dgf-export --format onnx`` of ``--model``), the peers: that
    file under onnxruntime and OpenVINO (forced f32, and OpenVINO's default, bf16 on a
    CPU with native bf16), interleaved with dgf's fixed and auto paths.

    .venv/bin/python benchmarks/bench_inference.py
    .venv/bin/python benchmarks/bench_inference.py --channel-rates 16 --repeats 7
    .venv/bin/python benchmarks/bench_inference.py --e2e-only --e2e-repeats 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
          "amx_tile", "amx_bf16", "amx_int8")
_E2E = {  # name: dgf-deblur flags
    "xla (jit on, fp32)": ["--engine", "tensorflow", "--jit", "on", "--precision", "fp32"],
    "default (all auto)": [],
    "tensorflow, auto": ["--engine", "tensorflow"],  # the default before --engine
    "tensorflow fp32": ["--engine", "tensorflow", "--precision", "fp32"],
    "onnxruntime fp32": ["--engine", "onnxruntime", "--precision", "fp32"],
    "openvino fp32": ["--engine", "openvino", "--precision", "fp32"],
    "default fp32": ["--precision", "fp32"],
    "xla bf16 (jit on)": ["--engine", "tensorflow", "--jit", "on", "--precision", "bf16"],
    "tensorflow bf16": ["--engine", "tensorflow", "--precision", "bf16"],
    "openvino bf16": ["--engine", "openvino", "--precision", "bf16"],
    "default bf16": ["--precision", "bf16"],
    "default, calibrated": [],  # reuses the default run's cache: no calibration
}
# The row whose cache folder "default, calibrated" reuses.
_E2E_DEFAULT = "default (all auto)"


def _e2e_rows(engines: bool) -> dict[str, list[str]]:
    """The end-to-end rows this host runs: the bf16 ones only on a CPU with native
    bf16 (elsewhere bf16 is converted in software, slower than fp32: section (b) shows
    by how much), openvino bf16 only where OpenVINO runs bf16, no engine rows without
    ``engines``."""
    from dgf import engines as dgf_engines
    from dgf.runtime import bf16_native

    rows = {}
    for name, flags in _E2E.items():
        engine = flags[flags.index("--engine") + 1] if "--engine" in flags else "auto"
        if "bf16" in name and not bf16_native():
            continue
        if engine in ("onnxruntime", "openvino") and not engines:
            continue
        if engine == "openvino" and "bf16" in name and (
                dgf_engines.engine("openvino").precision_reason("bf16") is not None):
            continue
        rows[name] = flags + ([] if engines or "--engine" in flags else ["--engine", "tensorflow"])
    return rows


def _call(generator, precision: str, jit: str, engine: str = "tensorflow"):
    """The call a Predictor of ``generator`` runs with these settings."""
    from dgf.predictor import Predictor
    from dgf.spec import InferenceSpec

    return Predictor(generator, InferenceSpec(precision=precision, jit=jit,
                                              engine=engine)).call()


def _randomise_batchnorm(model, seed: int) -> None:
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c),
                               rng.normal(0, 0.1, c), rng.uniform(0.5, 2.0, c)])


def _time(fn, x) -> float:
    import numpy as np

    start = time.perf_counter()
    np.asarray(fn(x))  # the result must reach the host, as it does for a user
    return time.perf_counter() - start


def _host() -> str:
    from dgf.calibration import cpu_description

    cpu = cpu_description()
    flags = [f for f in _FLAGS if f in cpu["flags"]]
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"{cpu['model'] or cpu['machine']}, {os.cpu_count()} cores; flags: "
            f"{' '.join(flags) or 'none of ' + ' '.join(_FLAGS)}; load average {load}")


def _paths(generator, bf16: bool, ablate: bool, engines: bool) -> tuple[dict, dict]:
    """The timed paths, and the seconds each took to build (an engine's conversion)."""
    from dgf import engines as dgf_engines
    from dgf.runtime import compiled_generator

    wanted = {"xla fp32": lambda: _call(generator, "fp32", "on"),
              "unfolded": lambda: compiled_generator(generator),
              "fp32 no XLA": lambda: _call(generator, "fp32", "off")}
    if engines:
        wanted.update({
            "onnxruntime fp32": lambda: _call(generator, "fp32", "off", "onnxruntime"),
            "openvino fp32": lambda: _call(generator, "fp32", "off", "openvino")})
    wanted["fp32 default"] = lambda: _call(generator, "fp32", "auto",
                                                    "auto" if engines else "tensorflow")
    if bf16:
        wanted.update({"xla bf16": lambda: _call(generator, "bf16", "on"),
                       "bf16 no XLA": lambda: _call(generator, "bf16", "off")})
        if engines and dgf_engines.engine("openvino").precision_reason("bf16") is None:
            wanted["openvino bf16"] = lambda: _call(generator, "bf16", "off",
                                                             "openvino")
        wanted["bf16 default"] = lambda: _call(generator, "bf16", "auto",
                                                        "auto" if engines else "tensorflow")
    if ablate:  # XLA without folding
        wanted["xla only"] = lambda: compiled_generator(generator, jit_compile=True)
    paths, built = {}, {}
    for name, make in wanted.items():
        start = time.perf_counter()
        paths[name] = make()
        built[name] = time.perf_counter() - start
    return paths, built


def _measure(name: str, generator, x, args) -> None:
    import numpy as np

    paths, built = _paths(generator, not args.no_bf16, args.ablate, not args.no_engines)
    for path in ("onnxruntime fp32", "openvino fp32"):
        if path in built:  # the first engine path converts; the others reuse it
            print(f"  {name}: {path} built in {built[path]:.2f} s (conversion and session)")
    outputs = {}
    for path, fn in paths.items():  # warm-up: tracing, XLA compiles, calibration
        start = time.perf_counter()
        outputs[path] = np.asarray(fn(x))
        if path.endswith("default"):
            shape = tuple(x.shape)
            print(f"  {name}: {path} chose {fn.choices[shape]} (first call with "
                  f"calibration {time.perf_counter() - start:.1f} s)")
    times: dict[str, list[float]] = {path: [] for path in paths}
    for _ in range(args.repeats):
        for path, fn in paths.items():
            times[path].append(_time(fn, x) / len(x))
    med = {path: statistics.median(t) for path, t in times.items()}
    reference = outputs["fp32 no XLA"]
    print(f"{name}, batch {len(x)}, {x.shape[1]}^2")
    print(f"  {'path':<16} {'s/img':>7} {'vs xla fp32':>13} {'vs xla bf16':>13} "
          f"{'max |diff|':>10}")
    for path, sec in med.items():
        vs_bf16 = (f"{med['xla bf16'] / sec:>12.2f}x" if "bf16" in path
                   and "xla bf16" in med else f"{'':>13}")
        stray = float(np.abs(outputs[path] - reference).max())
        print(f"  {path:<16} {sec:>7.3f} {med['xla fp32'] / sec:>12.2f}x {vs_bf16} "
              f"{stray:>10.1e}")
    for precision in ("fp32", "bf16"):
        mine = [p for p in med if precision in p and p != f"{precision} default"
                and not p.startswith("xla ")] + (["unfolded"] if precision == "fp32" else [])
        if f"{precision} default" in med and mine:
            best = min(mine, key=med.get)
            print(f"  {precision} default against the fastest other {precision} path "
                  f"({best}): {med[best] / med[f'{precision} default']:.2f}x")


def _generators(args):
    import keras

    from dgf.models import build_generator
    from dgf.runtime import load_generator

    for cr in args.channel_rates:
        keras.utils.set_random_seed(cr)
        generator = build_generator(channel_rate=cr)
        _randomise_batchnorm(generator, cr)
        yield f"cr {cr} (random)", generator, args.batch if cr < 64 else args.batch_cr64
    if args.model is not None:
        yield f"{args.model.name}", load_generator(args.model), args.batch


def _peers(args) -> None:
    """The ONNX export of --model under onnxruntime and OpenVINO, against dgf's paths."""
    import numpy as np
    import onnxruntime
    import openvino

    from dgf.images import to_unit
    from dgf.runtime import load_generator

    generator = load_generator(args.model)
    images = np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 3),
                                               dtype=np.uint8)
    unit = to_unit(images)
    ort = onnxruntime.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
    core = openvino.Core()
    ov_model = core.read_model(str(args.onnx))
    ov_f32 = core.compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ov_default = core.compile_model(ov_model, "CPU")
    hint = ov_default.get_property("INFERENCE_PRECISION_HINT")
    hint = hint.to_string() if hasattr(hint, "to_string") else str(hint)
    paths = {
        "xla fp32": (_call(generator, "fp32", "on"), unit),
        "fp32 auto": (_call(generator, "fp32", "auto"), unit),
        "bf16 auto": (_call(generator, "bf16", "auto"), unit),
        "onnxruntime fp32": (lambda x: ort.run(["deblurred"], {"images": x})[0], images),
        "openvino f32": (lambda x: ov_f32(x)[0], images),
        f"openvino default ({hint})": (lambda x: ov_default(x)[0], images),
    }
    for fn, x in paths.values():
        np.asarray(fn(x))
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, (fn, x) in paths.items():
            times[name].append(_time(fn, x) / len(x))
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"(d) peers: {args.onnx.name} (the ONNX export of {args.model.name}) against dgf, "
          f"batch {args.batch}, {args.size}^2, median of {args.repeats} interleaved")
    for name, sec in med.items():
        print(f"  {name:<26} {sec:>7.3f} s/img {med['xla fp32'] / sec:>6.2f}x xla fp32")


def _e2e_photo(args, folder: Path) -> Path:
    from PIL import Image

    from dgf.scoring import read_pairs

    _, blurred = read_pairs(args.h5, "test", [0])
    # PNG, so outputs compare without JPEG's rounding (a level can become several).
    path = folder / "photo_12mp.png"
    Image.fromarray(blurred[0]).resize(tuple(args.e2e_size), Image.Resampling.LANCZOS).save(
        path, compress_level=1)
    return path


def _e2e(args) -> None:
    import numpy as np
    from PIL import Image

    code = "import sys; from dgf.cli import deblur_main; sys.exit(deblur_main(sys.argv[1:]))"
    with tempfile.TemporaryDirectory() as tmp:
        photo = _e2e_photo(args, Path(tmp))
        rows = _e2e_rows(not args.no_engines)
        seconds: dict[str, list[float]] = {name: [] for name in rows}
        images = {}
        for round_ in range(args.e2e_repeats):
            for i, (name, flags) in enumerate(rows.items()):
                out = Path(tmp) / f"out{i}_{round_}"
                # "default, calibrated" reuses the default's cache folder
                cache = i if name != "default, calibrated" else list(rows).index(_E2E_DEFAULT)
                env = {**os.environ, "DGF_CACHE_DIR": str(Path(tmp) / f"cache{cache}_{round_}"),
                       "PYTHONPATH": str(REPO)}
                cmd = [sys.executable, "-c", code, str(photo), "-o", str(out), "--model",
                       str(args.model), "--scale", "1", "--no-progress", *flags]
                start = time.perf_counter()
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                seconds[name].append(time.perf_counter() - start)
                if done.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
                images[name] = np.asarray(Image.open(out / photo.name)).astype(int)
        print(f"(c) dgf-deblur end to end, {args.e2e_size[0]}x{args.e2e_size[1]} PNG, "
              f"{args.model.name}, --scale 1, fresh process and cache each; median of "
              f"{args.e2e_repeats}; output against the fixed fp32 path in uint8 levels")
        fixed = statistics.median(seconds["xla (jit on, fp32)"])
        for name, sec in seconds.items():
            diff = np.abs(images[name] - images["xla (jit on, fp32)"])
            print(f"  {name:<22} {statistics.median(sec):>7.1f} s "
                  f"{fixed / statistics.median(sec):>6.2f}x   max {diff.max()} levels, "
                  f"mean {diff.mean():.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channel-rates", type=int, nargs="*", default=[8, 16, 64])
    p.add_argument("--model", type=Path,
                   default=REPO / "dgf" / "weights" / "dgf-s2d4-cr32-pairs-small.keras",
                   help="a trained generator timed after the random ones (and used by --e2e)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--batch", type=int, default=8, help="images per call")
    p.add_argument("--batch-cr64", type=int, default=2,
                   help="images per call at channel rates >= 64")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per path")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 paths")
    p.add_argument("--no-engines", action="store_true",
                   help="skip ONNX Runtime and OpenVINO (and time the TensorFlow-only default)")
    p.add_argument("--ablate", action="store_true",
                   help="also time the unfolded model under XLA (xla only)")
    p.add_argument("--e2e", action="store_true", help="also time dgf-deblur end to end")
    p.add_argument("--e2e-only", action="store_true", help="only the dgf-deblur rows")
    p.add_argument("--onnx", type=Path, default=None,
                   help="the ONNX export of --model (dgf-export --format onnx): also time it "
                   "under onnxruntime and OpenVINO (f32, and its default precision)")
    p.add_argument("--e2e-size", type=int, nargs=2, default=(4032, 3024), metavar=("W", "H"))
    p.add_argument("--e2e-repeats", type=int, default=1)
    p.add_argument("--h5", type=Path, default=REPO / "data" / "pairs-small.h5",
                   help="pairs file whose first test pair becomes the --e2e photo")
    args = p.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO))
    cache = tempfile.TemporaryDirectory()
    os.environ["DGF_CACHE_DIR"] = cache.name  # every auto path calibrates in this run
    import numpy as np
    import tensorflow as tf

    print(f"(a) {_host()}; TensorFlow {tf.__version__}")
    if not args.e2e_only:
        print("(b) median seconds per image, interleaved; max |diff| from fp32 no XLA "
              "in [-1, 1]")
        for name, generator, batch in _generators(args):
            x = np.random.default_rng(0).uniform(-1, 1, (batch, args.size, args.size, 3))
            _measure(name, generator, x.astype(np.float32), args)
    if args.onnx is not None:
        _peers(args)
    if args.e2e or args.e2e_only:
        _e2e(args)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
