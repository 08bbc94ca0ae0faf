"""Losses of the DGF GAN: VGG16 perceptual, L1, and adversarial terms from patch logits.

Images are (B, H, W, 3) float in [-1, 1] everywhere (the generator's tanh range). All
losses return float32 scalars, also under a mixed-precision policy. The discriminator
(`dgf.models.build_discriminator`) returns per-patch logits (B, P); D's probability
that an image is real is the mean over its patches of sigmoid(logit), and the
adversarial losses below evaluate the logarithms of that mean stably.
"""
from __future__ import annotations

import math
import os
import socket
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import keras
from keras import ops

from dgf.config import TrainConfig
from dgf.errors import DgfError

#: What Keras itself downloads for `VGG16(include_top=False, weights="imagenet")`; the
#: same name, origin and hash make a file Keras already cached usable here offline.
VGG16_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG16_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + VGG16_NOTOP_FILE
)
VGG16_NOTOP_MD5 = "6d6bbae143d832006294945121d1f1fc"

#: ImageNet channel means in BGR order, as subtracted by `vgg16.preprocess_input`.
_IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)

# Per socket operation, not for the whole 58 MB download: only stops a dead network
# from stalling the start of training.
_DOWNLOAD_SOCKET_TIMEOUT_S = 30.0


class VGGWeightsUnavailable(DgfError):
    """The ImageNet VGG16 weights the perceptual loss needs could not be found or fetched."""


