"""Exact rewrites of the generator's folded fp32 copy that make its int8 quantisation
(:mod:`dgf.quantize`) faster and closer to fp32; outputs stay within float round-off
(1e-5 on the bundled model).

* **Native dilated convolutions** (:class:`DilatedConv2D`). TensorFlow runs a dilated
  ``Conv2D`` as space-to-batch, convolution, batch-to-space; tf2onnx turns that into
  SpaceToDepth/Conv/DepthToSpace with shape arithmetic around it, which NNCF leaves in
  float. The clone runs one convolution with dilations and explicit padding, which
  tf2onnx writes as one ONNX Conv (OpenVINO and ONNX Runtime quantise it; ONNX
  Runtime refuses dilations with SAME auto-padding, hence the explicit pads).
* **Channel equalisation** (:func:`equalise`). Int8 gives a tensor one scale; the
  dense field concatenates the outputs of many convolutions whose channels span
  0.9 to 25 (bundled model, mean of per-crop maxima), so one scale quantises the
  small channels with the step of the largest. Every convolution whose output
  reaches only convolutions (through LeakyReLU/ReLU, which commute with a positive
  scale, and last-axis concatenations) gets each output channel scaled to one
  extent (the median over all such channels, measured on calibration crops), and
  its readers' input weights divided by the same factors. The walk reads the
  functional model's config, so it works on any functional generator; a
  convolution read by anything else (an addition, a pixel shuffle, the output) is
  left as it is.
"""
from __future__ import annotations

from typing import Any, Iterator

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from dgf.errors import DgfError, first_line
from dgf.images import to_unit

#: Calibration crops the equalisation measures.
EQUALISE_CROPS = 64
#: The scale of one channel stays within [1 / this, this].
MAX_SCALE = 32.0

