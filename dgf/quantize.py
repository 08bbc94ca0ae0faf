"""Post-training static INT8 of the generator's folded fp32 copy, calibrated on real
images, for OpenVINO (NNCF) and ONNX Runtime (``quantize_static``).

:func:`int8_call` is the entry point: it returns a call with the float interface of
:mod:`dgf.engines`' calls ((B, H, W, 3) float32 in [-1, 1] in, the same out) and a
report (:class:`Int8Report`). The steps:

* **Calibration images** (:func:`calibration_set`): seeded random ``side`` x ``side``
  crops of blurred images, from the test split of an HDF5 pairs file (with the
  matching sharp crops) or from a folder of JPEG/PNG photos (no sharp crops). An
  image smaller than ``side`` is padded by mirroring its edge (``numpy.pad``
  ``symmetric``); an image exactly ``side`` x ``side`` gives one crop (more would be
  copies). The first images drawn (a sixth, at least 8) give one crop each to the
  held-out part, for the guard, so no held-out crop comes from an image the
  quantiser saw; the other crops are spread evenly over the next images.
* **The quantiser's copy** (:func:`dgf.equalise.prepared_copy`): the fp32 copy with
  native dilated convolutions and equalised channels, both exact in float. Without
  the equalisation the bundled model lost 0.046 dB PSNR and 0.0043 SSIM on its 64
  test pairs (crop border 8) at int8 on OpenVINO, with it 0.022 dB and 0.0013
  (``benchmarks/bench_int8.py --options``; docs/inference.md, INT8).
* **OpenVINO** (:func:`quantize_openvino`): ``nncf.quantize`` with the ``mixed``
  preset (asymmetric activations: LeakyReLU outputs are mostly positive), 8-bit
  per-channel weights, the output tail after the last convolution (the pixel
  shuffle, the residual addition, the clip) kept float. The model is saved as
  OpenVINO IR (xml + bin) and compiled per input shape with the f32 hint for the
  parts left float.
* **ONNX Runtime** (:func:`quantize_onnxruntime`): ``quantize_static`` in QDQ format
  on the convolutions, activations and concatenations (``ORT_OPS``; the output tail
  stays float), uint8 activations (moving-average min/max), int8 per-channel
  weights at 7 bits (``reduce_range``: on a CPU without VNNI its u8 x s8 products
  saturate 16-bit sums at 8 bits; measured 0.03 dB better on the AVX2 host).
* **The cache** (:func:`calibration.cache_dir`, ``int8/``): ``DIGEST.xml`` and
  ``DIGEST.bin`` (OpenVINO) or ``DIGEST.onnx`` (ONNX Runtime) and ``DIGEST.json``,
  keyed by the copy's content, the engine and its version (and NNCF's), TensorFlow,
  tf2onnx, the CPU, the calibration set's digest, count, seed and side, and
  ``VERSION``. Written after quantising finished, files first and the record last,
  each atomically: an interrupted quantisation leaves nothing, a damaged entry is
  quantised again with a one-line note.
* **The guard** (:func:`check_int8`): both calls run the held-out crops; with sharp
  crops, int8 may lose at most ``MAX_DROP`` dB of interior PSNR (crop border 8)
  against fp32; without, the int8 output must agree with fp32's at
  ``MIN_AGREEMENT_DB`` or more. A failure is a DgfError with the numbers; the
  record keeps them, so a cached failure fails at once.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import io
import json
import logging
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from dgf import calibration, runtime
from dgf.engines import onnx_conversion
from dgf.equalise import prepared_copy
from dgf.errors import DgfError, first_line, install_hint, source_checkout
from dgf.images import DECODE_ERRORS, find_images, read_rgb, to_uint8, to_unit
from dgf.metadata import read_metadata
from dgf.metrics import mean_psnr, psnr
from dgf.optional import Lazy
from dgf.options import (
    DEFAULT_CALIBRATION_COUNT, DEFAULT_CALIBRATION_SIDE, ENGINE_EXTRAS, ENGINE_TABLE, engine_row,
)
from dgf.schema import blurred_name, check_split, open_pairs_file, sharp_name

# Optional (extras onnx, openvino), imported on first use (dgf.optional); what is
# missing is said when int8 is asked for.
tf2onnx, openvino, onnxruntime = (Lazy(name) for name in ("tf2onnx", "openvino", "onnxruntime"))
_MISSING: dict[str, str] = {
    name: f"ModuleNotFoundError: No module named '{name}'"
    for name in ("tf2onnx", "openvino", "nncf", "onnxruntime")
    if importlib.util.find_spec(name) is None}


def _heavy(name: str):
    """NNCF and ONNX Runtime's quantisation tools, imported when int8 first needs them:
    at the top they cost every command about 1.5 s and 2 s of start-up (measured on the
    AVX2 host), and only int8 uses them."""
    return importlib.import_module(name)

#: Bumped when what the quantisers write changes; old cache entries then miss.
VERSION = 1
#: The engines that run an int8 copy.
INT8_ENGINES = tuple(row.name for row in ENGINE_TABLE if "int8" in row.precisions)
#: What each needs besides tf2onnx, by module name.
_NEEDS = {"openvino": ("openvino", "nncf"), "onnxruntime": ("onnxruntime",)}
#: Most interior PSNR (dB) int8 may lose against fp32 on the held-out sharp crops.
MAX_DROP = 0.15
#: Least interior PSNR (dB) of int8's output against fp32's without sharp crops: an
#: independent error at A dB lowers a PSNR of P dB by 10 log10(1 + 10^((P - A) / 10)),
#: 0.15 dB when A = P + 14.6; P is 25.6 dB for the bundled model (crop border 8).
MIN_AGREEMENT_DB = 40.0
#: Pixels left out at each side when the guard scores (BasicSR's crop_border).
CROP_BORDER = 8
DEFAULT_COUNT = DEFAULT_CALIBRATION_COUNT
DEFAULT_SIDE = DEFAULT_CALIBRATION_SIDE
#: Least images a calibration folder must hold (readable).
MIN_IMAGES = 16
#: Images held out for the guard: a sixth of those drawn, at least this many.
MIN_HELD_OUT = 8
#: The ONNX opset of the quantiser's conversion (as dgf.engines').
OPSET = onnx_conversion.OPSET
#: Operators ``quantize_static`` quantises: with the activations and concatenations in
#: int8 too, 1.2-1.3x faster than the convolutions alone, same PSNR and SSIM (bundled
#: model, AVX2 host).
ORT_OPS = ("Conv", "LeakyRelu", "Concat")
_SUFFIXES = {"openvino": ("xml", "bin"), "onnxruntime": ("onnx",)}


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


# --- calibration images -------------------------------------------------------------------
@dataclass(frozen=True)
class Crops:
    """uint8 crops (N, side, side, 3): blurred, and the matching sharp ones or None."""

    blurred: np.ndarray
    sharp: np.ndarray | None


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration crops: the first ``len - held_out_count`` feed the quantiser, the
    rest (from images the quantiser never sees) the guard. ``digest`` covers the
    crops and the split between the parts."""

    source: str
    blurred: np.ndarray
    sharp: np.ndarray | None
    held_out_count: int
    digest: str
    count: int
    side: int
    seed: int

    def _part(self, part: slice) -> Crops:
        return Crops(self.blurred[part], None if self.sharp is None else self.sharp[part])

    @property
    def calibration(self) -> Crops:
        return self._part(slice(0, len(self.blurred) - self.held_out_count))

    @property
    def held_out(self) -> Crops:
        return self._part(slice(len(self.blurred) - self.held_out_count, None))