_DEFAULTS = TrainConfig()


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator's loss terms: each float field NAME is TrainConfig's
    ``NAME_weight`` (:meth:`from_config`), whose default it takes (the DGF paper's
    145, 170 and 1)."""

    perceptual: float = _DEFAULTS.perceptual_weight
    pixel: float = _DEFAULTS.pixel_weight  # weight of the pixel loss, whichever `pixel_loss` names
    adversarial: float = _DEFAULTS.adversarial_weight
    pixel_loss: str = _DEFAULTS.pixel_loss
    ssim: float = _DEFAULTS.ssim_weight  # weight of 1 - SSIM

    @classmethod
    def weight_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name != "pixel_loss")

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> "LossWeights":
        weights = {name: getattr(cfg, f"{name}_weight") for name in cls.weight_names()}
        return cls(pixel_loss=cfg.pixel_loss, **weights)

    def __post_init__(self) -> None:
        if self.pixel_loss not in PIXEL_LOSS_FUNCTIONS:
            raise DgfError(f"pixel_loss must be one of {sorted(PIXEL_LOSS_FUNCTIONS)}, "
                           f"got {self.pixel_loss!r}")
        for name in self.weight_names():
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise DgfError(f"loss weight {name} must be a finite number >= 0, got {value}")


# The seed fed VGG16 images in [-1, 1] and tuned its weight of 145 for features of
# that size. VGG16 is fed here what it was trained on (0-255, mean-subtracted),
# which makes the features about 127.5x larger; the squared difference is scaled
# back by 127.5**2 so the seed's loss weights keep their balance with L1.
FEATURE_SCALE = 1.0 / 127.5**2


def vgg_weights_cached() -> bool:
    """Whether the ImageNet VGG16 notop weights are already in the Keras cache."""
    return (keras_cache_dir() / "models" / VGG16_NOTOP_FILE).is_file()


def keras_cache_dir() -> Path:
    """The directory Keras caches downloads under: `$KERAS_HOME`, else `~/.keras`.

    Read from the environment at call time (Keras reads it once at import), with
    Keras' own fallback to `<tmp>/.keras` when the directory is not writable.
    """
    base = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    if not os.access(base, os.W_OK):
        base = Path(tempfile.gettempdir()) / ".keras"
    return base


def vgg16_imagenet_weights() -> Path:
    """Return the path of the cached ImageNet VGG16 notop weights, downloading if needed.

    Raises:
        VGGWeightsUnavailable: the file is not cached and cannot be downloaded; the
            message says where to put it and how to train without it.
    """
    cache_dir = keras_cache_dir()
    target = cache_dir / "models" / VGG16_NOTOP_FILE
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        path = keras.utils.get_file(
            VGG16_NOTOP_FILE,
            VGG16_NOTOP_URL,
            cache_subdir="models",
            file_hash=VGG16_NOTOP_MD5,
            cache_dir=str(cache_dir),
        )
    # get_file wraps network failures in a bare Exception and hash mismatches in
    # ValueError; whatever the cause, the remedy for the user is the same.
    except Exception as exc:  # noqa: BLE001
        raise VGGWeightsUnavailable(
            f"the perceptual loss needs the ImageNet VGG16 weights "
            f"{VGG16_NOTOP_FILE}, which are not in the Keras cache and could not be "
            f"downloaded from {VGG16_NOTOP_URL} ({exc}). Either download that file "
            f"and put it at {target}, or pass --vgg-weights PATH pointing at a copy "
            f"of it, or train without the perceptual term with --perceptual-weight 0"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return Path(path)


def vgg_preprocess(images: Any) -> Any:
    """Map images to what ImageNet VGG16 was trained on, inside the graph.

    Args:
        images: (B, H, W, 3) float RGB in [-1, 1].

    Returns:
        (B, H, W, 3) float32 BGR in [0, 255] minus the ImageNet channel means, equal to
        `keras.applications.vgg16.preprocess_input((images + 1) * 127.5)`.
    """
    x = (ops.cast(images, "float32") + 1.0) * 127.5
    x = ops.flip(x, axis=-1)
    return x - ops.convert_to_tensor(_IMAGENET_BGR_MEAN, dtype="float32")


class PerceptualLoss:
    """Mean squared difference of frozen VGG16 features of sharp and deblurred images.

    The VGG16 is built once here, truncated at `layer`, frozen, and always computes in
    float32 (it is built under a float32 policy even when a mixed policy is active).

    Args:
        weights: `"imagenet"` for the ImageNet weights from the Keras cache (downloaded
            there on first use); a path to a local copy of
            `vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5` (or a `.weights.h5`
            saved from a Keras `VGG16(include_top=False)`); or `None` for random
            weights, which make the loss meaningless and exist for tests only.
        layer: the VGG16 layer whose output is compared (the paper: `block3_conv3`).
        input_shape: VGG input shape; the default accepts any image size.

    Raises:
        VGGWeightsUnavailable: `"imagenet"` requested but not cached and not downloadable.
        DgfError: a weights path that is missing or not a VGG16 notop weights file, or
            an unknown layer name.
    """

    def __init__(
        self,
        weights: str | Path | None = "imagenet",
        layer: str = "block3_conv3",
        input_shape: tuple[int | None, int | None, int] = (None, None, 3),
        feature_scale: float = FEATURE_SCALE,
    ) -> None:
        self.feature_scale = float(feature_scale)
        if weights == "imagenet":
            weights_path: Path | None = vgg16_imagenet_weights()
        elif weights is None:
            weights_path = None
        else:
            weights_path = Path(weights).expanduser()
            if not weights_path.is_file():
                raise DgfError(
                    f"VGG16 weights file {weights_path} does not exist; pass the path of "
                    f"{VGG16_NOTOP_FILE} or use 'imagenet' for the Keras cache"
                )
            if weights_path.suffix not in (".h5", ".hdf5"):
                raise DgfError(
                    f"VGG16 weights file {weights_path} must be an HDF5 weights file "
                    f"(.h5), such as {VGG16_NOTOP_FILE}"
                )

        policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy("float32")
        try:
            vgg = keras.applications.VGG16(
                include_top=False, weights=None, input_shape=tuple(input_shape)
            )
        finally:
            keras.config.set_dtype_policy(policy)

        if weights_path is not None:
            try:
                vgg.load_weights(weights_path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise DgfError(
                    f"could not load VGG16 weights from {weights_path}: "
                    f"{str(exc).rstrip('.')}. It must hold the weights of Keras' VGG16 "
                    f"without its top (13 convolutions), as {VGG16_NOTOP_FILE} does"
                ) from exc

        try:
            features = vgg.get_layer(layer).output
        except ValueError as exc:
            names = ", ".join(lay.name for lay in vgg.layers[1:])
            raise DgfError(f"VGG16 has no layer {layer!r}; choose one of: {names}") from exc
        self.layer = layer
        self.weights = weights
        self.features = keras.Model(vgg.input, features, name=f"vgg16_{layer}")
        self.features.trainable = False

    def __call__(self, sharp: Any, deblurred: Any) -> Any:
        """Perceptual loss between two image batches.

        Args:
            sharp: (B, H, W, 3) float in [-1, 1], the target images.
            deblurred: (B, H, W, 3) float in [-1, 1], the generator's output.

        Returns:
            float32 scalar: mean over batch, positions and channels of the squared
            difference of the VGG16 `layer` features.
        """
        # Two passes, not one over the concatenated batches: under a gradient tape a
        # joint pass back-propagates through VGG for the sharp half too, which no
        # gradient needs (measured: 0.24 s against 0.16 s for loss + gradient at
        # batch 4, 64x64; 0.50 s against 0.35 s at 96x96).
        target = ops.stop_gradient(self.features(vgg_preprocess(sharp), training=False))
        features = self.features(vgg_preprocess(deblurred), training=False)
        return ops.mean(ops.square(target - features)) * self.feature_scale


def l1_loss(sharp: Any, deblurred: Any) -> Any:
    """Mean absolute difference of (B, H, W, 3) images in [-1, 1]; float32 scalar."""
    return ops.mean(ops.abs(ops.cast(sharp, "float32") - ops.cast(deblurred, "float32")))


def l2_loss(sharp: Any, deblurred: Any) -> Any:
    """Mean squared difference of (B, H, W, 3) images in [-1, 1] (what PSNR measures)."""
    return ops.mean(ops.square(ops.cast(sharp, "float32") - ops.cast(deblurred, "float32")))


#: Charbonnier's epsilon, in [-1, 1] units (about 0.13 grey levels of 255).
CHARBONNIER_EPS = 1e-3


def charbonnier_loss(sharp: Any, deblurred: Any) -> Any:
    """mean(sqrt(d^2 + eps^2)) of (B, H, W, 3) images in [-1, 1]: L1 away from zero,
    smooth at it (the loss of LapSRN, MPRNet and others)."""
    d = ops.cast(sharp, "float32") - ops.cast(deblurred, "float32")
    return ops.mean(ops.sqrt(ops.square(d) + CHARBONNIER_EPS**2))


def ssim_loss(sharp: Any, deblurred: Any) -> Any:
    """1 - SSIM of (B, H, W, 3) images in [-1, 1], with the reported metric's own
    definition (scikit-image defaults: 7x7 uniform window, sample covariance,
    K1 = 0.01, K2 = 0.03, mean over valid windows and channels); float32 scalar.

    PSNR follows from the L2 loss, but heavy blur leaves many sharp images equally
    likely, and their mean (what L2 learns) is smooth; this term asks for local
    contrast and structure directly.
    """
    x = ops.cast(sharp, "float32")
    y = ops.cast(deblurred, "float32")
    window = 7
    norm = window * window / (window * window - 1.0)  # sample covariance
    c1, c2 = (0.01 * 2.0) ** 2, (0.03 * 2.0) ** 2  # data range 2 in [-1, 1]

    def mean(t: Any) -> Any:
        return ops.average_pool(t, window, strides=1, padding="valid")

    mx, my = mean(x), mean(y)
    vx = norm * (mean(x * x) - mx * mx)
    vy = norm * (mean(y * y) - my * my)
    cxy = norm * (mean(x * y) - mx * my)
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return 1.0 - ops.mean(ssim_map)


#: The pixel losses by name (the ``pixel_loss`` config key).
PIXEL_LOSS_FUNCTIONS = {"l1": l1_loss, "l2": l2_loss, "charbonnier": charbonnier_loss}


def _log_mean_sigmoid(logits: Any) -> Any:
    """log(mean_p sigmoid(l_p)) per row of (B, P) logits, stable for any magnitude."""
    logits = ops.cast(logits, "float32")
    patches = ops.cast(ops.shape(logits)[-1], "float32")
    return ops.logsumexp(ops.log_sigmoid(logits), axis=-1) - ops.log(patches)


def patch_probability(logits: Any) -> Any:
    """D's probability that each image is real: (B, P) logits -> (B,) mean sigmoid."""
    return ops.mean(ops.sigmoid(ops.cast(logits, "float32")), axis=-1)


