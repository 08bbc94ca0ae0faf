"""Export a trained generator for serving: TensorFlow SavedModel, TFLite or ONNX.

Both exports take uint8 images and return uint8 images; the conversions of
``dgf.images`` (``x / 127.5 - 1`` in, ``clip(rint((y + 1) * 127.5))`` out) run inside
the graph, so a client needs no knowledge of the model's [-1, 1] range.

SavedModel: signature ``serving_default`` with one input ``images``, a batch
``(B, H, W, 3) uint8`` of any B, H and W (add a leading axis for a single image),
and one output ``deblurred`` of the same shape and dtype.

TFLite: the same function with input ``(1, H, W, 3) uint8``. H and W are dynamic
unless ``input_size`` is given: call ``interpreter.resize_tensor_input(idx,
[1, H, W, 3])`` then ``allocate_tensors()`` before each new size. Only builtin
TFLite ops are used (CAST, CONV_2D with dilation, ROUND, ...).

ONNX (the ``onnx`` extra: tf2onnx): the SavedModel's function at opset ``ONNX_OPSET``,
input ``images`` (B, H, W, 3) uint8 with B, H and W dynamic, output ``deblurred``
of the same shape, uint8; the conversions are nodes of the graph (Cast, Div, Sub,
Round, Clip). Any ONNX runtime runs it (onnxruntime, OpenVINO).

**INT8** (``quantize="int8"``, TFLite and ONNX; :mod:`dgf.quantize`): post-training
static quantisation calibrated on real crops (:func:`dgf.quantize.calibration_set`),
of the quantisers' copy (:func:`dgf.equalise.prepared_copy`: native dilated
convolutions, equalised channels). The interface stays the same, uint8 in and out:
TFLite is full-integer (every builtin op int8; only the input's and output's
conversions, CAST/QUANTIZE and DEQUANTIZE/ROUND/CAST, are float), ONNX is
ONNX Runtime's QDQ on the convolutions (``quantize_static``, as ``--engine
onnxruntime`` runs it). Before the file is written, the quantised export and the fp32
copy run the held-out crops: int8 more than ``MAX_DROP`` dB below fp32 is refused
(:func:`dgf.quantize.check_int8`). An int8 TFLite export keeps H and W dynamic: with
a fixed ``input_size`` the converter's int8 is wrong (``_FIXED_INT8``), so it is refused.

All three export the generator's inference copy (:func:`dgf.runtime.fold_batchnorm`):
BatchNorm folded into the convolutions, Dropout removed, the dense field's
activations taken once per part, the graph ``dgf-deblur`` runs. The TFLite converter
folds BatchNorm on its own too, but a SavedModel keeps the model's variables, so
its graph would otherwise normalise every BatchNorm at serving time. Outputs differ
from the Keras model by float round-off, which can move a pixel by a uint8 level or
two.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from dgf.quantize import (CalibrationSet, Crops, calibration_set, check_int8,
                          default_calibration_source, quantize_onnxruntime)
from dgf.equalise import prepared_copy
from dgf.errors import DgfError, install_hint
from dgf.fileio import check_output, write_bytes_atomic, write_folder_atomic
from dgf.images import to_uint8, to_unit
from dgf.options import EXPORT_FORMATS
from dgf.runtime import fold_batchnorm, inference_model, load_generator

try:  # optional (extra onnx): only --format onnx needs it
    import tf2onnx
except ImportError as _exc:
    tf2onnx = None
    _TF2ONNX_MISSING = str(_exc)
try:  # optional (extra test): LiteRT runs the int8 TFLite file for its check
    from ai_edge_litert.interpreter import Interpreter as _LiteRT
except ImportError:
    _LiteRT = None
try:  # optional (extra onnx): runs the int8 ONNX file for its check
    import onnxruntime
except ImportError:
    onnxruntime = None
INPUT_NAME = "images"
OUTPUT_NAME = "deblurred"
#: The ONNX opset of ``--format onnx``: 17 is read by onnxruntime >= 1.11 and OpenVINO.
ONNX_OPSET = 17
#: The extra that installs tf2onnx for ``--format onnx``.
ONNX_EXTRA = "onnx"
#: ``--quantize`` choices, and the formats that take it.
QUANTIZE_CHOICES = ("int8",)
QUANTIZE_FORMATS = ("tflite", "onnx")
# TensorFlow 2.21's converter folds the fixed-size graph's output arithmetic into int8
# wrongly: 16 dB from fp32 where the same model with a dynamic size keeps 49 dB.
_FIXED_INT8 = ("--quantize int8 takes no --input-size: TFLite's full-integer conversion of "
               "a fixed-size generator is wrong (16 dB from fp32, measured with TensorFlow "
               "2.21); export int8 with a dynamic size (resize_tensor_input at inference)")


def _serving_fn(generator):
    """A function (B, H, W, 3) uint8 → (B, H, W, 3) uint8 around ``generator``."""
    def deblur(images):
        x = tf.cast(images, tf.float32) / 127.5 - 1.0
        y = generator(x, training=False)
        y = tf.clip_by_value(tf.round((y + 1.0) * 127.5), 0.0, 255.0)
        # tf.round rounds half to even, as np.rint does in dgf.images.to_uint8.
        return {OUTPUT_NAME: tf.cast(y, tf.uint8)}

    return deblur


# A TFLite flatbuffer carries this file identifier at bytes 4-8.
_TFLITE_MAGIC = b"TFL3"


def _check_target(path: Path, fmt: str, overwrite: bool) -> None:
    """Refuse an output that exists (without ``overwrite``), or that is not an
    earlier export of the same format: --overwrite replaces exports, nothing else."""
    if not (path.parent.exists() or path.parent.is_symlink()):
        raise DgfError(f"folder {path.parent} for the export does not exist.")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise DgfError(f"{path} already exists; pass --overwrite to replace it.")
        if fmt == "savedmodel":
            if not path.is_dir():
                raise DgfError(
                    f"{path} is a file, not a SavedModel folder; --overwrite replaces only "
                    f"an earlier SavedModel export. Choose another -o."
                )
            if any(path.iterdir()) and not (path / "saved_model.pb").is_file():
                raise DgfError(
                    f"{path} is a folder that holds no SavedModel (no saved_model.pb); "
                    f"--overwrite replaces only an earlier export or an empty folder. "
                    f"Choose another -o."
                )
        elif path.is_dir():
            raise DgfError(f"{path} is a folder; give the .{fmt} file to write.")
        elif not _is_export(path, fmt):
            word = {"tflite": "a TFLite", "onnx": "an ONNX"}[fmt]
            raise DgfError(
                f"{path} is not {word} file; --overwrite replaces only an earlier "
                f"{word.split()[1]} export. Choose another -o."
            )
    check_output(path)


def _is_export(path: Path, fmt: str) -> bool:
    """Whether the file ``path`` is an earlier ``fmt`` export (TFLite's identifier, or
    an ONNX model that names its producer)."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if fmt == "tflite":
        return head[4:8] == _TFLITE_MAGIC
    # An ONNX ModelProto starts with ir_version (field 1, varint: 0x08) and names
    # its producer (field 2) early; tf2onnx writes "tf2onnx", an int8 export
    # "onnx.quantize" (ONNX Runtime's quantiser).
    return head[:1] == b"\x08" and (b"tf2onnx" in head[:64] or b"onnx.quantize" in head[:64])


