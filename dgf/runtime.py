"""The generator's inference runtime: loading, BatchNorm folding, precision, and
the compiled call, with or without XLA.

:func:`load_generator` reads a saved generator (with the custom layers of
:mod:`dgf.models` registered). Every inference entry point (``dgf-deblur``,
``dgf-eval``, the trainer's per-epoch scoring) runs the generator through
a :class:`dgf.predictor.Predictor`, which runs a compiled call of an inference
copy of the model (:class:`FoldedCopies`); ``dgf-export`` exports the same copy (:func:`fold_batchnorm`),
without XLA:

* **BatchNorm folding.** In inference mode a BatchNormalization is a per-channel
  affine map ``y = (x - mean) * gamma / sqrt(var + eps) + beta``. When it directly
  follows a convolution whose output nothing else reads, the map is folded into the
  convolution's kernel and bias and the BatchNorm's pass over memory disappears.
  Dropout (identity at inference) is removed. The folding walks the functional graph
  (``keras.models.clone_model``), so it works on any functional Keras model, custom
  registered layers included; it never rebuilds the network from its builder.
* **Activations of a concatenation.** ``LeakyReLU(concat(a, b))`` equals
  ``concat(LeakyReLU(a), LeakyReLU(b))``: the copy activates each part once, so the
  dense field no longer re-activates its whole growing concatenation in every block,
  and each new part's activation fuses into the convolution that made it.
* **Current weights.** The copy is built once per source model and precision (its
  compiled call is traced once), and its weights are refolded from the source
  model's *current* weights at every :meth:`dgf.predictor.Predictor.call`, so the trainer's
  per-epoch scoring always sees the weights of that epoch. The source model is never
  modified.
* **XLA or not.** :func:`compiled_generator` compiles the copy with or without
  ``jit_compile``; which one runs, and whether another engine does, is chosen per
  host from measurement by :class:`dgf.predictor.Predictor`.
* **Precision.** ``fp32`` keeps every layer in float32. ``bf16`` computes the body
  under Keras' ``mixed_bfloat16`` policy (float32 weights, bfloat16 activations);
  the last convolution and every layer after it stay float32, so the image leaves
  the network at full precision. It is fast where the hardware has bfloat16
  arithmetic (AVX512-BF16 or AMX on x86, BF16 on Arm, a GPU of compute capability
  8.0+; :func:`bf16_native`), and there only without XLA (2x fp32 on the AVX-512
  host, while XLA's bf16 is slower than fp32); elsewhere TensorFlow converts in
  software, which can still gain from the halved memory traffic or can lose.
  ``"auto"`` (:func:`resolve_precision`) is bf16 on an x86 CPU with native bfloat16
  and no GPU, fp32 elsewhere. :func:`check_precision`
  refuses bf16 only where TensorFlow cannot run a bfloat16 convolution at all.

Tiled inference of photos of any size, the receptive field and the work counts live
in :mod:`dgf.tiling`. The choices and defaults of the commands that run this
(precisions, jit settings) live in :mod:`dgf.options`, which argument parsers import
without TensorFlow.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

import dgf.models  # noqa: F401  (registers the generator's custom layers for loading)
from dgf.errors import DgfError
from dgf.fileio import require_file
from dgf.host import cpu_flags
from dgf.options import DEFAULT_PRECISION, FLOAT_PRECISIONS, PRECISIONS

_POLICY = {"fp32": "float32", "bf16": "mixed_bfloat16"}
# /proc/cpuinfo flags that give a CPU native bfloat16 arithmetic (x86, then Arm).
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# The CPU flags where --precision auto picks bf16: measured faster there (x86 only).
_BF16_AUTO_FLAGS = ("avx512_bf16", "amx_bf16")

# Activations applied element by element: taken once per part of a concatenation.
_ELEMENTWISE = (layers.LeakyReLU, layers.ReLU)


# --- precision ---------------------------------------------------------------------
def gpu_models() -> list[str]:
    """The model name of each GPU TensorFlow sees (its device details' ``device_name``,
    else the device's name); empty without one. What :func:`dgf.host.device_description`
    takes, so that the calibration and conversion caches are keyed by the accelerator."""
    return [tf.config.experimental.get_device_details(gpu).get("device_name") or gpu.name
            for gpu in tf.config.list_physical_devices("GPU")]


def bf16_native() -> bool:
    """Whether this machine has bfloat16 arithmetic: the CPU flags, or a GPU >= 8.0."""
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability and tuple(capability) >= (8, 0):
            return True
    return bool(cpu_flags() & set(_BF16_CPU_FLAGS))


def gpu_capabilities() -> list[tuple[int, int]]:
    """The CUDA compute capability of each GPU TensorFlow sees ((9, 0) for an H100;
    (0, 0) where TensorFlow names none); empty without a GPU."""
    return [tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability")
                  or (0, 0)) for gpu in tf.config.list_physical_devices("GPU")]


def training_precision(setting: str, capabilities: Sequence[tuple[int, int]]) -> str:
    """What dgf-train's ``--precision setting`` trains at on GPUs of ``capabilities``
    (:func:`gpu_capabilities`; empty: the CPU): ``setting`` itself unless it is
    ``"auto"``, which is bf16 when every GPU has bfloat16 tensor cores (compute
    capability 8.0 and up: A100, H100), fp16 with loss scaling when every GPU has
    float16 ones (7.x: V100, T4), and fp32 otherwise (a CPU, where bf16 training ran
    at a third of fp32's speed on the AVX2 host, or an older GPU)."""
    if setting != "auto":
        return setting
    if capabilities and min(capabilities) >= (8, 0):
        return "bf16"
    if capabilities and min(capabilities) >= (7, 0):
        return "fp16"
    return "fp32"


_BF16_PROBE: list[str | None] = []


def bf16_unsupported_reason() -> str | None:
    """None when TensorFlow runs a bfloat16 convolution here, else its error (cached).

    Probed once with a tiny compiled convolution: a device without bfloat16
    convolution kernels (an older GPU, some builds) fails here rather than halfway
    through a run. A CPU without native bfloat16 (:func:`bf16_native`) still runs it,
    converting in software.
    """
    if not _BF16_PROBE:
        try:
            x = tf.zeros((1, 4, 4, 2), tf.bfloat16)
            kernel = tf.zeros((3, 3, 2, 2), tf.bfloat16)
            tf.function(lambda t: tf.nn.conv2d(t, kernel, 1, "SAME"))(x).numpy()
            _BF16_PROBE.append(None)
        except (tf.errors.OpError, TypeError, ValueError) as exc:
            _BF16_PROBE.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
    return _BF16_PROBE[0]


def check_precision(precision: str) -> None:
    """Raise DgfError for an unknown precision, or bf16 where TensorFlow cannot run it."""
    if precision not in PRECISIONS:
        raise DgfError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
        )
    if precision == "bf16":
        reason = bf16_unsupported_reason()
        if reason is not None:
            raise DgfError(
                f"--precision bf16 is not supported on this machine: a bfloat16 "
                f"convolution failed ({reason}); use --precision fp32"
            )


def resolve_precision(precision: str) -> str:
    """The precision ``precision`` names: itself for ``fp32``/``bf16`` (checked as
    :func:`check_precision` does), and for ``"auto"`` bf16 on a CPU with native
    bfloat16 (AVX512_BF16 or AMX) and no GPU, where TensorFlow runs it, fp32
    everywhere else (a GPU, Arm, or an x86 CPU that converts bf16 in software)."""
    if precision != "auto":
        check_precision(precision)
        return precision
    if tf.config.list_physical_devices("GPU"):
        return "fp32"
    if cpu_flags() & set(_BF16_AUTO_FLAGS) and bf16_unsupported_reason() is None:
        return "bf16"
    return "fp32"


# --- the graph ------------------------------------------------------------------------
def _is_functional(model: Any) -> bool:
    return isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth")


def _nodes(model) -> list:
    return [n for nodes in model._nodes_by_depth.values() for n in nodes]


def _foldable_pairs(model) -> dict[str, str]:
    """Map BatchNorm layer name -> the name of the convolution it folds into.

    A BatchNorm folds when it is called once in ``model``, on the output of a
    channels-last Conv1D/2D/3D without activation that is also called once and
    whose output nothing else reads (no other layer, not a model output), and when
    it normalises the last axis.
    """
    convs = (layers.Conv1D, layers.Conv2D, layers.Conv3D)
    nodes = _nodes(model)
    calls: dict[int, int] = {}
    readers: dict[int, int] = {}
    for node in nodes:
        if node.operation is not None:
            calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
        for tensor in node.input_tensors:
            readers[id(tensor)] = readers.get(id(tensor), 0) + 1
    for tensor in model.outputs:
        readers[id(tensor)] = readers.get(id(tensor), 0) + 1
    pairs: dict[str, str] = {}
    for node in nodes:
        bn = node.operation
        if not isinstance(bn, layers.BatchNormalization) or calls[id(bn)] != 1:
            continue
        if len(node.input_tensors) != 1:
            continue
        tensor = node.input_tensors[0]
        conv = tensor._keras_history.operation
        rank = len(tensor.shape)
        if (
            isinstance(conv, convs)
            and calls.get(id(conv)) == 1
            and readers[id(tensor)] == 1
            and conv.data_format == "channels_last"
            and conv.activation.__name__ == "linear"
            and bn.axis in (-1, rank - 1)
        ):
            pairs[bn.name] = conv.name
    return pairs


def _float32_tail(model) -> set[str]:
    """Names of the last convolution(s) and every layer after them.

    Walks back from the model's outputs and stops at each convolution, so under
    bf16 these layers keep float32 (the output image's precision) while the body
    computes in bfloat16.
    """
    convs = (layers.Conv1D, layers.Conv2D, layers.Conv3D)
    tail: set[str] = set()
    stack = list(model.outputs)
    seen: set[int] = set()
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            continue
        op = history.operation
        tail.add(op.name)
        if isinstance(op, (layers.InputLayer, *convs)):
            continue
        node = op._inbound_nodes[history.node_index]
        stack.extend(node.input_tensors)
    return tail


@dataclass
class _Plan:
    """How to fill a folded copy's weights from its source model, layer by layer."""

    copies: list[tuple[str, str]]  # (copy layer, source layer): same weights
    folds: list[tuple[str, str, str]]  # (copy conv, source conv, source BatchNorm)


def _fold_weights(conv, bn) -> list[np.ndarray]:
    """[kernel, bias] of ``conv`` followed by the inference-mode ``bn``, float32.

    With ``s = gamma / sqrt(var + eps)``: kernel * s on the output-channel (last)
    axis, bias ``(b - mean) * s + beta``. Computed in float64, then rounded once.
    """
    def arr(v) -> np.ndarray:
        return np.asarray(ops.convert_to_numpy(v), dtype=np.float64)

    kernel = arr(conv.kernel)
    channels = kernel.shape[-1]
    bias = arr(conv.bias) if conv.use_bias else np.zeros(channels)
    gamma = arr(bn.gamma) if bn.scale else np.ones(channels)
    beta = arr(bn.beta) if bn.center else np.zeros(channels)
    scale = gamma / np.sqrt(arr(bn.moving_variance) + bn.epsilon)
    folded_bias = (bias - arr(bn.moving_mean)) * scale + beta
    return [(kernel * scale).astype(np.float32), folded_bias.astype(np.float32)]


def _build_folded(model, precision: str):
    """A folded copy of the functional ``model`` (weights not yet filled) and its plan."""
    pairs = _foldable_pairs(model)
    folded_bns = set(pairs)
    folded_convs = {conv: bn for bn, conv in pairs.items()}
    tail = _float32_tail(model) if precision == "bf16" else set()
    plan = _Plan(copies=[], folds=[])
    dropped: set[int] = set()

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, layers.Dropout) or layer.name in folded_bns:
            # Identity at inference: `call` below passes its input straight on.
            placeholder = layers.Identity(name=layer.name)
            dropped.add(id(placeholder))
            return placeholder
        config["dtype"] = "float32" if layer.name in tail else _POLICY[precision]
        if layer.name in folded_convs:
            config["use_bias"] = True
            plan.folds.append((layer.name, layer.name, folded_convs[layer.name]))
        elif layer.weights:
            plan.copies.append((layer.name, layer.name))
        return layer.__class__.from_config(config)

    # LeakyReLU(concat(a, b)) == concat(LeakyReLU(a), LeakyReLU(b)). The dense field
    # activates its whole growing concatenation in every block; activating each
    # part once and concatenating the activated parts leaves each block only its
    # new maps to activate (fused into the convolution that made them), and the raw
    # concatenation chain, no longer read, drops out of the copy.
    concat_parts: dict[int, tuple[list, Any]] = {}
    activated: dict[tuple[int, str], Any] = {}

    def activate(layer, tensor):
        config = {k: v for k, v in layer.get_config().items() if k != "name"}
        key = (id(tensor), json.dumps(config, sort_keys=True, default=str))
        if key not in activated:
            if id(tensor) in concat_parts:
                parts, concat = concat_parts[id(tensor)]
                joined = concat.__class__.from_config(
                    {**concat.get_config(), "name": f"{concat.name}_{layer.name}"}
                )
                activated[key] = joined([activate(layer, part) for part in parts])
            else:
                if layer._inbound_nodes:  # already used: a copy for this part
                    layer = layer.__class__.from_config(
                        {**layer.get_config(), "name": f"{layer.name}_{len(activated)}"}
                    )
                activated[key] = layer(tensor)
        return activated[key]

    def call(layer, *args, **kwargs):
        if id(layer) in dropped:
            return args[0]
        if isinstance(layer, _ELEMENTWISE) and not kwargs and len(args) == 1:
            return activate(layer, args[0])
        out = layer(*args, **kwargs)
        if isinstance(layer, layers.Concatenate) and len(args) == 1:
            concat_parts[id(out)] = (list(args[0]), layer)
        return out

    copy = keras.models.clone_model(model, clone_function=clone, call_function=call)
    return copy, plan