def _padded(image: np.ndarray, side: int) -> np.ndarray:
    pad_h, pad_w = max(0, side - image.shape[0]), max(0, side - image.shape[1])
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
    return image


def _crops_of(images: tuple, quota: int, side: int, rng: np.random.Generator) -> list[tuple]:
    """``quota`` random crops (one when the image has no room to move) of ``images``
    (a blurred image and its sharp partner or None, padded to at least ``side``)."""
    images = tuple(None if im is None else _padded(im, side) for im in images)
    height, width = images[0].shape[:2]
    if height == side and width == side:
        quota = 1
    out = []
    for _ in range(quota):
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        out.append(tuple(None if im is None else im[top:top + side, left:left + side]
                         for im in images))
    return out


def _draw(loaders: list[Callable[[], tuple | None]], count: int, side: int,
          seed: int) -> tuple[list[tuple], list[tuple], int]:
    """Crops of images drawn in a seeded order (a loader returning None is an
    unreadable image, skipped): one from each of the first ``held`` images (the
    held-out part), the rest of ``count`` spread over the next images. Returns the
    calibration crops, the held-out crops and how many images were unreadable."""
    rng = np.random.default_rng(seed)
    wanted = min(len(loaders), count)
    held = max(MIN_HELD_OUT, math.ceil(wanted / 6))
    spread = max(1, wanted - held)
    crops: list[tuple] = []
    held_out: list[tuple] = []
    used = failed = 0
    for index in rng.permutation(len(loaders)):
        if used == wanted:
            break
        images = loaders[int(index)]()
        if images is None:
            failed += 1
            continue
        if used < held:
            held_out.extend(_crops_of(images, 1, side, rng))
        else:
            rank = used - held
            quota = (count - held) // spread + (1 if rank < (count - held) % spread else 0)
            crops.extend(_crops_of(images, max(1, quota), side, rng))
        used += 1
    return crops, held_out, failed