def discriminator_loss(real_logits: Any, fake_logits: Any, real_label: float = 1.0) -> Any:
    """Binary cross-entropy of D on sharp (real) and deblurred (fake) images.

    With D(x) = mean_p sigmoid(l_p): mean over the batch of
    -[y log D(real) + (1 - y) log(1 - D(real)) + log(1 - D(fake))], y = `real_label`
    (1.0 for plain BCE; e.g. 0.9 for one-sided label smoothing). log(1 - D) uses
    1 - sigmoid(l) = sigmoid(-l), so nothing saturates even at logits of +-1e4.

    Args:
        real_logits: (B, P) discriminator logits of sharp images.
        fake_logits: (B, P) discriminator logits of deblurred images.
        real_label: target for real images, in (0, 1].

    Returns:
        float32 scalar.
    """
    if not 0.0 < real_label <= 1.0:
        raise ValueError(f"real_label must be in (0, 1], got {real_label}")
    real_term = real_label * _log_mean_sigmoid(real_logits)
    if real_label < 1.0:
        real_term = real_term + (1.0 - real_label) * _log_mean_sigmoid(
            -ops.cast(real_logits, "float32")
        )
    fake_term = _log_mean_sigmoid(-ops.cast(fake_logits, "float32"))
    return -ops.mean(real_term + fake_term)


