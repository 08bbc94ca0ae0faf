"""Inference engines besides TensorFlow: ONNX Runtime and OpenVINO.

``--engine onnxruntime`` and ``--engine openvino`` run the generator's BatchNorm-
folded fp32 copy (:func:`dgf.runtime.inference_model`) converted to ONNX (tf2onnx,
opset ``OPSET``), with the same float interface as TensorFlow's call: (B, H, W, 3)
float32 in [-1, 1] in, the same out. So tiling, blending, ``--scale`` and the uint8
rounding stay dgf's own and every engine writes the same kind of output.

* **Precision.** ONNX Runtime runs fp32 only: its CPU provider has no bfloat16
  convolution, so ``--precision bf16`` with it is refused and ``--precision auto``
  is fp32 there. OpenVINO compiles the same fp32 ONNX with its
  ``INFERENCE_PRECISION_HINT``: ``f32`` for fp32, ``bf16`` for bf16, which it offers
  only on a CPU with native bfloat16 (its ``OPTIMIZATION_CAPABILITIES`` list
  ``BF16``). OpenVINO compiles once per input shape (a tile shape; a fraction of a
  second) and keeps each compiled model for the process.
* **The conversion cache.** Converting takes seconds (2.3 s for the bundled model on
  the developers' host), so it is done once per model content and kept in the user
  cache folder (:func:`dgf.calibration.cache_dir`, ``engines/``): ``DIGEST.onnx`` and
  ``DIGEST.json``, where the digest covers the folded copy's layout and weights, the
  versions of TensorFlow, tf2onnx and the opset, and the device (the accelerator and
  the CPU cores visible, :func:`dgf.host.device_description`). Precision is no part of it:
  both engines compile the one fp32 file at the precision asked. The JSON, written
  after the ONNX file and both atomically, records the key, the file's size and its
  SHA-256; an entry whose JSON is missing, unreadable, for another key or does not
  match its file is damaged or stale: it is converted again, with a one-line note,
  never used. An interrupted conversion writes nothing. A cache folder that cannot
  be written costs the next run its conversion again, never the inference.
* **Missing engines.** Both are optional extras (``onnx``, ``openvino``); asking for
  one that is not installed is a DgfError with the command that installs its extra
  (:func:`check_engine`, :func:`dgf.errors.install_hint`), and ``--engine auto``
  leaves it out and says so.

:func:`dgf.dispatch.inference_call` is the entry point: it picks the engine (``auto``
measures) and returns the call. The choices are named in :mod:`dgf.options`.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from dgf import calibration, runtime
from dgf.errors import DgfError, install_hint
from dgf.fileio import write_bytes_atomic, write_text_atomic
from dgf.host import device_description
from dgf.options import ENGINE_EXTRAS, ENGINES, PRECISIONS

# Why an optional module could not be imported, by name.
_IMPORT_ERRORS: dict[str, str] = {}
try:  # optional (extras onnx, openvino): both engines run a tf2onnx conversion
    import tf2onnx
except ImportError as exc:  # pragma: no cover - depends on the installation
    tf2onnx = None
    _IMPORT_ERRORS["tf2onnx"] = f"{type(exc).__name__}: {exc}"
try:  # optional (extra onnx)
    import onnxruntime
except ImportError as exc:  # pragma: no cover
    onnxruntime = None
    _IMPORT_ERRORS["onnxruntime"] = f"{type(exc).__name__}: {exc}"
try:  # optional (extra openvino)
    import openvino
except ImportError as exc:  # pragma: no cover
    openvino = None
    _IMPORT_ERRORS["openvino"] = f"{type(exc).__name__}: {exc}"


def _import_error(name: str) -> str:
    return _IMPORT_ERRORS.get(name, f"ModuleNotFoundError: No module named '{name}'")

#: The ONNX opset of the engines' conversion (read by onnxruntime >= 1.11 and OpenVINO).
OPSET = 17
#: Bumped when what the conversion writes changes; old cache entries then miss.
VERSION = 1
#: Name of the converted model's input.
INPUT_NAME = "x"
#: OpenVINO's precision hint per dgf precision.
_OV_HINT = {"fp32": "f32", "bf16": "bf16"}
#: Engines and what they are called in messages (the compiler they run).
COMPILERS = {"onnxruntime": "ONNX Runtime (CPU provider)", "openvino": "OpenVINO (CPU plugin)"}


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


# --- what is installed and what it runs ---------------------------------------------------
def missing_reason(engine: str) -> str | None:
    """None when ``engine`` can run here, else what is missing (an import error)."""
    if engine == "tensorflow":
        return None
    if engine not in ENGINES:
        raise DgfError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if tf2onnx is None:
        return (f"tf2onnx, which converts the model for it and is not installed "
                f"({_import_error('tf2onnx')})")
    if engine == "onnxruntime" and onnxruntime is None:
        return f"onnxruntime, which is not installed ({_import_error('onnxruntime')})"
    if engine == "openvino" and openvino is None:
        return f"openvino, which is not installed ({_import_error('openvino')})"
    return None


def versions(engine: str) -> dict[str, str]:
    """The versions an engine's speed and output depend on (part of cache keys)."""
    if engine == "onnxruntime":
        return {"onnxruntime": onnxruntime.__version__}
    if engine == "openvino":
        return {"openvino": openvino.__version__}
    return {}