def _fill(copy, plan: _Plan, source) -> None:
    """Set ``copy``'s weights from ``source``'s current ones, folding as planned."""
    src = {layer.name: layer for layer in source.layers}
    dst = {layer.name: layer for layer in copy.layers}
    for new, old in plan.copies:
        dst[new].set_weights(src[old].get_weights())
    for new, conv, bn in plan.folds:
        dst[new].set_weights(_fold_weights(src[conv], src[bn]))


def fold_batchnorm(model, precision: str = DEFAULT_PRECISION):
    """An inference copy of ``model`` with BatchNorm folded into the convolutions.

    Args:
        model: functional Keras model (for the generator: (B, H, W, 3) float32 in
            [-1, 1] → same shape and range). Not modified.
        precision: ``"fp32"``, or ``"bf16"`` (body under ``mixed_bfloat16``, the last
            convolution and what follows in float32; see the module docstring).

    Returns:
        A new functional model with the same inputs and outputs, taking ``model``'s
        current weights: each BatchNorm that directly follows a convolution (its
        only reader) is folded into that convolution's kernel and bias and replaced
        by an identity, each Dropout is an identity, every other layer is a copy
        with the same weights. In inference mode it computes what ``model(x,
        training=False)`` computes, up to float round-off.
    """
    _check_float(precision)
    if not _is_functional(model):
        raise DgfError(
            f"BatchNorm folding needs a functional Keras model; got {type(model).__name__}"
        )
    copy, plan = _build_folded(model, precision)
    _fill(copy, plan, model)
    return copy


