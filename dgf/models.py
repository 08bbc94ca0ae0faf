"""The Deep Generative Filter networks: a dense-field generator and a patch discriminator.

Both are plain Keras 3 functional models built from `keras.layers` and `keras.ops`
only, so they run on any Keras backend, save to `.keras` and load back with
`keras.models.load_model(path)` under the default `safe_mode=True` (no `Lambda`).

Images enter both networks as float in [-1, 1]. Under a mixed-precision policy
(`keras.mixed_precision.set_dtype_policy("mixed_bfloat16")`) the heavy layers compute
in 16 bits while the generator's tanh output and the discriminator's logits stay
float32, so losses are always computed at full precision.
"""
from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers, ops

from dgf.errors import DgfError

#: Dense blocks in the paper's generator (``build_generator(blocks=...)``).
DEFAULT_BLOCKS = 10


def dense_dilations(blocks: int = DEFAULT_BLOCKS) -> tuple[int, ...]:
    """Dilation rate of the 3x3 convolution in each of ``blocks`` dense blocks.

    The seed alternates plain and dilated convolutions: the odd blocks (1st, 3rd, ...)
    are plain, and the even blocks' dilations rise by one to the middle and fall back,
    1, 2, 3, 2, 1 for the paper's ten blocks (:data:`DENSE_DILATIONS`)."""
    evens = blocks // 2
    ramp = [min(i + 1, evens - i) for i in range(evens)]
    return tuple(ramp[index // 2] if index % 2 else 1 for index in range(blocks))


#: Dilation rate of the 3x3 convolution in the paper's dense blocks 1..10.
DENSE_DILATIONS: tuple[int, ...] = dense_dilations(DEFAULT_BLOCKS)

_LEAK = 0.2

#: Factors of the space-to-depth head (``build_generator(space_to_depth=s)``); 1 is
#: the paper's layout, where the dense field runs at the image's resolution.
SPACE_TO_DEPTH = (1, 2, 4)


def _norm(y: Any, batchnorm: bool, name: str) -> Any:
    return layers.BatchNormalization(name=name)(y) if batchnorm else y


def _dense_block(
    x: Any, channel_rate: int, dilation: int, dropout: float, index: int, batchnorm: bool
) -> Any:
    """One bottleneck block of the dense field; returns its `channel_rate` new maps."""
    prefix = f"dense{index}"
    y = layers.LeakyReLU(negative_slope=_LEAK, name=f"{prefix}_act1")(x)
    y = layers.Conv2D(4 * channel_rate, 1, padding="same", name=f"{prefix}_conv1x1")(y)
    y = _norm(y, batchnorm, f"{prefix}_bn1")
    y = layers.LeakyReLU(negative_slope=_LEAK, name=f"{prefix}_act2")(y)
    y = layers.Conv2D(
        channel_rate,
        3,
        padding="same",
        dilation_rate=dilation,
        name=f"{prefix}_conv3x3",
    )(y)
    y = _norm(y, batchnorm, f"{prefix}_bn2")
    # The DGF paper uses dropout as the generator's noise source (no z input).
    return layers.Dropout(dropout, name=f"{prefix}_dropout")(y)


@keras.saving.register_keras_serializable(package="dgf")
class ResidualOutput(layers.Layer):
    """``clip(blurred + residual, -1, 1)``: the generator predicts a correction.

    Takes ``[blurred, residual]``, both (B, H, W, 3) in [-1, 1] (the residual may be
    any float dtype; the sum is float32). The clip keeps the output a valid image.
    """

    def call(self, inputs: list[Any]) -> Any:
        blurred, residual = inputs
        total = ops.cast(blurred, "float32") + ops.cast(residual, "float32")
        return ops.clip(total, -1.0, 1.0)

    def compute_output_shape(
        self, input_shape: list[tuple[int | None, ...]]
    ) -> tuple[int | None, ...]:
        return tuple(input_shape[0])


def _pad_amount(side: Any, factor: int) -> Any:
    return (factor - side % factor) % factor


@keras.saving.register_keras_serializable(package="dgf")
class SpaceToDepth(layers.Layer):
    """Pixel-unshuffle: (B, H, W, C) -> (B, ceil(H/s), ceil(W/s), C * s * s).

    An image whose sides are not multiples of ``factor`` is first extended at its
    bottom and right edges by mirroring (no new content, no dark seam), so the
    generator takes any size; :class:`DepthToSpace` cuts the extension off again.
    Channel order within each ``s x s`` block is (row, column, channel), as
    ``tf.nn.space_to_depth`` orders it.
    """

    def __init__(self, factor: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(factor) < 1:
            raise ValueError(f"factor must be a positive integer, got {factor}")
        self.factor = int(factor)

    def call(self, images: Any) -> Any:
        s = self.factor
        shape = ops.shape(images)
        channels = images.shape[-1]
        pad_h, pad_w = _pad_amount(shape[1], s), _pad_amount(shape[2], s)
        x = ops.pad(images, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], mode="symmetric")
        rows, cols = (shape[1] + pad_h) // s, (shape[2] + pad_w) // s
        x = ops.reshape(x, (-1, rows, s, cols, s, channels))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (-1, rows, cols, s * s * channels))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        batch, height, width, channels = input_shape
        s = self.factor

        def side(n):
            return None if n is None else -(-n // s)

        return (batch, side(height), side(width), channels * s * s)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="dgf")
class DepthToSpace(layers.Layer):
    """Pixel-shuffle, the inverse of :class:`SpaceToDepth`, cut to a reference size.

    Takes ``[features, reference]``: features (B, h, w, C * s * s) become
    (B, h * s, w * s, C), and the result is cut to the reference image's height and
    width (undoing :class:`SpaceToDepth`'s mirrored extension).
    """

    def __init__(self, factor: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(factor) < 1:
            raise ValueError(f"factor must be a positive integer, got {factor}")
        self.factor = int(factor)

    def call(self, inputs: list[Any]) -> Any:
        features, reference = inputs
        s = self.factor
        shape = ops.shape(features)
        channels = features.shape[-1] // (s * s)
        x = ops.reshape(features, (-1, shape[1], shape[2], s, s, channels))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        x = ops.reshape(x, (-1, shape[1] * s, shape[2] * s, channels))
        size = ops.shape(reference)
        return x[:, : size[1], : size[2], :]

    def compute_output_shape(
        self, input_shape: list[tuple[int | None, ...]]
    ) -> tuple[int | None, ...]:
        features, reference = input_shape
        return (features[0], reference[1], reference[2], features[3] // self.factor**2)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "factor": self.factor}


def build_generator(
    channel_rate: int = 64,
    dropout: float = 0.5,
    residual: bool = False,
    batchnorm: bool = True,
    space_to_depth: int = 1,
    name: str = "generator",
    blocks: int = DEFAULT_BLOCKS,
) -> keras.Model:
    """Build the DGF generator (head, dense field of ``blocks`` blocks, tail with
    global skip).

    Args:
        channel_rate: growth rate `cr` of the dense field; the head and bottlenecks use
            `4 * cr` maps. 64 is the published size (3,197,827 trainable parameters).
        dropout: dropout rate at the end of every dense block, in [0, 1).
        residual: False is the paper's layout (the last 3x3 conv with tanh *is* the
            image). True makes the last 3x3 conv (no activation, initialised to zero)
            predict a correction ``r`` and outputs ``clip(blurred + r, -1, 1)``, as
            DeblurGAN's ``learn_residual``: a fresh generator is then exactly the
            identity, so training starts from the blurred input's quality. Same
            parameter count either way.
        batchnorm: True is the paper's layout (BatchNorm after every dense-block and
            tail 1x1/3x3 conv). False drops every BatchNorm, as restoration networks
            since EDSR do: no train/inference statistics gap to re-estimate, and each
            step and inference call does less work.
        space_to_depth: 1 is the paper's layout. 2 or 4 pixel-unshuffles the image
            by that factor before the head (each ``s x s`` block becomes one
            position with ``3 s^2`` channels) and pixel-shuffles the last
            convolution's ``3 s^2`` maps back to full resolution: the dense field
            runs at 1/s of the image's resolution, which multiplies the receptive
            field by s and divides the work per pixel by about s^2 at the same
            channel rate. Any image size works (see :class:`SpaceToDepth`).
        name: model name.
        blocks: dense blocks in the field, with the dilations of
            :func:`dense_dilations`; 10 is the paper's layout. Fewer blocks train and
            run faster and reach less far (each block reads all the earlier ones' maps,
            so the work grows faster than the count).

    Returns:
        A fully convolutional model mapping (B, H, W, 3) float in [-1, 1] (blurred) to
        (B, H, W, 3) float32 in [-1, 1] (deblurred), for any H and W.
    """
    if channel_rate < 1:
        raise ValueError(f"channel_rate must be a positive integer, got {channel_rate}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if space_to_depth not in SPACE_TO_DEPTH:
        raise ValueError(f"space_to_depth must be one of {SPACE_TO_DEPTH}, got {space_to_depth}")
    if isinstance(blocks, bool) or int(blocks) != blocks or blocks < 1:
        raise ValueError(f"blocks must be a positive integer, got {blocks}")
    cr = int(channel_rate)
    dilations = dense_dilations(int(blocks))
    s = int(space_to_depth)

    blurred = keras.Input(shape=(None, None, 3), name="blurred")
    packed = SpaceToDepth(s, name="space_to_depth")(blurred) if s > 1 else blurred
    h = layers.Conv2D(4 * cr, 3, padding="same", name="head_conv")(packed)

    x = h
    d = h
    for index, dilation in enumerate(dilations, start=1):
        d = _dense_block(x, cr, dilation, dropout, index, batchnorm)
        # The last block's output feeds the tail directly, not the running concat.
        if index < len(dilations):
            x = layers.Concatenate(name=f"dense{index}_concat")([x, d])

    y = layers.LeakyReLU(negative_slope=_LEAK, name="tail_act1")(d)
    y = layers.Conv2D(4 * cr, 1, padding="same", name="tail_conv1x1")(y)
    y = _norm(y, batchnorm, "tail_bn")
    y = layers.Concatenate(name="global_skip")([h, y])
    y = layers.Conv2D(cr, 3, padding="same", name="tail_conv3x3")(y)
    y = layers.LeakyReLU(negative_slope=_LEAK, name="tail_act2")(y)
    # float32 so the image (and every loss on it) keeps full precision under a
    # mixed policy; this conv is tiny, so running it in float32 costs nothing.
    if not residual:
        if s == 1:
            deblurred = layers.Conv2D(
                3, 3, padding="same", activation="tanh", dtype="float32", name="deblurred"
            )(y)
            return keras.Model(blurred, deblurred, name=name)
        image = layers.Conv2D(
            3 * s * s, 3, padding="same", activation="tanh", dtype="float32", name="image"
        )(y)
        deblurred = DepthToSpace(s, dtype="float32", name="deblurred")([image, blurred])
        return keras.Model(blurred, deblurred, name=name)
    # No tanh on the correction: the clip already bounds the output, and a tanh would
    # only shrink the large corrections that heavy blur needs.
    correction = layers.Conv2D(
        3 * s * s, 3, padding="same", kernel_initializer="zeros", bias_initializer="zeros",
        dtype="float32", name="residual",
    )(y)
    if s > 1:
        correction = DepthToSpace(s, dtype="float32", name="depth_to_space")(
            [correction, blurred])
    deblurred = ResidualOutput(dtype="float32", name="deblurred")([blurred, correction])
    return keras.Model(blurred, deblurred, name=name)


def is_residual(generator: keras.Model) -> bool:
    """Whether a (possibly loaded) generator adds its output to the blurred input."""
    return any(isinstance(layer, ResidualOutput) for layer in generator.layers)


def generator_layout(generator: keras.Model) -> dict[str, Any] | None:
    """``channel_rate``, ``blocks``, ``residual``, ``batchnorm`` and ``space_to_depth``
    of a (possibly loaded) DGF generator, as :func:`build_generator` takes them; None
    when ``generator`` is not one (it has no ``head_conv`` layer)."""
    try:
        head = generator.get_layer("head_conv")
    except ValueError:
        return None
    return {
        "channel_rate": head.filters // 4,
        "blocks": sum(layer.name.startswith("dense") and layer.name.endswith("_conv3x3")
                      for layer in generator.layers),
        "residual": is_residual(generator),
        "batchnorm": any(isinstance(layer, layers.BatchNormalization)
                         for layer in generator.layers),
        "space_to_depth": next((layer.factor for layer in generator.layers
                                if isinstance(layer, SpaceToDepth)), 1),
    }


def check_discriminator_size(height: int, width: int, patch: int) -> None:
    """Raise `DgfError` unless an image of `height` x `width` tiles into `patch` squares.

    The discriminator cuts its input into non-overlapping `patch` x `patch` tiles, so
    both sides must be positive multiples of `patch`.
    """
    if patch < 1:
        raise DgfError(f"discriminator patch size must be positive, got {patch}")
    if height < patch or width < patch or height % patch or width % patch:
        raise DgfError(
            f"image size {height}x{width} does not tile into the discriminator's "
            f"patch size {patch}: height and width must be multiples of it; use a "
            f"crop size that is a multiple of {patch} or change the patch size"
        )


@keras.saving.register_keras_serializable(package="dgf")
class PatchTiles(layers.Layer):
    """Cut images into non-overlapping square tiles stacked along the batch axis.

    (B, H, W, C) -> (B * (H/p) * (W/p), p, p, C), tiles in row-major order within each
    image, images one after the other. H and W must be multiples of `patch`.
    """

    def __init__(self, patch: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(patch) < 1:
            raise ValueError(f"patch must be a positive integer, got {patch}")
        self.patch = int(patch)

    def _check_static(self, height: int | None, width: int | None) -> None:
        for side in (height, width):
            if side is not None and (side < self.patch or side % self.patch):
                raise ValueError(
                    f"{self.name}: image size {height}x{width} is not a multiple of the "
                    f"discriminator patch size {self.patch}; crop or resize to a multiple "
                    f"of {self.patch}"
                )

    def call(self, images: Any) -> Any:
        p = self.patch
        static = images.shape
        self._check_static(static[1], static[2])
        dynamic = ops.shape(images)
        height, width, channels = dynamic[1], dynamic[2], static[3]
        rows, cols = height // p, width // p
        x = ops.reshape(images, (-1, rows, p, cols, p, channels))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (-1, p, p, channels))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        batch, height, width, channels = input_shape
        self._check_static(height, width)
        tiles = None
        if batch is not None and height is not None and width is not None:
            tiles = batch * (height // self.patch) * (width // self.patch)
        return (tiles, self.patch, self.patch, channels)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "patch": self.patch}


@keras.saving.register_keras_serializable(package="dgf")
class PatchLogits(layers.Layer):
    """Regroup per-tile scores (B * P, 1) into per-image rows (B, P).

    Takes `[tile_scores, images]`; the images only supply the batch size, which is
    what makes this work for any number of patches per image.
    """

    def call(self, inputs: list[Any]) -> Any:
        scores, images = inputs
        return ops.reshape(scores, (ops.shape(images)[0], -1))

    def compute_output_shape(
        self, input_shape: list[tuple[int | None, ...]]
    ) -> tuple[int | None, ...]:
        scores_shape, images_shape = input_shape
        patches = None
        if scores_shape[0] is not None and images_shape[0]:
            patches = scores_shape[0] // images_shape[0]
        return (images_shape[0], patches)


def build_discriminator(
    channel_rate: int = 64, patch: int = 64, name: str = "discriminator"
) -> keras.Model:
    """Build the DGF discriminator: one shared PatchGAN scored on every image tile.

    The image is cut into non-overlapping `patch` x `patch` tiles (16 for 256x256 with
    the default 64) and the same PatchGAN -- four [Conv 3x3 stride 2 -> BatchNorm ->
    LeakyReLU(0.2)] with `cr, 2cr, 4cr, 4cr` filters, Flatten, Dense(1) -- scores each.
    All tiles of the batch go through the PatchGAN as one stacked batch, so its
    BatchNorm statistics are taken over every tile of every image.

    The model returns **logits**, not probabilities: D's probability that an image is
    real is the mean over its patches of sigmoid(logit) (the seed's average of the
    per-patch sigmoid outputs); `dgf.losses.patch_probability` computes it, and the
    adversarial losses in `dgf.losses` work from the logits for numerical stability.

    Args:
        channel_rate: filters of the first PatchGAN convolution (64 in the paper:
            966,401 trainable parameters).
        patch: tile side in pixels; input height and width must be multiples of it
            (see `check_discriminator_size`).
        name: model name.

    Returns:
        A model mapping (B, H, W, 3) float in [-1, 1] to (B, H/patch * W/patch) float32
        per-patch logits.
    """
    if channel_rate < 1:
        raise ValueError(f"channel_rate must be a positive integer, got {channel_rate}")
    cr = int(channel_rate)
    images = keras.Input(shape=(None, None, 3), name="image")
    x = PatchTiles(patch, name="patch_tiles")(images)
    for index, filters in enumerate((cr, 2 * cr, 4 * cr, 4 * cr), start=1):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", name=f"patchgan_conv{index}")(x)
        x = layers.BatchNormalization(name=f"patchgan_bn{index}")(x)
        x = layers.LeakyReLU(negative_slope=_LEAK, name=f"patchgan_act{index}")(x)
    x = layers.Flatten(name="patchgan_flatten")(x)
    # float32 logits: the adversarial losses exponentiate them.
    x = layers.Dense(1, dtype="float32", name="patchgan_logit")(x)
    logits = PatchLogits(dtype="float32", name="patch_logits")([x, images])
    return keras.Model(images, logits, name=name)


def count_params(model: keras.Model) -> tuple[int, int]:
    """Return `(trainable, non_trainable)` scalar parameter counts of a built model."""
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    non_trainable = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return trainable, non_trainable
