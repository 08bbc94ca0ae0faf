"""Losses of the DGF GAN: VGG16 perceptual, L1, and adversarial terms from patch logits.

Images are (B, H, W, 3) float in [-1, 1] everywhere (the generator's tanh range). All
losses return float32 scalars, also under a mixed-precision policy. The discriminator
(`dgf.models.build_discriminator`) returns per-patch logits (B, P); D's probability
that an image is real is the mean over its patches of sigmoid(logit), and the
adversarial losses below evaluate the logarithms of that mean stably.

The generator's loss is one table, :data:`GENERATOR_TERMS`: each row names a term, the
setting that weighs it and the function that computes it; :func:`generator_loss_terms`
sums the rows and the training loop logs them by their names.
"""
from __future__ import annotations

import math
import os
import socket
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

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


# --------------------------------------------------------------------------- the loss table
@dataclass(frozen=True, eq=False)
class LossInputs:
    """What the generator's loss terms are computed from, in one step: the images
    (float in [-1, 1]), D's logits of the deblurred ones (None in warm-up, when D is
    not run), the perceptual loss (None: off) and the pixel loss's name."""

    sharp: Any
    deblurred: Any
    fake_logits: Any
    perceptual: PerceptualLoss | None
    pixel_loss: str

    @cached_property
    def l1(self) -> Any:
        """The L1 distance, computed once: logged, and the pixel term when it is L1."""
        return l1_loss(self.sharp, self.deblurred)


def _perceptual_term(x: LossInputs) -> Any:
    return None if x.perceptual is None else x.perceptual(x.sharp, x.deblurred)


def _l1_term(x: LossInputs) -> Any:
    return x.l1


def _pixel_term(x: LossInputs) -> Any:
    if x.pixel_loss == "l1":
        return x.l1
    return PIXEL_LOSS_FUNCTIONS[x.pixel_loss](x.sharp, x.deblurred)


def _ssim_term(x: LossInputs) -> Any:
    return ssim_loss(x.sharp, x.deblurred)


def _adversarial_term(x: LossInputs) -> Any:
    return None if x.fake_logits is None else generator_adversarial_loss(x.fake_logits)


@dataclass(frozen=True)
class LossTerm:
    """One row of :data:`GENERATOR_TERMS`.

    ``name``: the key the term is logged under (``metrics.jsonl``, TensorBoard
    ``train/NAME``, the NaN guard). ``weight``: the :class:`TrainConfig` setting that
    weighs it in ``g_loss``; None for a term that is logged only. ``compute``: the
    term, a float32 scalar, from the step's :class:`LossInputs`, or None where it
    does not apply (then logged as 0). ``skip_at_zero``: at weight 0 the term is not
    computed at all and logged as 0 (VGG16 and SSIM cost time); without it the term
    is computed and logged whatever its weight. ``bar``: its label and number format
    on the progress bar, or None.
    """

    name: str
    weight: str | None
    compute: Callable[[LossInputs], Any]
    skip_at_zero: bool = False
    bar: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if self.skip_at_zero and self.weight is None:
            raise ValueError(f"loss term {self.name}: skip_at_zero needs a weight")

    @property
    def weight_name(self) -> str | None:
        """The term's keyword in :class:`LossWeights`: its setting less ``_weight``."""
        return None if self.weight is None else self.weight.removesuffix("_weight")


#: The generator's loss terms. ``g_loss`` is the sum of weight x term over the rows
#: with a weight, in this order; every row is logged under its name, and the NaN
#: guard checks them in this order. A new term is a row here and its ``NAME_weight``
#: setting in :class:`TrainConfig`.
GENERATOR_TERMS: tuple[LossTerm, ...] = (
    LossTerm("g_perceptual", "perceptual_weight", _perceptual_term, skip_at_zero=True),
    # L1 whatever the pixel loss, so that runs with different pixel losses compare.
    LossTerm("g_l1", None, _l1_term),
    LossTerm("g_pixel", "pixel_weight", _pixel_term, bar=("pixel", ".3f")),
    LossTerm("g_ssim", "ssim_weight", _ssim_term, skip_at_zero=True),  # 1 - SSIM
    # Logged at weight 0 too (and 0 in warm-up, when D is not run).
    LossTerm("g_adv", "adversarial_weight", _adversarial_term, bar=("adv", ".3g")),
)

#: The name the weighted sum is logged under.
TOTAL_LOSS = "g_loss"

_WEIGHTED = tuple(term for term in GENERATOR_TERMS if term.weight is not None)


def logged_names() -> tuple[str, ...]:
    """The names :func:`generator_loss_terms` returns: the table's, then ``g_loss``."""
    return (*(term.name for term in GENERATOR_TERMS), TOTAL_LOSS)