def generator_adversarial_loss(fake_logits: Any) -> Any:
    """-log D(G(blurred)) averaged over the batch, from (B, P) logits; float32 scalar."""
    return -ops.mean(_log_mean_sigmoid(fake_logits))


def generator_loss_terms(
    sharp: Any,
    deblurred: Any,
    fake_logits: Any,
    perceptual: PerceptualLoss | None,
    weights: LossWeights = LossWeights(),
) -> dict[str, Any]:
    """All generator loss terms and their weighted sum.

    Args:
        sharp: (B, H, W, 3) float in [-1, 1], target images.
        deblurred: (B, H, W, 3) float in [-1, 1], generator output.
        fake_logits: (B, P) discriminator logits of `deblurred`, or None for the
            content-only loss (warm-up: `g_adv` is 0 and D is not run).
        perceptual: the perceptual loss; `None` turns the term off (as does
            `weights.perceptual == 0`), and then VGG16 is not run at all.
        weights: weight of each term.

    Returns:
        float32 scalars `g_perceptual` (0 when off), `g_pixel` (the `pixel_loss`
        term), `g_l1` (the L1 distance, logged whatever the pixel loss), `g_ssim`
        (1 - SSIM, 0 when its weight is 0), `g_adv` (unweighted) and `g_loss` = the
        weighted sum.
    """
    if perceptual is not None and weights.perceptual > 0:
        g_perceptual = perceptual(sharp, deblurred)
    else:
        g_perceptual = ops.zeros((), dtype="float32")
    g_l1 = l1_loss(sharp, deblurred)
    g_pixel = g_l1 if weights.pixel_loss == "l1" else PIXEL_LOSS_FUNCTIONS[weights.pixel_loss](
        sharp, deblurred)
    if weights.ssim > 0:
        g_ssim = ssim_loss(sharp, deblurred)
    else:
        g_ssim = ops.zeros((), dtype="float32")
    if fake_logits is None:
        g_adv = ops.zeros((), dtype="float32")
    else:
        g_adv = generator_adversarial_loss(fake_logits)
    g_loss = (weights.perceptual * g_perceptual + weights.pixel * g_pixel
              + weights.ssim * g_ssim + weights.adversarial * g_adv)
    return {"g_perceptual": g_perceptual, "g_pixel": g_pixel, "g_l1": g_l1,
            "g_ssim": g_ssim, "g_adv": g_adv, "g_loss": g_loss}