# --- the compiled call ----------------------------------------------------------------
def _check_float(precision: str) -> None:
    if precision not in FLOAT_PRECISIONS:
        raise DgfError(f"unknown precision {precision!r} for a Keras copy; choose one of "
                       f"{', '.join(FLOAT_PRECISIONS)}")


def compiled_generator(generator: Any, jit_compile: bool = False) -> Callable[[np.ndarray], Any]:
    """A compiled inference call for ``generator`` as it is (no folding).

    ``generator(x, training=False)`` inside one ``tf.function`` with input signature
    (None, None, None, 3) float32, so every batch size and image size (tiles, a
    short last batch, the trainer's per-epoch calls) share one function and never
    retrace. With ``jit_compile`` XLA compiles it, once per input shape. The call
    holds the generator, so it runs as long as it is kept. Graph mode frees each activation once its last consumer ran; an eager Keras call keeps
    every intermediate of the dense field alive until it returns (measured at
    channel_rate 16 on a 512 px tile: 5.5 GiB eager, 0.7 GiB compiled, and 2.7x
    faster). :class:`dgf.predictor.Predictor` keeps one per path and precision.
    """
    @tf.function(
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
        autograph=False,
        jit_compile=jit_compile,
    )
    def call(x):
        return generator(x, training=False)

    return call