def _assemble(crops: list[tuple], held_out: list[tuple], source: str, count: int,
              side: int, seed: int) -> CalibrationSet:
    every = crops + held_out
    blurred = np.stack([c[0] for c in every])
    sharp = None if every[0][1] is None else np.stack([c[1] for c in every])
    digest = hashlib.sha256(f"crops {blurred.shape} held {len(held_out)};".encode())
    digest.update(blurred.tobytes())
    digest.update(b"none" if sharp is None else sharp.tobytes())
    return CalibrationSet(source, blurred, sharp, len(held_out), digest.hexdigest(),
                          count, side, seed)


def _folder_set(folder: Path, count: int, side: int, seed: int) -> CalibrationSet:
    files = find_images(folder)
    if len(files) < MIN_IMAGES:
        raise DgfError(f"calibration folder {folder} holds {len(files)} JPEG/PNG image(s); "
                       f"int8 calibration needs at least {MIN_IMAGES} blurred photos")

    def loader(path: Path) -> Callable[[], tuple | None]:
        def load() -> tuple | None:
            try:
                return read_rgb(path), None
            except DECODE_ERRORS:
                return None
        return load

    crops, held_out, failed = _draw([loader(p) for p in files], count, side, seed)
    if len(files) - failed < MIN_IMAGES:
        raise DgfError(f"calibration folder {folder} holds {len(files) - failed} readable "
                       f"image(s) ({failed} of {len(files)} could not be read); int8 "
                       f"calibration needs at least {MIN_IMAGES} blurred photos")
    return _assemble(crops, held_out, str(folder), count, side, seed)


def _h5_set(path: Path, split: str, count: int, side: int, seed: int) -> CalibrationSet:
    h5 = open_pairs_file(path)
    with h5:
        info = check_split(h5, split, path)
        if info.count < MIN_IMAGES:
            raise DgfError(f"{path}: its {split} split holds {info.count} pair(s); int8 "
                           f"calibration needs at least {MIN_IMAGES}")
        blurred, sharp = h5[blurred_name(split)], h5[sharp_name(split)]
        loaders = [lambda i=i: (blurred[i], sharp[i]) for i in range(info.count)]
        crops, held_out, _ = _draw(loaders, count, side, seed)
    return _assemble(crops, held_out, str(path), count, side, seed)


