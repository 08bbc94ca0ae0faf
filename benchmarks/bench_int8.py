"""INT8 against fp32 on the bundled model: speed per engine and quality on real pairs.

In one run:

(a) **host**: the CPU model and the flags that decide int8 speed (AVX2, AVX-512,
    VNNI, AMX), cores, and the load average before and after (the paths are
    interleaved, so a busy machine slows them alike; read the ratios).
(b) **quantising**: ``dgf.quantize.int8_call`` for OpenVINO (NNCF) and ONNX Runtime
    (QDQ) in an empty cache folder, calibrated on ``--count`` crops of ``--side`` px
    of the ``--calibration-split`` of ``--h5`` (default the train split, so the test
    pairs scored below are unseen); the one-off seconds and the guard's numbers.
(c) **speed**: milliseconds per 256x256 image (median of ``--repeats`` interleaved
    rounds after a warm-up) at batch 1 and 8 of: TensorFlow with and without XLA,
    ONNX Runtime and OpenVINO at fp32 (dgf's paths), OpenVINO fp32 on the int8
    conversion (native dilated convolutions; not a dgf path, shown so the int8 gain
    is not credited with the conversion's), OpenVINO bf16 where the CPU has native
    bf16, and each int8 path; each int8 path's ratio to the fp32 of its engine and to
    the fastest fp32 path of dgf.
(d) **quality**: interior (crop border 8) and whole-image PSNR and SSIM (scikit-image
    protocol) against the sharp images of the ``--h5`` test pairs (64 for
    pairs-small), each int8 path and the fp32 of its engine, and their differences.
(e) with ``--options``, instead of (b)-(d), **what NNCF's options cost and keep** on
    OpenVINO: each setting's interior PSNR and SSIM change against fp32 on the test
    pairs, its quantising seconds and its ms per image at batch 1 (median of 3):
    NNCF's defaults on dgf's ONNX conversion, then native dilated convolutions with
    the output tail float, the mixed preset, the first and last convolution float,
    min-max and histogram ranges, the overflow fix, accuracy control (interior SSIM
    of the held-out crops, at most 0.002 lost) and the equalised copy (the default).

    .venv/bin/python benchmarks/bench_int8.py
    .venv/bin/python benchmarks/bench_int8.py --repeats 9 --batches 1 8
    .venv/bin/python benchmarks/bench_int8.py --options --count 64
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import nncf
import numpy as np
import openvino

from dgf import engines, predictor, quantize, runtime
from dgf.engines import onnx_conversion
from dgf.engines.openvino_engine import OpenVinoCall
from dgf.spec import InferenceSpec
from dgf.equalise import native_copy, prepared_copy
from dgf.host import cores, cpu_flags, cpu_model
from dgf.images import to_uint8, to_unit
from dgf.metrics import psnr, ssim
from dgf.schema import blurred_name, sharp_name
from dgf.weights import bundled_model

REPO = Path(__file__).resolve().parents[1]
_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
          "amx_tile", "amx_int8", "amx_bf16")


#: OpenVINO's compile settings for fp32 (dgf.engines.openvino_engine.HINTS).
F32 = {"INFERENCE_PRECISION_HINT": "f32"}


def _call(generator, precision: str, jit: str, engine: str = "tensorflow"):
    """The call a Predictor of ``generator`` runs with these settings."""
    spec = InferenceSpec(precision=precision, jit=jit, engine=engine)
    return predictor.Predictor(generator, spec).call()


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _paths(generator, crops: np.ndarray) -> tuple[dict, dict]:
    """fp32 paths of dgf, the reference ones outside it, and the int8 calls."""
    fp32 = {"tensorflow xla": _call(generator, "fp32", "on"),
            "tensorflow no xla": _call(generator, "fp32", "off"),
            "onnxruntime fp32": _call(generator, "fp32", "off", "onnxruntime"),
            "openvino fp32": _call(generator, "fp32", "off", "openvino")}
    copy = runtime.inference_model(generator, "fp32")
    native = quantize.onnx_model(prepared_copy(copy, crops))
    extra = {"openvino fp32, int8's conversion": OpenVinoCall(native, "bundled", F32)}
    if engines.engine("openvino").precision_reason("bf16") is None:
        extra["openvino bf16"] = _call(generator, "bf16", "off", "openvino")
    return fp32, extra


def _time(paths: dict, x: np.ndarray, repeats: int) -> dict[str, float]:
    """Median ms per image of each path on ``x``, interleaved rounds after a warm-up."""
    for call in paths.values():
        np.asarray(call(x))
    seconds = {name: [] for name in paths}
    for _ in range(repeats):
        for name, call in paths.items():
            start = time.perf_counter()
            np.asarray(call(x))
            seconds[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(s) / len(x) for name, s in seconds.items()}


def _deblur(call, blurred: np.ndarray) -> np.ndarray:
    return np.concatenate([to_uint8(call(to_unit(blurred[i:i + 8])))
                           for i in range(0, len(blurred), 8)])


def _scores(sharp: np.ndarray, out: np.ndarray) -> dict[str, float]:
    pairs = list(zip(sharp, out))
    return {"psnr8": np.mean([psnr(s, o, 8) for s, o in pairs]),
            "ssim8": np.mean([ssim(s, o, 8) for s, o in pairs]),
            "psnr": np.mean([psnr(s, o) for s, o in pairs]),
            "ssim": np.mean([ssim(s, o) for s, o in pairs])}


def _options(copy, crops: np.ndarray, held_out) -> dict[str, tuple]:
    """{setting: (ONNX bytes, a function of the OpenVINO model giving nncf.quantize's
    keyword arguments)}; the accuracy-control row gives its own quantiser."""
    content = onnx_conversion.content_digest(copy, predictor.model_layout(copy))
    plain = onnx_conversion.onnx_bytes(copy, content, "bundled", "openvino")[0]
    native = quantize.onnx_model(native_copy(copy))
    mixed = nncf.QuantizationPreset.MIXED
    sets = nncf.quantization.range_estimator.RangeEstimatorParametersSet

    def tail(model, *more):
        names = quantize._output_tail(model) + [n for n in more]
        return nncf.IgnoredScope(names=names, validate=False)

    def convs(model):
        found = [op.get_friendly_name() for op in model.get_ordered_ops()
                 if op.get_type_name() == "Convolution"]
        return found[0], found[-1]

    def advanced(**kw):
        return nncf.AdvancedQuantizationParameters(**kw)

    def validate(compiled, pairs):
        return float(np.mean([ssim(s, to_uint8(compiled(to_unit(b[None]))[0])[0], 8)
                              for b, s in pairs]))

    def accuracy_control(model, dataset):
        pairs = nncf.Dataset(list(zip(held_out.blurred, held_out.sharp)))
        return nncf.quantize_with_accuracy_control(
            model, dataset, pairs, validate, max_drop=0.002, preset=mixed,
            subset_size=len(crops), ignored_scope=tail(model))

    return {
        "NNCF defaults, dgf's ONNX conversion": (plain, lambda m: {}),
        "native dilations, output tail float": (native, lambda m: {"ignored_scope": tail(m)}),
        "  + mixed preset": (native, lambda m: {"ignored_scope": tail(m), "preset": mixed}),
        "  + first and last conv float": (
            native, lambda m: {"ignored_scope": tail(m, *convs(m)), "preset": mixed}),
        "  + min-max ranges": (native, lambda m: {"ignored_scope": tail(m), "preset": mixed,
            "advanced_parameters": advanced(activations_range_estimator_params=sets.MINMAX)}),
        "  + histogram ranges": (native, lambda m: {"ignored_scope": tail(m), "preset": mixed,
            "advanced_parameters": advanced(activations_range_estimator_params=sets.HISTOGRAM)}),
        "  + overflow fix on every layer": (native, lambda m: {
            "ignored_scope": tail(m), "preset": mixed,
            "advanced_parameters": advanced(overflow_fix=nncf.OverflowFix.ENABLE)}),
        "  + accuracy control (SSIM, 0.002)": (native, accuracy_control),
        "equalised, performance preset": (
            quantize.onnx_model(prepared_copy(copy, crops)),
            lambda m: {"ignored_scope": tail(m)}),
        "equalised, mixed preset (dgf's)": (None, None),
    }


def _sweep(generator, cal, blurred: np.ndarray, sharp: np.ndarray) -> None:
    """(e) of the module docstring."""
    copy = runtime.inference_model(generator, "fp32")
    crops = cal.calibration.blurred
    reference = None
    for name, (data, settings) in _options(copy, crops, cal.held_out).items():
        start = time.perf_counter()
        if data is None:
            files = quantize.quantize_files(copy, "openvino", crops)
            call = quantize.OpenVinoInt8Call(files)
        else:
            model = quantize._ov_core().read_model(data)
            dataset = nncf.Dataset(list(crops), lambda crop: to_unit(crop[None]))
            if settings.__name__ == "accuracy_control":
                model = settings(model, dataset)
            else:
                model = nncf.quantize(model, dataset, subset_size=len(crops), **settings(model))
            with tempfile.TemporaryDirectory() as folder:
                openvino.save_model(model, Path(folder) / "m.xml", compress_to_fp16=False)
                call = quantize.OpenVinoInt8Call(
                    {"xml": (Path(folder) / "m.xml").read_bytes(),
                     "bin": (Path(folder) / "m.bin").read_bytes()})
        seconds = time.perf_counter() - start
        if reference is None:
            fp32 = OpenVinoCall(data, "bundled", F32)
            reference = _scores(sharp, _deblur(fp32, blurred))
            print(f"  fp32: interior PSNR {reference['psnr8']:.3f} dB, SSIM "
                  f"{reference['ssim8']:.4f}")
        scores = _scores(sharp, _deblur(call, blurred))
        ms = _time({name: call}, to_unit(blurred[:1]), 3)[name]
        print(f"  {name:38s} PSNR {scores['psnr8'] - reference['psnr8']:+.3f} dB  SSIM "
              f"{scores['ssim8'] - reference['ssim8']:+.4f}  {seconds:6.1f} s  {ms:6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=bundled_model())
    parser.add_argument("--h5", type=Path, default=REPO / "data" / "pairs-small.h5")
    parser.add_argument("--calibration-split", default="train")
    parser.add_argument("--count", type=int, default=quantize.DEFAULT_COUNT)
    parser.add_argument("--side", type=int, default=quantize.DEFAULT_SIDE)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--ort-ops", default=",".join(quantize.ORT_OPS),
                        help="operators ONNX Runtime's quantiser quantises")
    parser.add_argument("--options", action="store_true",
                        help="measure NNCF's options on OpenVINO instead (e)")
    args = parser.parse_args()
    nncf.set_log_level(logging.ERROR)
    os.environ[quantize.calibration.CACHE_ENV] = tempfile.mkdtemp(prefix="dgf-bench-int8-")
    quantize.ORT_OPS = tuple(args.ort_ops.split(","))
    flags = cpu_flags()
    print(f"host: {cpu_model()}; {cores()} cores; flags "
          f"{' '.join(f for f in _FLAGS if f in flags) or 'none of ' + ', '.join(_FLAGS)}")
    print(f"load average before: {_load()}")
    generator = runtime.load_generator(args.model)
    cal = quantize.calibration_set(args.h5, count=args.count, side=args.side,
                                   split=args.calibration_split)
    print(f"calibration: {len(cal.calibration.blurred)} crops + {cal.held_out_count} held out, "
          f"{args.side} px, {args.calibration_split} split of {args.h5}")
    with h5py.File(args.h5, "r") as h5:
        blurred, sharp = h5[blurred_name("test")][:], h5[sharp_name("test")][:]
    if args.options:
        print(f"\nOpenVINO int8 settings on the {len(sharp)} test pairs (crop border 8): "
              f"change against fp32, quantising seconds, ms per image at batch 1")
        _sweep(generator, cal, blurred, sharp)
        print(f"load average after: {_load()}")
        return
    int8 = {}
    for engine in quantize.INT8_ENGINES:
        call, report = quantize.int8_call(generator, engine, cal, source=str(args.model))
        int8[f"{engine} int8"] = call
        print(f"  {report.text()}")
    fp32, extra = _paths(generator, cal.calibration.blurred)
    print(f"\nms per {blurred.shape[1]}x{blurred.shape[2]} image (median of {args.repeats} "
          f"interleaved rounds; ratio: speed-up over the fp32 of the engine / over the "
          f"fastest fp32 path of dgf)")
    for batch in args.batches:
        ms = _time({**fp32, **extra, **int8}, to_unit(blurred[:batch]), args.repeats)
        fastest = min(ms[name] for name in fp32)
        print(f" batch {batch}:")
        for name, value in ms.items():
            line = f"  {name:36s} {value:8.1f}"
            if name in int8:
                engine_fp32 = ms[name.replace("int8", "fp32")]
                line += f"   {engine_fp32 / value:4.2f}x / {fastest / value:4.2f}x"
            print(line)
    print(f"\nquality on the {len(sharp)} test pairs (scikit-image protocol; crop border 8 "
          f"and whole image)")
    for name, call in int8.items():
        reference = _scores(sharp, _deblur(fp32[name.replace("int8", "fp32")], blurred))
        scores = _scores(sharp, _deblur(call, blurred))
        print(f"  {name:18s} " + "  ".join(
            f"{k} {scores[k]:.4f} (fp32 {reference[k]:.4f}, {scores[k] - reference[k]:+.4f})"
            for k in scores))
    print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()