class FoldedCopies:
    """The folded inference copies of one generator, one per precision, each built
    once and refilled with the generator's current weights on every :meth:`copy`
    (milliseconds), so a compiled call of a copy is traced once and still sees new
    weights (the trainer's, every epoch)."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator
        self._copies: dict[str, tuple[Any, _Plan]] = {}

    def copy(self, precision: str = DEFAULT_PRECISION):
        """The copy at ``precision`` (fp32 or bf16) with the current weights. A model
        that is not functional is returned unchanged for fp32 (nothing to fold) and
        refused for bf16."""
        _check_float(precision)
        if not _is_functional(self.generator):
            if precision == "fp32":
                return self.generator
            raise DgfError(f"bf16 inference needs a functional Keras model; got "
                           f"{type(self.generator).__name__}")
        if precision not in self._copies:
            self._copies[precision] = _build_folded(self.generator, precision)
        copy, plan = self._copies[precision]
        _fill(copy, plan, self.generator)
        return copy

    def copy_held(self, precision: str):
        """The copy at ``precision`` as last filled by :meth:`copy` (no refolding)."""
        if not _is_functional(self.generator):
            return self.copy(precision)
        return self._copies[precision][0]


def inference_model(generator: Any, precision: str = DEFAULT_PRECISION):
    """A folded inference copy of ``generator`` at ``precision``, with its current
    weights, built anew (:class:`FoldedCopies` keeps one and refills it)."""
    return FoldedCopies(generator).copy(precision)


# --- loading a generator -------------------------------------------------------------------
def load_generator(model_path: Path | str):
    """Load a generator saved with ``model.save("generator.keras")``.

    Returns the Keras model (input and output (B, H, W, 3) float32 in [-1, 1]).
    Raises DgfError naming the file when it is missing, unreadable or not an
    image-to-image generator.
    """
    path = require_file(
        model_path, "model file",
        "pass the generator saved by dgf-train (a .keras file) with --model."
    )
    if path.suffix.lower() not in (".keras", ".h5", ".hdf5"):
        raise DgfError(
            f"model file {path} has suffix '{path.suffix}'; expected a Keras model "
            f"saved as .keras (or legacy .h5)."
        )
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        # Keras itself says "File not found" for any .keras file that is no zip.
        raise DgfError(
            f"model file {path} is not a valid .keras file (a .keras file is a zip "
            f"archive; this one is damaged or something else renamed)."
        )
    try:
        # Safe mode (Keras's default, stated here so it stays): a model file holding
        # Python code (a Lambda layer) is refused, so a shared file cannot run code.
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a bad archive
        if "arbitrary code execution" in str(exc):
            raise DgfError(
                f"model file {path} holds Python code (a Lambda layer), which could run "
                f"anything; dgf loads model files in Keras safe mode and refuses it. Use a "
                f"generator saved by dgf-train"
            ) from None
        raise DgfError(
            f"could not load model {path}: {type(exc).__name__}: {exc}. Is it the "
            f"generator .keras file written by dgf-train?"
        ) from exc
    in_shape = tuple(model.inputs[0].shape) if model.inputs else ()
    out_shape = tuple(model.outputs[0].shape) if model.outputs else ()
    if len(model.inputs) != 1 or len(in_shape) != 4 or in_shape[-1] != 3 or (
        len(out_shape) != 4 or out_shape[-1] != 3
    ):
        raise DgfError(
            f"model {path} maps {in_shape} to {out_shape}; a generator takes and "
            f"returns (B, H, W, 3) images. Did you pass the discriminator?"
        )
    return model