_OV_CORE: list[Any] = []


def _ov_core():
    if not _OV_CORE:
        _OV_CORE.append(openvino.Core())
    return _OV_CORE[0]


def precision_reason(engine: str, precision: str) -> str | None:
    """None when the installed ``engine`` runs ``precision`` here, else why not."""
    if precision not in PRECISIONS:
        raise DgfError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or engine == "tensorflow":
        return None
    if engine == "onnxruntime":
        return "ONNX Runtime runs this model in fp32 only (its CPU provider has no bfloat16 convolution)"
    capabilities = _ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in capabilities:
        return (f"OpenVINO computes bf16 only on a CPU with native bfloat16; this one "
                f"offers {', '.join(capabilities)}")
    return None


def check_engine(engine: str, precision: str | None = None) -> None:
    """DgfError when ``engine`` is not installed (naming the extra to install) or, with
    ``precision`` given, cannot run it. ``auto`` and ``tensorflow`` always pass."""
    if engine in ("auto", "tensorflow"):
        return
    reason = missing_reason(engine)
    if reason is not None:
        raise DgfError(f"--engine {engine} needs {reason}; install it with "
                       f"{install_hint(ENGINE_EXTRAS[engine])} (or use --engine tensorflow)")
    if precision is not None:
        reason = precision_reason(engine, precision)
        if reason is not None:
            raise DgfError(f"--engine {engine} cannot run --precision {precision}: {reason}; "
                           f"use --precision fp32, or --engine tensorflow")


def engine_precision(engine: str, precision: str) -> str:
    """The precision ``--precision auto`` (already resolved to ``precision`` for
    TensorFlow) means for ``engine``: fp32 where the engine cannot run bf16."""
    if precision == "bf16" and engine not in ("auto", "tensorflow") \
            and precision_reason(engine, "bf16") is not None:
        return "fp32"
    return precision


