"""The image metrics, PSNR and SSIM, under both protocols: numpy and scikit-image
only (no TensorFlow, no matplotlib), so anything may score images.

Metric definitions (the docs quote these):

Metric definitions (the README quotes these):

* Both metrics are computed on RGB uint8 images, data range 255, after the
  generator's output has been turned into uint8 with :func:`to_uint8` -- the image
  a user would save -- never on the float output.
* PSNR is scikit-image's ``peak_signal_noise_ratio(sharp, test, data_range=255)``:
  ``10 * log10(255**2 / MSE)`` with the MSE taken over all pixels and all three
  channels of one image. A split's PSNR is the **mean of per-image PSNR**, not the
  PSNR of the mean MSE. Identical images have an infinite PSNR; :func:`psnr`
  returns ``inf`` as scikit-image does, and averages cap each image at
  ``PSNR_CAP_DB`` (100 dB) so one perfect image cannot make a split's mean infinite.
* SSIM is scikit-image's ``structural_similarity(sharp, test, channel_axis=-1,
  data_range=255)`` with its defaults: 7x7 uniform window, K1 = 0.01, K2 = 0.03,
  population statistics off (sample covariance), SSIM computed per channel and
  averaged over the three channels, then averaged over images.

That is the ``skimage`` protocol, the default. ``protocol="basicsr"`` follows
BasicSR's ``calculate_psnr`` / ``calculate_ssim`` (NAFNet, Restormer report with it):

* the uint8 images, cropped by ``crop_border`` at each side, are turned into float64;
* PSNR is the same ``10 * log10(255**2 / MSE)`` over all pixels and channels;
* SSIM is computed per channel and averaged over the channels, with C1 =
  (0.01 * 255)**2, C2 = (0.03 * 255)**2, and mu, sigma**2, sigma_12 window averages
  under the outer product of a normalised 1-D Gaussian of length 11, sigma 1.5,
  over the **valid** region only (the map is (H - 10) x (W - 10), no padding); the
  score is the mean of ((2 mu1 mu2 + C1)(2 sigma12 + C2)) / ((mu1**2 + mu2**2 +
  C1)(sigma1**2 + sigma2**2 + C2)).

``y_channel`` (either protocol) scores the luma instead of RGB: Y = 16 + (65.481 R
+ 128.553 G + 24.966 B) / 255 with R, G, B in [0, 255], computed in float32 and then
used as float64 (ITU-R BT.601 as MATLAB's ``rgb2ycbcr``; values in [16, 235]);
the ``skimage`` SSIM then runs on that one channel.

The "blurred" numbers score the blurred input against the sharp image: the
baseline a deblurring model must beat.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from dgf.errors import DgfError
from dgf.optional import Lazy
from dgf.options import DEFAULT_PROTOCOL, DEFAULT_Y_CHANNEL, METRIC_PROTOCOLS

# scikit-image's metrics, imported when an SSIM is first computed (0.1 s of the start
# of every command that imports this module, dgf-deblur among them, which never does).
skimage_metrics = Lazy("skimage.metrics")

PSNR_CAP_DB = 100.0
#: Side of BasicSR's Gaussian SSIM window, and its sigma.
BASICSR_WINDOW, BASICSR_SIGMA = 11, 1.5
#: Side of scikit-image's default (uniform) SSIM window.
SKIMAGE_WINDOW = 7


def _check_pair(reference: np.ndarray, test: np.ndarray) -> None:
    for name, img in (("reference", reference), ("test", test)):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
            got = getattr(img, "dtype", type(img).__name__)
            raise DgfError(f"{name} image must be a uint8 array (H, W, 3); got {got}")
        if img.ndim != 3 or img.shape[-1] != 3:
            raise DgfError(f"{name} image must have shape (H, W, 3); got {img.shape}")
    if reference.shape != test.shape:
        raise DgfError(
            f"images differ in shape: reference {reference.shape}, test {test.shape}"
        )


def check_crop_border(crop_border: Any, height: int | None = None,
                      width: int | None = None) -> int:
    """``crop_border`` as an int, or DgfError naming the value: it must be an integer
    >= 0 and, when the image size is given, leave at least one pixel (2N < each side)."""
    if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)):
        raise DgfError(f"crop border must be an integer number of pixels >= 0, "
                       f"got {crop_border!r}")
    n = int(crop_border)
    if n < 0:
        raise DgfError(f"crop border must be >= 0 pixels, got {n}")
    if height is not None and width is not None and 2 * n >= min(height, width):
        raise DgfError(f"crop border {n} leaves nothing of a {width}x{height} image "
                       f"(2 x {n} >= {min(height, width)}); use a crop border below "
                       f"{(min(height, width) + 1) // 2}")
    return n


def crop_borders(image: np.ndarray, crop_border: int) -> np.ndarray:
    """``image`` (H, W, ...) without ``crop_border`` pixels at each side (BasicSR's
    ``crop_border``); 0 returns it unchanged."""
    n = check_crop_border(crop_border, image.shape[0], image.shape[1])
    return image[n:image.shape[0] - n, n:image.shape[1] - n] if n else image


def check_protocol(protocol: Any) -> str:
    """``protocol`` if it is one of ``METRIC_PROTOCOLS``, else DgfError naming them."""
    if protocol not in METRIC_PROTOCOLS:
        raise DgfError(f"metric protocol must be one of {', '.join(METRIC_PROTOCOLS)}; "
                       f"got {protocol!r}")
    return protocol


def check_window(crop_border: int, height: int, width: int,
                 protocol: str = DEFAULT_PROTOCOL) -> None:
    """DgfError naming the crop and the image size when the interior left by
    ``crop_border`` is smaller than the SSIM window of ``protocol`` (7x7 for
    ``skimage``, 11x11 for ``basicsr``)."""
    n = check_crop_border(crop_border, height, width)
    window = BASICSR_WINDOW if check_protocol(protocol) == "basicsr" else SKIMAGE_WINDOW
    h, w = height - 2 * n, width - 2 * n
    if min(h, w) < window:
        raise DgfError(
            f"crop border {n} leaves {w}x{h} of a {width}x{height} image, less than the "
            f"{window}x{window} window of {protocol} SSIM; use a crop border of at most "
            f"{max(0, (min(height, width) - window) // 2)}"
        )


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """The luma of an (H, W, 3) uint8 RGB image as (H, W) float64: Y = 16 + (65.481 R
    + 128.553 G + 24.966 B) / 255, computed in float32 (ITU-R BT.601 as MATLAB's
    ``rgb2ycbcr`` and BasicSR's ``to_y_channel``), values in [16, 235]."""
    rgb = np.asarray(image).astype(np.float32)
    weights = np.array([65.481, 128.553, 24.966], np.float32)
    y = np.float32(16.0) + (rgb @ weights) / np.float32(255.0)
    return y.astype(np.float64)


def _prepare(reference: np.ndarray, test: np.ndarray, crop_border: int, protocol: str,
             y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """The checked, cropped pair as float64, (H, W, 3), or (H, W) with ``y_channel``."""
    _check_pair(reference, test)
    check_protocol(protocol)
    reference, test = crop_borders(reference, crop_border), crop_borders(test, crop_border)
    if y_channel:
        return rgb_to_y(reference), rgb_to_y(test)
    return reference.astype(np.float64), test.astype(np.float64)


def psnr(reference: np.ndarray, test: np.ndarray, crop_border: int = 0,
         protocol: str = DEFAULT_PROTOCOL, y_channel: bool = DEFAULT_Y_CHANNEL) -> float:
    """PSNR in dB of ``test`` against ``reference``, both (H, W, 3) uint8.

    Data range 255, MSE over all pixels and channels (scikit-image's
    ``peak_signal_noise_ratio``; BasicSR's ``calculate_psnr`` is the same formula)
    of the interior left after removing ``crop_border`` pixels at each side; with
    ``y_channel``, of its luma (:func:`rgb_to_y`). Identical images give ``inf``.
    """
    reference, test = _prepare(reference, test, crop_border, protocol, y_channel)
    diff = reference - test
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)


def _gaussian_window() -> np.ndarray:
    x = np.arange(BASICSR_WINDOW, dtype=np.float64) - (BASICSR_WINDOW - 1) / 2
    g = np.exp(-(x * x) / (2.0 * BASICSR_SIGMA**2))
    return g / g.sum()


def _valid_filter(image: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Window average of a 2-D float64 image under the separable window ``g`` x ``g``,
    valid region only: (H - k + 1, W - k + 1)."""
    rows = sliding_window_view(image, len(g), axis=0) @ g  # (H-k+1, W)
    return sliding_window_view(rows, len(g), axis=1) @ g


def _basicsr_ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    g = _gaussian_window()
    mu1, mu2 = _valid_filter(a, g), _valid_filter(b, g)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = _valid_filter(a * a, g) - mu1_sq
    sigma2_sq = _valid_filter(b * b, g) - mu2_sq
    sigma12 = _valid_filter(a * b, g) - mu12
    ssim_map = ((2 * mu12 + c1) * (2 * sigma12 + c2)) / (
        (mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
    return float(ssim_map.mean())


def ssim(reference: np.ndarray, test: np.ndarray, crop_border: int = 0,
         protocol: str = DEFAULT_PROTOCOL, y_channel: bool = DEFAULT_Y_CHANNEL) -> float:
    """SSIM of ``test`` against ``reference``, both (H, W, 3) uint8.

    ``skimage``: scikit-image's ``structural_similarity`` with data range 255 and its
    defaults (7x7 uniform window, K1 0.01, K2 0.03), mean over the three channels.
    ``basicsr``: BasicSR's ``calculate_ssim`` (11x11 Gaussian window, sigma 1.5,
    valid region; module docstring). Either on the interior left after removing
    ``crop_border`` pixels at each side (with ``y_channel``, on its luma), which must
    hold the window (:func:`check_window`).
    """
    check_protocol(protocol)
    _check_pair(reference, test)
    check_window(crop_border, reference.shape[0], reference.shape[1], protocol)
    reference, test = _prepare(reference, test, crop_border, protocol, y_channel)
    if protocol == "basicsr":
        if y_channel:
            return _basicsr_ssim_channel(reference, test)
        return float(np.mean([_basicsr_ssim_channel(reference[..., c], test[..., c])
                              for c in range(reference.shape[-1])]))
    return float(skimage_metrics.structural_similarity(
        reference, test, channel_axis=None if y_channel else -1, data_range=255))


def describe_settings(crop_border: int = 0, protocol: str = DEFAULT_PROTOCOL,
                      y_channel: bool = DEFAULT_Y_CHANNEL) -> str:
    """The scoring settings that differ from the defaults, for labels and messages
    (e.g. "crop border 8, basicsr protocol, Y channel"); "" when all are defaults."""
    parts = []
    if crop_border:
        parts.append(f"crop border {crop_border}")
    if protocol != DEFAULT_PROTOCOL:
        parts.append(f"{protocol} protocol")
    if y_channel:
        parts.append("Y channel")
    return ", ".join(parts)


@dataclass(frozen=True)
class ScoreSettings:
    """How PSNR and SSIM are taken, validated once: ``crop_border`` pixels removed at
    each side (BasicSR's ``crop_border``; 8 judges the interior), the ``protocol``
    (``METRIC_PROTOCOLS``) and whether the luma Y is scored instead of RGB. Every
    stored score names them (:meth:`as_dict`)."""

    crop_border: int = 0
    protocol: str = DEFAULT_PROTOCOL
    y_channel: bool = DEFAULT_Y_CHANNEL

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_border", check_crop_border(self.crop_border))
        check_protocol(self.protocol)
        object.__setattr__(self, "y_channel", bool(self.y_channel))

    def as_dict(self) -> dict[str, Any]:
        """``crop_border``, ``protocol`` and ``y_channel``: what a score records."""
        return {"crop_border": self.crop_border, "protocol": self.protocol,
                "y_channel": self.y_channel}

    def describe(self) -> str:
        """The settings that differ from the defaults (:func:`describe_settings`)."""
        return describe_settings(self.crop_border, self.protocol, self.y_channel)

    def check_size(self, height: int, width: int) -> None:
        """DgfError when the crop leaves less than the SSIM window (:func:`check_window`)."""
        check_window(self.crop_border, height, width, self.protocol)

    def psnr(self, reference: np.ndarray, test: np.ndarray) -> float:
        return psnr(reference, test, self.crop_border, self.protocol, self.y_channel)

    def ssim(self, reference: np.ndarray, test: np.ndarray) -> float:
        return ssim(reference, test, self.crop_border, self.protocol, self.y_channel)


def mean_psnr(values: Sequence[float]) -> float:
    """Mean of per-image PSNR values, each capped at ``PSNR_CAP_DB`` (100 dB)."""
    if len(values) == 0:
        return math.nan
    return float(np.mean(np.minimum(np.asarray(values, dtype=np.float64), PSNR_CAP_DB)))
