"""The ONNX conversion both ONNX engines run, and its cache.

``--engine onnxruntime`` and ``--engine openvino`` run the generator's BatchNorm-folded
fp32 copy (:func:`dgf.runtime.inference_model`) converted to ONNX (tf2onnx, opset
``OPSET``), with the same float interface as TensorFlow's call: (B, H, W, 3) float32 in
[-1, 1] in, the same out.

Converting takes seconds (2.3 s for the bundled model on the developers' host), so it
is done once per model content and kept in the user cache folder
(:func:`dgf.calibration.cache_dir`, ``engines/``): ``DIGEST.onnx`` and ``DIGEST.json``,
where the digest covers the folded copy's layout and weights, the versions of
TensorFlow, tf2onnx and the opset, and the device (the accelerator and the CPU cores
visible, :func:`dgf.host.device_description`). Precision is no part of it: both engines
compile (or quantise) the one fp32 file at the precision asked. The JSON, written after
the ONNX file and both atomically, records the key, the file's size and its SHA-256; an
entry whose JSON is missing, unreadable, for another key or does not match its file is
damaged or stale: it is converted again, with a one-line note, never used. An
interrupted conversion writes nothing. A cache folder that cannot be written costs the
next run its conversion again, never the inference.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from dgf import calibration, runtime
from dgf.errors import DgfError
from dgf.host import device_description
from dgf.optional import Lazy

# Optional (extras onnx, openvino): both engines run a tf2onnx conversion. Imported
# when a conversion first needs it (dgf.optional).
tf2onnx = Lazy("tf2onnx")


def missing() -> str | None:
    """None when tf2onnx is installed, else what both ONNX engines miss."""
    reason = tf2onnx.missing()
    if reason is not None:
        return f"tf2onnx, which converts the model for it and is not installed ({reason})"
    return None

#: The ONNX opset of the engines' conversion (read by onnxruntime >= 1.11 and OpenVINO).
OPSET = 17
#: Bumped when what the conversion writes changes; old cache entries then miss.
VERSION = 1
#: Name of the converted model's input.
INPUT_NAME = "x"


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


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
    stored = calibration.store(onnx_path.parent, {onnx_path.name: data}, meta_path.name, meta,
                               "the converted model", "converts again")
    return onnx_path if stored else None


def float_onnx(model) -> bytes:
    """``model`` converted by tf2onnx at ``OPSET``: float32 (B, H, W, 3) in and out, B,
    H and W dynamic, the input named ``INPUT_NAME``. Raises what tf2onnx raises (many
    types for an op it cannot map): each caller says what could not be converted."""
    spec = [tf.TensorSpec([None, None, None, 3], tf.float32, name=INPUT_NAME)]
    function = tf.function(lambda x: model(x, training=False), input_signature=spec,
                           autograph=False)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=OPSET)
    return proto.SerializeToString()


def convert(copy, source: str, engine: str) -> bytes:
    """The fp32 folded ``copy`` as ONNX bytes (:func:`float_onnx`). DgfError naming
    ``source`` and ``engine`` when it cannot convert."""
    try:
        return float_onnx(copy)
    except Exception as exc:  # tf2onnx raises many types for an op it cannot map
        raise DgfError(f"{source} cannot be converted for --engine {engine} "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                       f"use --engine tensorflow") from exc


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


def model_bytes(model, engine: str) -> tuple[bytes, float]:
    """:func:`onnx_bytes` of an engine's ``model`` (:class:`dgf.engines.base.Model`):
    its fp32 folded copy with the current weights."""
    return onnx_bytes(model.folded("fp32"), model.content(), model.source, engine)