# --- the conversion and its cache ---------------------------------------------------------
def content_digest(model, layout: str) -> str:
    """SHA-256 of a model's layout key and every weight, in layer order."""
    digest = hashlib.sha256(layout.encode())
    for weight in model.weights:
        value = np.ascontiguousarray(np.asarray(weight.numpy()))
        digest.update(f"{weight.path}:{value.dtype}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def conversion_key(content: str) -> dict[str, Any]:
    """The key of a converted model: its content, what converted it, and the device
    (a cache folder shared by a CPU node and a GPU node keeps an entry for each)."""
    return {"version": VERSION, "content": content, "opset": OPSET,
            "tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__,
            **device_description(runtime.gpu_models())}


def _entry_paths(key: dict[str, Any]) -> tuple[Path, Path]:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    folder = calibration.cache_dir() / "engines"
    return folder / f"{digest}.onnx", folder / f"{digest}.json"


def _read_cached(key: dict[str, Any]) -> bytes | None:
    """The cached ONNX bytes of ``key``, or None (with a note when damaged or stale)."""
    onnx_path, meta_path = _entry_paths(key)
    if not onnx_path.exists() and not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("key") != key:
            raise ValueError("it was written for another model or converter")
        data = onnx_path.read_bytes()
        if len(data) != meta.get("size") or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            raise ValueError(f"{onnx_path.name} does not match its record (size {len(data)} "
                             f"bytes, recorded {meta.get('size')})")
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
        _note(f"engine conversion cache entry {onnx_path} is damaged or stale ({exc}); "
              f"converting again")
        return None
    return data


def _write_cached(key: dict[str, Any], data: bytes) -> Path | None:
    """Store a conversion (ONNX file first, its record last); None with a note when
    the cache folder cannot be written."""
    onnx_path, meta_path = _entry_paths(key)
    meta = {"key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    try:
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(onnx_path, data)
        write_text_atomic(meta_path, json.dumps(meta, indent=1, sort_keys=True) + "\n")
    except (OSError, DgfError) as exc:
        _note(f"could not store the converted model in {onnx_path.parent} ({exc}); the "
              f"next run converts again (set {calibration.CACHE_ENV} to a writable folder)")
        return None
    return onnx_path


def convert(copy, source: str, engine: str) -> bytes:
    """The fp32 folded ``copy`` as ONNX bytes (float32 (B, H, W, 3) in and out, B, H
    and W dynamic). DgfError naming ``source`` and ``engine`` when it cannot convert."""
    spec = [tf.TensorSpec([None, None, None, 3], tf.float32, name=INPUT_NAME)]
    function = tf.function(lambda x: copy(x, training=False), input_signature=spec,
                           autograph=False)
    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=OPSET)
    except Exception as exc:  # tf2onnx raises many types for an op it cannot map
        raise DgfError(f"{source} cannot be converted for --engine {engine} "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                       f"use --engine tensorflow") from exc
    return proto.SerializeToString()


def onnx_bytes(copy, content: str, source: str, engine: str) -> tuple[bytes, float]:
    """The ONNX conversion of the fp32 folded ``copy``, whose :func:`content_digest`
    is ``content``: from the cache, or converted and stored. Returns ``(bytes,
    seconds spent converting)`` (0.0 from the cache)."""
    key = conversion_key(content)
    data = _read_cached(key)
    if data is not None:
        return data, 0.0
    start = time.perf_counter()
    data = convert(copy, source, engine)
    seconds = time.perf_counter() - start
    _write_cached(key, data)
    return data, seconds


# --- the calls -----------------------------------------------------------------------------
class OnnxRuntimeCall:
    """ONNX Runtime's CPU session of a converted model: float32 in, float32 out."""

    engine = "onnxruntime"

    def __init__(self, data: bytes, source: str) -> None:
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = onnxruntime.InferenceSession(
                data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own error types
            raise DgfError(f"ONNX Runtime cannot load the conversion of {source} "
                           f"({type(exc).__name__}: {exc}); use --engine tensorflow") from exc
        self.input = self.session.get_inputs()[0].name
        self.description = f"{COMPILERS['onnxruntime']}, fp32"

    def __call__(self, x) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run(None, {self.input: x})[0]


class OpenVinoCall:
    """OpenVINO's CPU plugin on a converted model, compiled per input shape at the
    precision hint of ``precision``: float32 in, float32 out."""

    engine = "openvino"

    def __init__(self, data: bytes, source: str, precision: str) -> None:
        self.source = source
        self.hint = _OV_HINT[precision]
        try:
            self.model = _ov_core().read_model(data)
        except Exception as exc:  # OpenVINO raises RuntimeError and its own types
            raise DgfError(f"OpenVINO cannot read the conversion of {source} "
                           f"({type(exc).__name__}: {exc}); use --engine tensorflow") from exc
        self.compiled: dict[tuple[int, ...], Any] = {}
        self.description = f"{COMPILERS['openvino']}, {precision} (hint {self.hint})"

    def _compiled(self, shape: tuple[int, ...]):
        if shape not in self.compiled:
            model = self.model.clone()
            model.reshape(list(shape))
            try:
                compiled = _ov_core().compile_model(
                    model, "CPU", {"INFERENCE_PRECISION_HINT": self.hint})
            except Exception as exc:  # noqa: BLE001 - its compiler's own error types
                raise DgfError(f"OpenVINO cannot compile {self.source} for input "
                               f"{'x'.join(map(str, shape))} ({type(exc).__name__}: {exc}); "
                               f"use --engine tensorflow") from exc
            self.compiled[shape] = (compiled, compiled.create_infer_request())
        return self.compiled[shape]

    def __call__(self, x) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        compiled, request = self._compiled(tuple(int(s) for s in x.shape))
        # The request owns its output buffer and reuses it on the next call: copy.
        return np.array(request.infer({0: x})[compiled.output(0)], dtype=np.float32)


def make_call(engine: str, data: bytes, source: str, precision: str) -> Callable:
    """The call of ``engine`` on the converted model ``data`` at ``precision``."""
    if engine == "onnxruntime":
        if precision != "fp32":
            raise DgfError(precision_reason(engine, precision))
        return OnnxRuntimeCall(data, source)
    if engine == "openvino":
        return OpenVinoCall(data, source, precision)
    raise DgfError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