def calibration_set(source: Path | str, *, count: int = DEFAULT_COUNT,
                    side: int = DEFAULT_SIDE, seed: int = 0,
                    split: str = "test") -> CalibrationSet:
    """Up to ``count`` seeded random ``side`` x ``side`` crops of the blurred images of
    ``source``: an HDF5 pairs file (its ``split``, with the sharp crops) or a folder
    of JPEG/PNG photos (searched recursively; unreadable files are skipped)."""
    if count < 2 * MIN_HELD_OUT or side < 16:
        raise DgfError(f"calibration needs at least {2 * MIN_HELD_OUT} crops of at least "
                       f"16 px; got {count} crops of {side} px")
    path = Path(source)
    if not path.exists():
        raise DgfError(f"calibration source {path} does not exist; pass --calibration "
                       f"an HDF5 pairs file (build-hdf5) or a folder of blurred JPEG/PNG photos")
    if path.is_dir():
        return _folder_set(path, count, side, seed)
    return _h5_set(path, split, count, side, seed)


def default_calibration_source(model_path: Path | str) -> Path:
    """The training HDF5 file the model's record names, where it exists (as written,
    beside the model, or in the source checkout); else DgfError asking for
    ``--calibration``."""
    model_path = Path(model_path)
    named = ((read_metadata(model_path) or {}).get("data") or {}).get("h5")
    hint = ("pass --calibration H5|DIR: an HDF5 pairs file (its test split is used) or a "
            f"folder of at least {MIN_IMAGES} blurred JPEG/PNG photos like those to deblur")
    if not isinstance(named, str) or not named:
        raise DgfError(f"{model_path} records no training HDF5 file to calibrate int8 on; {hint}")
    root = source_checkout()
    places = [Path(named), model_path.parent / named] + ([root / named] if root else [])
    for place in places:
        if place.is_file():
            return place
    raise DgfError(f"the training file {named} that {model_path} records is not here "
                   f"(looked in {', '.join(str(p) for p in places)}); {hint}")


def onnx_model(model) -> bytes:
    """``model`` converted as the engines convert it (:func:`dgf.engines.onnx_conversion.
    float_onnx`); DgfError when it cannot be converted for int8."""
    try:
        return onnx_conversion.float_onnx(model)
    except Exception as exc:  # tf2onnx raises many types for an op it cannot map
        raise DgfError(f"the generator cannot be converted for int8 "
                       f"({type(exc).__name__}: {first_line(exc)})") from exc


# --- the quantisers and their calls -------------------------------------------------------
def check_int8_engine(engine: str) -> None:
    """DgfError unless ``engine`` can run int8 here (naming the extra to install)."""
    if engine not in INT8_ENGINES:
        raise DgfError(f"int8 runs on --engine {' or '.join(INT8_ENGINES)}; got {engine!r}")
    for module in ("tf2onnx", *_NEEDS[engine]):
        if module in _MISSING:
            raise DgfError(f"int8 on --engine {engine} needs {module}, which is not installed "
                           f"({_MISSING[module]}); install it with "
                           f"{install_hint(ENGINE_EXTRAS[engine])}")


_OV_CORE: list[Any] = []


def _ov_core():
    if not _OV_CORE:
        _OV_CORE.append(openvino.Core())
    return _OV_CORE[0]