def export_savedmodel(generator, path: Path | str, *, overwrite: bool = False) -> Path:
    """Write ``generator`` as a SavedModel folder with a uint8 ``serving_default``.

    Args:
        generator: functional Keras model, (B, H, W, 3) float32 in [-1, 1] → same;
            its BatchNorm-folded copy is exported, ``generator`` is not modified.
        path: folder to create; replaced only with ``overwrite``.

    Returns:
        The SavedModel path.
    """
    path = Path(path)
    _check_target(path, "savedmodel", overwrite)
    folded = fold_batchnorm(generator)
    archive = keras.export.ExportArchive()
    archive.track(folded)
    archive.add_endpoint(
        name="serving_default",
        fn=_serving_fn(folded),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_NAME)],
    )
    write_folder_atomic(path, lambda tmp: archive.write_out(str(tmp), verbose=False))
    return path


def export_tflite(
    generator,
    path: Path | str,
    *,
    input_size: tuple[int, int] | None = None,
    overwrite: bool = False,
    calibration: CalibrationSet | None = None,
) -> Path:
    """Write ``generator`` as a ``.tflite`` file taking (1, H, W, 3) uint8.

    Args:
        generator: functional Keras model, (B, H, W, 3) float32 in [-1, 1] → same;
            its BatchNorm-folded copy is exported, ``generator`` is not modified.
        path: file to create; replaced only with ``overwrite``.
        input_size: (H, W) to fix the input shape; None keeps H and W dynamic
            (resize the input tensor at inference).
        calibration: crops for a full-integer int8 export (module docstring);
            None exports float.

    Returns:
        The .tflite path. DgfError when int8 loses too much on the held-out crops.
    """
    path = Path(path)
    _check_target(path, "tflite", overwrite)
    if input_size is not None:
        height, width = input_size
        if height < 1 or width < 1:
            raise DgfError(f"input size {height}x{width} must be positive.")
        shape = [1, height, width, 3]
    else:
        shape = [1, None, None, 3]
    # Converting from a SavedModel freezes the Keras variables into constants; a
    # concrete function would keep them as TFLite resource variables that read back
    # uninitialised.
    folded = fold_batchnorm(generator)
    if calibration is not None:
        if input_size is not None:
            raise DgfError(_FIXED_INT8)
        folded = prepared_copy(folded, calibration.calibration.blurred)
    with tempfile.TemporaryDirectory(prefix="dgf-tflite-") as staging:
        archive = keras.export.ExportArchive()
        archive.track(folded)
        archive.add_endpoint(
            name="serving_default",
            fn=_serving_fn(folded),
            input_signature=[tf.TensorSpec(shape, tf.uint8, name=INPUT_NAME)],
        )
        archive.write_out(staging, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(staging)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if calibration is not None:
            _full_integer(converter, calibration.calibration.blurred)
        try:
            flatbuffer = converter.convert()
        except Exception as exc:  # the converter raises ConverterError and plain errors
            raise DgfError(f"TFLite conversion failed: {exc}") from exc
    if calibration is not None:
        _check_export(generator, _tflite_runner(flatbuffer), calibration.held_out)
    write_bytes_atomic(path, flatbuffer)
    return path


# --- int8 -------------------------------------------------------------------------------
def _full_integer(converter, crops: np.ndarray) -> None:
    """Make ``converter`` write a full-integer model calibrated on uint8 ``crops``;
    the uint8 input and output stay the file's interface. A ramp from 0 to 255 joins
    the crops: TFLite quantises the image itself (the residual addition is int8
    too) on the range it saw, which must be every level, or pixels darker or
    brighter than the calibration crops would be clipped (up to 38 levels on a test
    model calibrated on crops spanning 32-222)."""
    ramp = np.broadcast_to(np.linspace(0, 255, crops.shape[2]).round().astype(np.uint8)[
        None, :, None], crops.shape[1:])
    samples = [*crops, ramp]
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([sample[None]] for sample in samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8


def _tflite_runner(flatbuffer: bytes):
    """A function (1, H, W, 3) uint8 -> uint8 running the TFLite model (LiteRT, or
    TensorFlow's deprecated interpreter where LiteRT is not installed)."""
    if _LiteRT is not None:
        interpreter = _LiteRT(model_content=flatbuffer)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    source = interpreter.get_input_details()[0]["index"]
    target = interpreter.get_output_details()[0]["index"]
    shapes = []

    def run(images: np.ndarray) -> np.ndarray:
        if shapes != [images.shape]:
            interpreter.resize_tensor_input(source, list(images.shape))
            interpreter.allocate_tensors()
            shapes[:] = [images.shape]
        interpreter.set_tensor(source, images)
        interpreter.invoke()
        return interpreter.get_tensor(target)

    return run


def _check_export(generator, run, held_out: Crops) -> None:
    """The guard on an int8 export: ``run`` (uint8 in and out) against the fp32 copy
    on the held-out crops; DgfError with the numbers when int8 loses too much."""
    result = check_int8(inference_model(generator, "fp32"), lambda x: to_unit(run(to_uint8(x))),
                        held_out, advice="export without --quantize")
    print(f"int8 check passed: {result.text()}")


def _tf2onnx():
    """The tf2onnx module, or DgfError saying what to install."""
    if tf2onnx is None:
        raise DgfError(f"--format onnx needs tf2onnx, which is not installed "
                       f"({_TF2ONNX_MISSING}); {install_hint(ONNX_EXTRA)}")
    return tf2onnx


def export_onnx(generator, path: Path | str, *, overwrite: bool = False,
                opset: int = ONNX_OPSET, source: Path | str | None = None,
                calibration: CalibrationSet | None = None) -> Path:
    """Write ``generator`` as an ONNX model taking (B, H, W, 3) uint8 ``images``.

    Args:
        generator: functional Keras model, (B, H, W, 3) float32 in [-1, 1] → same;
            its BatchNorm-folded copy is exported, ``generator`` is not modified.
        path: file to create; replaced only with ``overwrite`` (and only an earlier
            ONNX export).
        opset: the ONNX opset (default ``ONNX_OPSET``).
        source: the model file, named in a conversion error.
        calibration: crops for an int8 (QDQ) export (module docstring); None
            exports float.

    Returns:
        The .onnx path. Raises DgfError when tf2onnx is missing or cannot convert,
        or when int8 loses too much on the held-out crops.
    """
    path = Path(path)
    _check_target(path, "onnx", overwrite)
    converter = _tf2onnx()
    if calibration is not None:
        _onnxruntime()
    folded = fold_batchnorm(generator)
    if calibration is not None:
        folded = prepared_copy(folded, calibration.calibration.blurred)
    spec = [tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_NAME)]
    function = tf.function(_serving_fn(folded), input_signature=spec, autograph=False)
    try:
        proto, _ = converter.convert.from_function(function, input_signature=spec, opset=opset)
    except Exception as exc:  # tf2onnx raises many types for an op it cannot map
        raise DgfError(f"ONNX conversion of {source or 'the generator'} failed: "
                       f"{type(exc).__name__}: {exc}; --format savedmodel exports any "
                       f"model TensorFlow runs") from exc
    outputs = [o.name for o in proto.graph.output]
    if outputs != [OUTPUT_NAME] or [i.name for i in proto.graph.input] != [INPUT_NAME]:
        raise DgfError(f"ONNX conversion gave inputs/outputs {outputs}; expected "
                       f"{INPUT_NAME} -> {OUTPUT_NAME}")
    data = proto.SerializeToString()
    if calibration is not None:
        data = quantize_onnxruntime(data, calibration.calibration.blurred)
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        _check_export(generator, lambda images: session.run(None, {INPUT_NAME: images})[0],
                      calibration.held_out)
    write_bytes_atomic(path, data)
    return path


def _onnxruntime():
    """The onnxruntime module (it quantises and checks an int8 ONNX export), or
    DgfError saying what to install."""
    if onnxruntime is None:
        raise DgfError(f"--format onnx --quantize int8 needs onnxruntime, which is not "
                       f"installed; {install_hint(ONNX_EXTRA)}")
    return onnxruntime


def export_model(
    model_path: Path | str,
    out_path: Path | str,
    fmt: str,
    *,
    input_size: Sequence[int] | None = None,
    overwrite: bool = False,
    quantize: str | None = None,
    calibration: Path | str | None = None,
) -> Path:
    """Load the generator at ``model_path`` and export it as ``fmt``.

    ``fmt`` is ``"savedmodel"``, ``"tflite"`` or ``"onnx"``; ``input_size`` (H, W) applies to
    TFLite only. ``quantize="int8"`` (TFLite and ONNX) quantises on crops of
    ``calibration`` (an HDF5 pairs file or a folder of photos; default: the training
    file the model's record names). Raises DgfError for a missing model, an existing
    ``out_path`` without ``overwrite``, a bad option, or an int8 export that loses
    too much.
    """
    if fmt not in EXPORT_FORMATS:
        raise DgfError(
            f"unknown export format '{fmt}'; choose one of {', '.join(EXPORT_FORMATS)}."
        )
    if input_size is not None and fmt != "tflite":
        raise DgfError("--input-size applies to --format tflite only; SavedModel "
                       "and ONNX exports always take any size.")
    out_path = Path(out_path)
    _check_target(out_path, fmt, overwrite)
    if fmt == "onnx":
        _tf2onnx()  # before the model loads
    _check_quantize(fmt, quantize, calibration, input_size)
    crops = None  # read before the model loads, which a missing model file refuses first
    if quantize is not None and (calibration is not None or Path(model_path).is_file()):
        crops = calibration_set(calibration if calibration is not None
                                else default_calibration_source(model_path))
    generator = load_generator(model_path)
    if fmt == "savedmodel":
        return export_savedmodel(generator, out_path, overwrite=overwrite)
    if fmt == "onnx":
        return export_onnx(generator, out_path, overwrite=overwrite, source=model_path,
                           calibration=crops)
    size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
    return export_tflite(generator, out_path, input_size=size, overwrite=overwrite,
                         calibration=crops)


def _check_quantize(fmt: str, quantize: str | None, calibration: Path | str | None,
                    input_size: Sequence[int] | None) -> None:
    """DgfError for a ``--quantize``/``--calibration`` that does not apply (before the
    model loads)."""
    if quantize is None:
        if calibration is not None:
            raise DgfError("--calibration applies with --quantize int8 only.")
        return
    if quantize not in QUANTIZE_CHOICES:
        raise DgfError(f"unknown quantisation '{quantize}'; choose one of "
                       f"{', '.join(QUANTIZE_CHOICES)}.")
    if fmt not in QUANTIZE_FORMATS:
        raise DgfError(f"--quantize {quantize} applies to --format "
                       f"{' or '.join(QUANTIZE_FORMATS)}; a {fmt} export keeps float weights.")
    if input_size is not None and fmt == "tflite":
        raise DgfError(_FIXED_INT8)
    if fmt == "onnx":
        _onnxruntime()