class DilatedConv2D(layers.Conv2D):
    """A stride-1 Conv2D with dilations, run as one convolution with explicit padding
    (TensorFlow's own Conv2D wraps it in space-to-batch reshapes)."""

    def call(self, inputs):
        if self.padding == "same":
            pads = [d * (k - 1) // 2 for d, k in zip(self.dilation_rate, self.kernel_size)]
        else:
            pads = [0, 0]
        y = tf.nn.conv2d(inputs, self.kernel, strides=1,
                         padding=[[0, 0], [pads[0], pads[0]], [pads[1], pads[1]], [0, 0]],
                         dilations=list(self.dilation_rate))
        if self.use_bias:
            y = tf.nn.bias_add(y, self.bias)
        return y if self.activation is None else self.activation(y)


def _clone_layer(layer):
    config = layer.get_config()
    if (isinstance(layer, layers.Conv2D) and tuple(layer.dilation_rate) != (1, 1)
            and tuple(layer.strides) == (1, 1) and layer.data_format == "channels_last"
            and all(k % 2 for k in layer.kernel_size)):
        return DilatedConv2D.from_config(config)
    return layer.__class__.from_config(config)


def _graph(model) -> tuple[dict[str, list[str]], dict[str, list[str]], set[str]]:
    """Each layer's input layers (in order), its consumers, and the output layers,
    from the functional model's config."""
    inputs: dict[str, list[str]] = {}

    def histories(value) -> Iterator[str]:
        if isinstance(value, dict):
            if "keras_history" in value:
                yield value["keras_history"][0]
            for item in value.values():
                yield from histories(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from histories(item)

    config = model.get_config()
    for layer in config["layers"]:
        inputs[layer["name"]] = list(histories(layer.get("inbound_nodes", [])))
    outputs = config["output_layers"]
    outputs = {outputs[0]} if isinstance(outputs[0], str) else {entry[0] for entry in outputs}
    consumers: dict[str, list[str]] = {name: [] for name in inputs}
    for name, sources in inputs.items():
        for source in dict.fromkeys(sources):
            consumers[source].append(name)
    return inputs, consumers, outputs


def _homogeneous(layer) -> bool:
    """Whether ``layer(s * x) == s * layer(x)`` for every s > 0."""
    if isinstance(layer, layers.LeakyReLU):
        return layer.negative_slope >= 0
    if isinstance(layer, layers.ReLU):
        return layer.max_value is None and layer.threshold == 0
    return False


def _consumers(model, graph, name: str, offset: int = 0) -> list[tuple[Any, int]] | None:
    """The convolutions that read layer ``name``'s channels, each with the offset of
    those channels in its input, through homogeneous activations and last-axis
    concatenations; None when anything else (an output, an addition) reads them."""
    inputs, consumers, outputs = graph
    if name in outputs:
        return None
    found: list[tuple[Any, int]] = []
    for consumer in consumers[name]:
        layer = model.get_layer(consumer)
        if _homogeneous(layer):
            reached = _consumers(model, graph, consumer, offset)
        elif isinstance(layer, layers.Concatenate) and layer.axis in (-1, 3) \
                and inputs[consumer].count(name) == 1:
            before = inputs[consumer][:inputs[consumer].index(name)]
            shift = sum(int(model.get_layer(n).output.shape[-1]) for n in before)
            reached = _consumers(model, graph, consumer, offset + shift)
        elif isinstance(layer, layers.Conv2D) and layer.groups == 1 \
                and inputs[consumer] == [name]:
            reached = [(layer, offset)]
        else:
            reached = None
        if reached is None:
            return None
        found.extend(reached)
    return found


def _extents(model, names: list[str], crops: np.ndarray) -> dict[str, np.ndarray]:
    """Per channel of each named layer's output: the mean over ``crops`` of its
    largest magnitude."""
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    sums = {n: 0.0 for n in names}
    for start in range(0, len(crops), 8):
        outputs = probe(to_unit(crops[start:start + 8]), training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for name, out in zip(names, outputs):
            sums[name] = sums[name] + np.abs(np.asarray(out)).max(axis=(1, 2)).sum(axis=0)
    return {n: s / len(crops) for n, s in sums.items()}


def equalise(model, crops: np.ndarray) -> int:
    """Scale, in place, each convolution's output channels to one activation extent
    (the median over all of them, measured on ``crops``) where only convolutions
    read them, and divide the readers' input weights by the same factors: the
    outputs are unchanged in exact arithmetic. Returns the convolutions scaled."""
    graph = _graph(model)
    plans = {}
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D) and layer.get_config()["activation"] == "linear":
            readers = _consumers(model, graph, layer.name)
            if readers:
                plans[layer.name] = readers
    if not plans:
        return 0
    extents = _extents(model, list(plans), crops)
    target = float(np.median(np.concatenate(list(extents.values()))))
    for name, readers in plans.items():
        layer = model.get_layer(name)
        scale = np.clip(target / np.maximum(extents[name], 1e-12), 1 / MAX_SCALE, MAX_SCALE)
        weights = layer.get_weights()
        layer.set_weights([weights[0] * scale] + [w * scale for w in weights[1:]])
        for reader, offset in readers:
            kernel, *rest = reader.get_weights()
            kernel = kernel.copy()
            kernel[:, :, offset:offset + len(scale), :] /= scale[None, None, :, None]
            reader.set_weights([kernel, *rest])
    return len(plans)


def native_copy(copy):
    """A clone of the fp32 folded ``copy`` with native dilated convolutions
    (:class:`DilatedConv2D`) and the same weights; ``copy`` is not modified."""
    try:
        clone = keras.models.clone_model(copy, clone_function=_clone_layer)
    except Exception as exc:  # Keras raises several types for a model it cannot clone
        raise DgfError(f"int8 needs a functional Keras generator; this one cannot be "
                       f"cloned ({type(exc).__name__}: {first_line(exc)})") from exc
    for layer in clone.layers:
        if layer.weights:
            layer.set_weights(copy.get_layer(layer.name).get_weights())
    return clone


def prepared_copy(copy, crops: np.ndarray):
    """The fp32 folded ``copy`` as the quantisers take it: :func:`native_copy` with
    its channels equalised on (up to ``EQUALISE_CROPS`` of) the uint8 ``crops``."""
    clone = native_copy(copy)
    equalise(clone, crops[:EQUALISE_CROPS])
    return clone