def _output_tail(model) -> list[str]:
    """Names of the OpenVINO operations fed by the last convolution, up to the output."""
    convs = [op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    tail, todo = [], [convs[-1]] if convs else []
    while todo:
        for target in todo.pop().output(0).get_target_inputs():
            node = target.get_node()
            if node.get_type_name() != "Result" and node.get_friendly_name() not in tail:
                tail.append(node.get_friendly_name())
                todo.append(node)
    return tail


def quantize_openvino(data: bytes, crops: np.ndarray) -> dict[str, bytes]:
    """NNCF's int8 of the ONNX model ``data`` calibrated on uint8 ``crops``, as IR
    files ``{"xml": ..., "bin": ...}``."""
    model = _ov_core().read_model(data)
    nncf = _heavy("nncf")
    dataset = nncf.Dataset(list(crops), lambda crop: to_unit(crop[None]))
    level = nncf.common.logging.nncf_logger.level
    nncf.set_log_level(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its progress bars
            quantized = nncf.quantize(
                model, dataset, subset_size=len(crops), preset=nncf.QuantizationPreset.MIXED,
                ignored_scope=nncf.IgnoredScope(names=_output_tail(model), validate=False))
    finally:
        nncf.set_log_level(level)
    with tempfile.TemporaryDirectory(prefix="dgf-int8-") as folder:
        xml = Path(folder) / "model.xml"
        openvino.save_model(quantized, xml, compress_to_fp16=False)
        return {"xml": xml.read_bytes(), "bin": xml.with_suffix(".bin").read_bytes()}


class _Reader:
    """Batches of 8 calibration samples for ``quantize_static`` (the interface of
    ``onnxruntime.quantization.CalibrationDataReader``: ``get_next``, None at the end)."""

    def __init__(self, name: str, samples: np.ndarray) -> None:
        self.name, self.samples, self.start = name, samples, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= len(self.samples):
            return None
        self.start += 8
        return {self.name: self.samples[self.start - 8:self.start]}


def quantize_onnxruntime(data: bytes, samples: np.ndarray) -> bytes:
    """ONNX Runtime's QDQ int8 of the ONNX model ``data``, calibrated on ``samples``
    (in the model's input type and range)."""
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    reader = _Reader(session.get_inputs()[0].name, samples)
    with tempfile.TemporaryDirectory(prefix="dgf-int8-") as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(data)
        ort_quantization = _heavy("onnxruntime.quantization")
        ort_quantization.quantize_static(
            source, target, reader, quant_format=ort_quantization.QuantFormat.QDQ,
            op_types_to_quantize=list(ORT_OPS), per_channel=True, reduce_range=True,
            activation_type=ort_quantization.QuantType.QUInt8,
            weight_type=ort_quantization.QuantType.QInt8,
            extra_options={"CalibMovingAverage": True})
        return target.read_bytes()


class OpenVinoInt8Call:
    """OpenVINO's CPU plugin on an NNCF int8 model, compiled per image shape (the
    parts left float at f32): float32 in, float32 out. A batch runs one image at a
    time: 36 ms per 256x256 image against 58 ms in batches of 8 on the AVX2 host
    (benchmarks/bench_int8.py; the batch's activations outgrow the caches)."""

    engine = "openvino"
    description = f"{engine_row('openvino').words}, int8 (NNCF)"

    def __init__(self, files: dict[str, bytes]) -> None:
        weights = openvino.Tensor(np.frombuffer(files["bin"], dtype=np.uint8).copy())
        self.model = _ov_core().read_model(files["xml"].decode("utf-8"), weights)
        self.compiled: dict[tuple[int, ...], Any] = {}

    def __call__(self, x) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        shape = (1, *(int(s) for s in x.shape[1:]))
        if shape not in self.compiled:
            model = self.model.clone()
            model.reshape(list(shape))
            compiled = _ov_core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            self.compiled[shape] = (compiled, compiled.create_infer_request())
        compiled, request = self.compiled[shape]
        return np.concatenate([np.array(request.infer({0: x[i:i + 1]})[compiled.output(0)],
                                        dtype=np.float32) for i in range(len(x))])


class OnnxRuntimeInt8Call:
    """ONNX Runtime's CPU session of a QDQ int8 model: float32 in, float32 out."""

    engine = "onnxruntime"
    description = f"{engine_row('onnxruntime').words}, int8 (QDQ)"

    def __init__(self, files: dict[str, bytes]) -> None:
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(files["onnx"], options,
                                                    providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run(None, {self.input: x})[0]


_CALLS = {"openvino": OpenVinoInt8Call, "onnxruntime": OnnxRuntimeInt8Call}


def quantize_files(copy, engine: str, crops: np.ndarray) -> dict[str, bytes]:
    """The int8 files of the fp32 folded ``copy`` for ``engine``, calibrated on
    uint8 ``crops``: the prepared copy (:func:`prepared_copy`) converted to ONNX and
    quantised."""
    data = onnx_model(prepared_copy(copy, crops))
    if engine == "openvino":
        return quantize_openvino(data, crops)
    return {"onnx": quantize_onnxruntime(data, to_unit(crops))}


# --- the guard ----------------------------------------------------------------------------
@dataclass(frozen=True)
class GuardResult:
    """Interior PSNR (crop border ``CROP_BORDER``) on ``crops`` held-out crops.
    ``reference`` "sharp": ``fp32_psnr`` and ``int8_psnr`` against the sharp crops;
    "fp32": ``int8_psnr`` of int8's output against fp32's (``fp32_psnr`` None)."""

    reference: str
    fp32_psnr: float | None
    int8_psnr: float
    crops: int

    @property
    def drop(self) -> float | None:
        return None if self.fp32_psnr is None else self.fp32_psnr - self.int8_psnr

    @property
    def passed(self) -> bool:
        if self.reference == "fp32":
            return self.int8_psnr >= MIN_AGREEMENT_DB
        return self.drop <= MAX_DROP

    def text(self) -> str:
        if self.reference == "fp32":
            return (f"int8 output agrees with fp32 at {self.int8_psnr:.2f} dB interior PSNR "
                    f"(crop border {CROP_BORDER}) on {self.crops} held-out crops")
        return (f"interior PSNR (crop border {CROP_BORDER}) on {self.crops} held-out crops: "
                f"fp32 {self.fp32_psnr:.3f} dB, int8 {self.int8_psnr:.3f} dB "
                f"(drop {self.drop:.3f} dB)")


def _run(call: Callable, blurred: np.ndarray) -> np.ndarray:
    return np.concatenate([to_uint8(call(to_unit(blurred[i:i + 1])))
                           for i in range(len(blurred))])


def guard_scores(fp32_call: Callable, int8_call: Callable, held_out: Crops) -> GuardResult:
    """Both calls scored on the ``held_out`` crops (:class:`GuardResult`)."""
    fp32, int8 = _run(fp32_call, held_out.blurred), _run(int8_call, held_out.blurred)
    pairs = range(len(fp32))
    if held_out.sharp is None:
        agreement = mean_psnr([psnr(fp32[i], int8[i], CROP_BORDER) for i in pairs])
        return GuardResult("fp32", None, agreement, len(fp32))
    return GuardResult(
        "sharp", mean_psnr([psnr(held_out.sharp[i], fp32[i], CROP_BORDER) for i in pairs]),
        mean_psnr([psnr(held_out.sharp[i], int8[i], CROP_BORDER) for i in pairs]), len(fp32))


#: What a refusal advises by default (the inference commands' choices).
ADVICE = "use --precision bf16 or --precision fp32"


def verdict(result: GuardResult, advice: str = ADVICE) -> GuardResult:
    """``result``, or DgfError with its numbers and ``advice`` when int8 fell short."""
    if not result.passed:
        need = (f"at least {MIN_AGREEMENT_DB} dB" if result.reference == "fp32"
                else f"a drop of at most {MAX_DROP} dB")
        raise DgfError(f"int8 is not close enough to fp32 for this model: {result.text()}; "
                       f"it needs {need}. Instead, {advice}")
    return result


def check_int8(fp32_call: Callable, int8_call: Callable, held_out: Crops,
               advice: str = ADVICE) -> GuardResult:
    """:func:`guard_scores`, and DgfError with the numbers when int8 fell short."""
    return verdict(guard_scores(fp32_call, int8_call, held_out), advice)


# --- the cache ----------------------------------------------------------------------------
def cache_key(content: str, engine: str, cal: CalibrationSet) -> dict[str, Any]:
    """What an int8 copy depends on (module docstring)."""
    versions = ({"openvino": openvino.__version__, "nncf": _heavy("nncf").__version__}
                if engine == "openvino" else {"onnxruntime": onnxruntime.__version__})
    cpu = calibration.cpu_description()
    return {"version": VERSION, "content": content, "engine": engine, **versions,
            "tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__, "opset": OPSET,
            "cpu": cpu["model"], "cpu_flags": " ".join(cpu["flags"]),
            "calibration": cal.digest, "count": cal.count, "seed": cal.seed, "side": cal.side}


def _entry(key: dict[str, Any]) -> tuple[Path, str]:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return calibration.cache_dir() / "int8", digest


def read_entry(key: dict[str, Any], suffixes: tuple[str, ...]) -> tuple[dict, dict] | None:
    """The cached files ``{suffix: bytes}`` of ``key`` and its record, or None (with a
    note when the entry is damaged or stale)."""
    folder, digest = _entry(key)
    record_path = folder / f"{digest}.json"
    paths = {suffix: folder / f"{digest}.{suffix}" for suffix in suffixes}
    if not record_path.exists() and not any(p.exists() for p in paths.values()):
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or record.get("key") != key:
            raise ValueError("it was written for another model or quantiser")
        files = {suffix: path.read_bytes() for suffix, path in paths.items()}
        for suffix, data in files.items():
            if record["files"][suffix] != {"size": len(data),
                                           "sha256": hashlib.sha256(data).hexdigest()}:
                raise ValueError(f"{paths[suffix].name} does not match its record")
        GuardResult(**record["guard"])
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
        _note(f"int8 cache entry {record_path} is damaged or stale ({exc}); quantising again")
        return None
    return files, record


def write_entry(key: dict[str, Any], files: dict[str, bytes], extra: dict[str, Any]) -> None:
    """Store files and their record (written last), each atomically; a note when the
    cache folder cannot be written."""
    folder, digest = _entry(key)
    record = {"key": key, **extra, "files": {
        suffix: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for suffix, data in files.items()}}
    calibration.store(folder, {f"{digest}.{suffix}": data for suffix, data in files.items()},
                      f"{digest}.json", record, "the int8 model", "quantises again")


# --- the entry point ----------------------------------------------------------------------
@dataclass(frozen=True)
class Int8Report:
    """What :func:`int8_call` did: seconds spent quantising (0 from the cache)."""

    engine: str
    seconds: float
    cached: bool
    guard: GuardResult

    def text(self) -> str:
        how = "from the cache" if self.cached else f"quantised in {self.seconds:.1f} s"
        return f"int8 on {engine_row(self.engine).words} ({how}); {self.guard.text()}"


def int8_call(generator, engine: str, calibration_set: CalibrationSet, *,
              source: str) -> tuple[Callable, Int8Report]:
    """The int8 call of ``generator``'s folded fp32 copy on ``engine`` ("openvino" or
    "onnxruntime"), float interface, from the cache or quantised on
    ``calibration_set`` and stored; and its :class:`Int8Report`. DgfError when the
    engine cannot run int8 here or the guard refuses (``source`` names the model)."""
    check_int8_engine(engine)
    copy = runtime.inference_model(generator, "fp32")
    layout = calibration.layout_key(
        [(type(layer).__name__, layer.get_config()) for layer in copy.layers])
    content = onnx_conversion.content_digest(copy, layout)
    key = cache_key(content, engine, calibration_set)
    cached = read_entry(key, _SUFFIXES[engine])
    if cached is not None:
        files, record = cached
        guard = verdict(GuardResult(**record["guard"]))
        return _CALLS[engine](files), Int8Report(engine, 0.0, True, guard)
    crops = calibration_set.calibration.blurred
    _note(f"quantising {source} to int8 for {engine_row(engine).words} on {len(crops)} "
          f"calibration crops (once per model and calibration set; cached)")
    start = time.perf_counter()
    files = quantize_files(copy, engine, crops)
    seconds = time.perf_counter() - start
    call = _CALLS[engine](files)
    # The reference: the same fp32 copy in TensorFlow (every fp32 path agrees within 1e-4).
    guard = guard_scores(runtime.compiled_generator(copy), call, calibration_set.held_out)
    write_entry(key, files, {"seconds": round(seconds, 3), "guard": asdict(guard)})
    return call, Int8Report(engine, seconds, False, verdict(guard))


def prepared(model, engine: str) -> tuple[Callable, float]:
    """What an int8 engine's ``prepare`` returns (:class:`dgf.engines.base.Engine`):
    :func:`int8_call` of ``model`` (a :class:`dgf.predictor.Predictor`) on its
    calibration images, with the report said on stderr, and the seconds quantising."""
    call, report = int8_call(model.generator, engine, model.calibration(), source=model.source)
    _note(report.text())
    return call, report.seconds