class LossWeights:
    """The weight in ``g_loss`` of each weighted row of :data:`GENERATOR_TERMS`, by its
    name in :meth:`weight_names` (its setting less ``_weight``: ``perceptual``,
    ``pixel``, ``ssim``, ``adversarial``), with :class:`TrainConfig`'s default for any
    not given (145, 170, 0 and 1: the DGF paper's, SSIM off); and ``pixel_loss``, the
    name of the pixel loss ``pixel`` weighs. Read-only; ``weights.pixel`` reads one weight.
    """

    def __init__(self, *, pixel_loss: str = _DEFAULTS.pixel_loss, **weights: float) -> None:
        unknown = sorted(set(weights) - set(self.weight_names()))
        if unknown:
            raise TypeError(f"LossWeights has no weight {', '.join(unknown)}; the weighted "
                            f"terms are {', '.join(self.weight_names())}")
        if pixel_loss not in PIXEL_LOSS_FUNCTIONS:
            raise DgfError(f"pixel_loss must be one of {sorted(PIXEL_LOSS_FUNCTIONS)}, "
                           f"got {pixel_loss!r}")
        values = {}
        for term in _WEIGHTED:
            value = weights.get(term.weight_name, getattr(_DEFAULTS, term.weight))
            if not math.isfinite(value) or value < 0:
                raise DgfError(f"loss weight {term.weight_name} must be a finite number "
                               f">= 0, got {value}")
            values[term.weight_name] = value
        object.__setattr__(self, "pixel_loss", pixel_loss)
        object.__setattr__(self, "_weights", values)

    @classmethod
    def weight_names(cls) -> tuple[str, ...]:
        return tuple(term.weight_name for term in _WEIGHTED)

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> "LossWeights":
        weights = {term.weight_name: getattr(cfg, term.weight) for term in _WEIGHTED}
        return cls(pixel_loss=cfg.pixel_loss, **weights)

    def of(self, term: LossTerm) -> float:
        """The weight of a weighted row of the table."""
        return self._weights[term.weight_name]

    def __getattr__(self, name: str) -> float:
        weights = self.__dict__.get("_weights", {})
        if name in weights:
            return weights[name]
        raise AttributeError(f"LossWeights has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("LossWeights is read-only")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LossWeights):
            return NotImplemented
        return (self.pixel_loss, self._weights) == (other.pixel_loss, other._weights)

    def __hash__(self) -> int:
        return hash((self.pixel_loss, tuple(self._weights.items())))

    def __repr__(self) -> str:
        weights = ", ".join(f"{name}={value!r}" for name, value in self._weights.items())
        return f"LossWeights({weights}, pixel_loss={self.pixel_loss!r})"


def generator_loss_terms(
    sharp: Any,
    deblurred: Any,
    fake_logits: Any,
    perceptual: PerceptualLoss | None,
    weights: LossWeights = LossWeights(),
) -> dict[str, Any]:
    """Every row of :data:`GENERATOR_TERMS` and their weighted sum.

    Args:
        sharp: (B, H, W, 3) float in [-1, 1], target images.
        deblurred: (B, H, W, 3) float in [-1, 1], generator output.
        fake_logits: (B, P) discriminator logits of `deblurred`, or None for the
            content-only loss (warm-up: `g_adv` is 0 and D is not run).
        perceptual: the perceptual loss; `None` turns the term off (as does
            `weights.perceptual == 0`), and then VGG16 is not run at all.
        weights: weight of each term.

    Returns:
        float32 scalars under :func:`logged_names`: `g_perceptual` (0 when off),
        `g_l1` (the L1 distance, logged whatever the pixel loss), `g_pixel` (the
        `pixel_loss` term), `g_ssim` (1 - SSIM, 0 when its weight is 0), `g_adv`
        (unweighted) and `g_loss`, the sum of weight x term in the table's order.
    """
    inputs = LossInputs(sharp, deblurred, fake_logits, perceptual, weights.pixel_loss)
    terms: dict[str, Any] = {}
    for term in GENERATOR_TERMS:
        skipped = term.skip_at_zero and weights.of(term) == 0
        value = None if skipped else term.compute(inputs)
        terms[term.name] = ops.zeros((), dtype="float32") if value is None else value
    # Summed once every term is in the graph: the order in which the graph's ops are
    # made decides the order in which the gradients are added up, to the last bit.
    total = None
    for term in _WEIGHTED:
        part = weights.of(term) * terms[term.name]
        total = part if total is None else total + part
    terms[TOTAL_LOSS] = total
    return terms
