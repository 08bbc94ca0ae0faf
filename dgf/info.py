"""What a saved generator is: ``dgf-info MODEL``.

:func:`model_info` loads a generator the way ``dgf-eval --model`` does
(:func:`dgf.runtime.load_generator`, so a missing file, a folder or a model that is
no generator get the same messages) and reports, from its layers:

* the layout (:func:`dgf.models.generator_layout`, plus the dilation of each dense
  block's 3x3 convolution);
* trainable and non-trainable parameters (:func:`dgf.models.count_params`);
* the multiply-accumulates of every convolution on one H x W image
  (:func:`dgf.tiling.conv_flops` / 2, which counts each convolution at the size it
  runs at; FLOPs = 2 x MACs);
* the receptive field in pixels (:func:`dgf.tiling.receptive_field`);
* what the file records of its training (:mod:`dgf.metadata`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from keras import layers

from dgf.config import on_off
from dgf.errors import DgfError
from dgf.metadata import describe, describe_evaluations, read_metadata
from dgf.models import count_params, generator_layout
from dgf.options import DEFAULT_INFO_SIZE
from dgf.runtime import load_generator
from dgf.tiling import conv_flops, receptive_field


def dilations(model: Any) -> list[int]:
    """Dilation rate of each dense block's 3x3 convolution, in block order."""
    return [int(layer.dilation_rate[0]) for layer in model.layers
            if isinstance(layer, layers.Conv2D) and layer.name.startswith("dense")
            and layer.name.endswith("_conv3x3")]


def model_info(model_path: Path | str, height: int = DEFAULT_INFO_SIZE[0],
               width: int = DEFAULT_INFO_SIZE[1]) -> dict[str, Any]:
    """The report of ``dgf-info`` on the generator at ``model_path`` as a JSON-ready
    dict: ``model``, ``layout``, ``trainable_params``, ``non_trainable_params``,
    ``size`` ([H, W]), ``macs``, ``gmacs``, ``flops``, ``receptive_field`` (px),
    ``metadata`` (the training record, or None), ``training`` (it in words) and
    ``evaluations`` (one line per score dgf-eval --record added)."""
    for name, side in (("height", height), ("width", width)):
        if isinstance(side, bool) or not isinstance(side, int) or side < 1:
            raise DgfError(f"image {name} must be a positive number of pixels; got {side!r}")
    model = load_generator(model_path)
    layout = generator_layout(model)
    if layout is None:
        raise DgfError(f"model {model_path} is not a DGF generator (it has no head_conv "
                       f"layer); dgf-info describes generators written by dgf-train")
    macs = conv_flops(model, height, width) // 2
    trainable, non_trainable = count_params(model)
    record = read_metadata(model_path)
    return {
        "model": str(model_path),
        "layout": {**layout, "dilations": dilations(model)},
        "trainable_params": trainable,
        "non_trainable_params": non_trainable,
        "size": [height, width],
        "macs": macs,
        "gmacs": round(macs / 1e9, 1),
        "flops": 2 * macs,
        "receptive_field": receptive_field(model),
        "metadata": record,
        "training": describe(record),
        "evaluations": describe_evaluations(record),
    }


def _word(value: Any) -> str:
    if isinstance(value, bool):
        return on_off(value)
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def format_info(info: dict[str, Any]) -> str:
    """:func:`model_info`'s report as the lines ``dgf-info`` prints."""
    layout = ", ".join(f"{key.replace('_', ' ')} {_word(value)}"
                       for key, value in info["layout"].items())
    height, width = info["size"]
    return "\n".join([
        f"model: {info['model']}",
        f"layout: {layout}",
        f"parameters: {info['trainable_params']:,} trainable, "
        f"{info['non_trainable_params']:,} non-trainable",
        f"work at {height}x{width}: {info['macs'] / 1e9:.1f} GMACs "
        f"({info['flops'] / 1e9:.1f} GFLOPs; FLOPs = 2 x MACs, convolutions only)",
        f"receptive field: {info['receptive_field']} px",
        f"training: {info['training']}",
        *(f"scored: {line}" for line in info["evaluations"]),
    ])
