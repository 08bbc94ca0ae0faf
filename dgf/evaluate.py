"""Metrics, sample strips and per-epoch reports.

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

The conversions (:func:`to_uint8`, :func:`to_unit`) come from :mod:`dgf.images`
and :func:`load_generator` from :mod:`dgf.runtime`; both are re-exported here.
Every generator runs through :func:`dgf.runtime.inference_call`, its compiled
BatchNorm-folded copy with the generator's current weights (so the trainer's
per-epoch scoring sees each epoch's). The defaults of ``dgf-eval`` live in
:mod:`dgf.options`.
"""
from __future__ import annotations

import csv
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from skimage.metrics import structural_similarity
from tqdm import tqdm

from dgf.errors import DgfError
from dgf.fileio import check_output, prepare_output, require_file, write_atomic, write_text_atomic
from dgf.images import to_uint8, to_unit, write_image
from dgf.metadata import read_metadata
from dgf.options import (
    DEFAULT_CROP_BORDER,
    DEFAULT_EVAL_BATCH,
    DEFAULT_EVAL_SPLIT,
    DEFAULT_PRECISION,
    DEFAULT_PROTOCOL,
    DEFAULT_STRIPS,
    DEFAULT_Y_CHANNEL,
    METRIC_PROTOCOLS,
)
from dgf.runtime import check_precision, inference_call, load_generator
from dgf.schema import blurred_name, check_split, open_pairs_file, sharp_name, source_name

PSNR_CAP_DB = 100.0
# What every stored score names: the crop border, protocol and channel it was taken at.
SETTING_KEYS = ("crop_border", "protocol", "y_channel")
SUMMARY_KEYS = ("count", "psnr", "ssim", "blurred_psnr", "blurred_ssim", "seconds_per_image",
                *SETTING_KEYS)
ROW_KEYS = ("index", "source", "psnr", "ssim", "blurred_psnr", "blurred_ssim", *SETTING_KEYS)
# A run evaluation's metrics.csv: the scores, and the settings they were taken at.
RUN_METRIC_KEYS = ("psnr", "ssim", "blurred_psnr", "blurred_ssim")
RUN_CSV_KEYS = ("epoch", *RUN_METRIC_KEYS, *SETTING_KEYS)
#: Side of BasicSR's Gaussian SSIM window, and its sigma.
BASICSR_WINDOW, BASICSR_SIGMA = 11, 1.5
#: Side of scikit-image's default (uniform) SSIM window.
SKIMAGE_WINDOW = 7
# progress.png puts this many pixels of label above each epoch's strip.
BAND_HEIGHT = 18
# progress.png shows at most this many epochs (evenly spaced, first and last kept),
# so a long run still gives a picture an image viewer can open.
MAX_PROGRESS_EPOCHS = 24
SNAPSHOT_RE = re.compile(r"^generator_epoch_(\d+)\.keras$")


# --- metrics --------------------------------------------------------------------
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
    return float(structural_similarity(
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


def mean_psnr(values: Sequence[float]) -> float:
    """Mean of per-image PSNR values, each capped at ``PSNR_CAP_DB`` (100 dB)."""
    if len(values) == 0:
        return math.nan
    return float(np.mean(np.minimum(np.asarray(values, dtype=np.float64), PSNR_CAP_DB)))


# --- running a generator --------------------------------------------------------------
def deblur_array(
    generator: Any,
    blurred: np.ndarray,
    batch_size: int = DEFAULT_EVAL_BATCH,
    precision: str = DEFAULT_PRECISION,
) -> np.ndarray:
    """Run ``generator`` in inference mode over blurred images.

    ``generator``: a Keras model mapping (B, H, W, 3) float32 in [-1, 1] to the same
    shape in [-1, 1]; its BatchNorm-folded copy at ``precision`` (``"fp32"`` or
    ``"bf16"``) runs, compiled once per generator, with the generator's current
    weights (:func:`dgf.runtime.inference_call`). ``blurred``: (B, H, W, 3) uint8.
    Returns (B, H, W, 3) uint8, rounded by :func:`to_uint8`.
    """
    blurred = np.asarray(blurred)
    if blurred.dtype != np.uint8 or blurred.ndim != 4 or blurred.shape[-1] != 3:
        raise DgfError(
            f"blurred images must be uint8 (B, H, W, 3); got {blurred.dtype} "
            f"{blurred.shape}"
        )
    if batch_size < 1:
        raise DgfError(f"batch size must be at least 1; got {batch_size}")
    out = np.empty_like(blurred)
    call = inference_call(generator, precision)
    for start in range(0, len(blurred), batch_size):
        chunk = to_unit(blurred[start : start + batch_size])
        y = np.asarray(call(chunk), dtype=np.float32)
        if y.shape != chunk.shape:
            raise DgfError(
                f"generator returned shape {y.shape} for input {chunk.shape}; a "
                f"deblurring generator must keep the image size and 3 channels"
            )
        out[start : start + batch_size] = to_uint8(y)
    return out


# --- which pairs, and reading them -------------------------------------------------
def strip_indices(count: int, n: int) -> list[int]:
    """``n`` fixed, evenly spaced indices into a split of ``count`` pairs.

    Index ``k`` is the middle of the k-th of ``n`` equal parts
    (``(2k + 1) * count // (2n)``), so the choice is deterministic, spread over the
    whole split and the same every epoch. ``n >= count`` gives every index.
    """
    if count < 0:
        raise DgfError(f"pair count must be >= 0; got {count}")
    if n < 1:
        raise DgfError(f"number of strip rows must be at least 1; got {n}")
    if n >= count:
        return list(range(count))
    return [(2 * k + 1) * count // (2 * n) for k in range(n)]


def scored_indices(count: int, limit: int | None) -> list[int]:
    """The pairs a split's scoring covers: every one (``limit`` None), else
    ``strip_indices(count, limit)``."""
    return list(range(count)) if limit is None else strip_indices(count, limit)


def strip_rows(count: int, limit: int | None, n: int) -> list[int]:
    """The ``n`` pairs a strip shows: evenly spread over the pairs scored with
    ``limit`` (:func:`scored_indices`), so scoring deblurs them anyway and the strip
    costs no extra generator pass. With ``limit`` None this is
    ``strip_indices(count, n)``."""
    scored = scored_indices(count, limit)
    return [scored[k] for k in strip_indices(len(scored), n)]


def _open_split(h5_path: Path | str, split: str):
    """Open ``h5_path`` read-only and validate ``split``; return (file, SplitInfo)."""
    h5 = open_pairs_file(h5_path)
    try:
        info = check_split(h5, split, Path(h5_path))
    except BaseException:
        h5.close()
        raise
    return h5, info


def _index_batches(indices: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), batch_size):
        yield list(indices[start : start + batch_size])


def _read(ds, idx: list[int]) -> np.ndarray:
    # A contiguous slice is one fast read; h5py fancy indexing is ~300x slower than
    # single-index reads, so anything else is read one index at a time.
    if idx == list(range(idx[0], idx[0] + len(idx))):
        return ds[idx[0] : idx[0] + len(idx)]
    return np.stack([ds[i] for i in idx])


def _sources(h5, split: str, indices: Sequence[int]) -> list[str]:
    name = source_name(split)
    if name not in h5:
        return [""] * len(indices)
    ds = h5[name]
    out = []
    for i in indices:
        value = ds[i] if i < len(ds) else b""
        if isinstance(value, np.ndarray):
            value = value.item() if value.size == 1 else value.tobytes()
        out.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value))
    return out


def _center_crop(images: np.ndarray, crop: int | tuple[int, int] | None) -> np.ndarray:
    if crop is None:
        return images
    ch, cw = (crop, crop) if isinstance(crop, int) else crop
    h, w = images.shape[1:3]
    if ch < 1 or cw < 1:
        raise DgfError(f"crop must be positive; got {crop}")
    ch, cw = min(ch, h), min(cw, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return images[:, top : top + ch, left : left + cw]


# --- strips -----------------------------------------------------------------------
def make_strip(sharp: np.ndarray, blurred: np.ndarray, deblurred: np.ndarray) -> np.ndarray:
    """Tile pairs into one image: one row per pair, sharp | blurred | deblurred.

    Each input is (n, H, W, 3) uint8. Returns (n*H, 3*W, 3) uint8 with no gaps or
    labels: row ``i`` occupies pixel rows ``i*H:(i+1)*H``; sharp is columns ``0:W``,
    blurred ``W:2W``, deblurred ``2W:3W``, each equal to its source exactly.
    """
    arrays = [np.asarray(a) for a in (sharp, blurred, deblurred)]
    for name, arr in zip(("sharp", "blurred", "deblurred"), arrays):
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
            raise DgfError(f"{name} must be uint8 (n, H, W, 3); got {arr.dtype} {arr.shape}")
    if not arrays[0].shape == arrays[1].shape == arrays[2].shape:
        raise DgfError(
            "sharp, blurred and deblurred must have the same shape; got "
            + ", ".join(str(a.shape) for a in arrays)
        )
    n, h, w, _ = arrays[0].shape
    return np.concatenate(arrays, axis=2).reshape(n * h, 3 * w, 3)


def save_png(path: Path | str, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as PNG, atomically."""
    write_image(path, np.ascontiguousarray(image), format="PNG")


def read_pairs(
    h5_path: Path | str, split: str, indices: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Read the given pairs: returns (sharp, blurred), each (n, H, W, 3) uint8."""
    h5, info = _open_split(h5_path, split)
    with h5:
        bad = [i for i in indices if not 0 <= i < info.count]
        if bad:
            raise DgfError(
                f"{h5_path}: indices {bad} out of range for split '{split}' "
                f"({info.count} pairs)"
            )
        idx = list(indices)
        return _read(h5[sharp_name(split)], idx), _read(h5[blurred_name(split)], idx)


def write_strip(
    path: Path | str,
    generator: Any,
    h5_path: Path | str,
    split: str = DEFAULT_EVAL_SPLIT,
    indices: Sequence[int] | None = None,
    crop: int | tuple[int, int] | None = None,
    *,
    n: int = DEFAULT_STRIPS,
    precision: str = DEFAULT_PRECISION,
) -> np.ndarray:
    """Deblur fixed pairs of ``split`` and write the sharp | blurred | deblurred strip.

    ``indices`` default to ``strip_indices(count, n)``. ``crop`` (side or
    (height, width)) takes a centred crop of each image after deblurring the whole
    image, to keep strips of large photos small. ``precision`` as in
    :func:`deblur_array`. Writes ``path`` as PNG atomically and returns the strip,
    (len(indices)*H, 3*W, 3) uint8.
    """
    h5, info = _open_split(h5_path, split)
    h5.close()
    if indices is None:
        indices = strip_indices(info.count, n)
    if len(indices) == 0:
        raise DgfError("no pairs selected for the strip")
    sharp, blurred = read_pairs(h5_path, split, indices)
    deblurred = deblur_array(generator, blurred, batch_size=max(1, len(indices)),
                             precision=precision)
    strip = make_strip(*(_center_crop(a, crop) for a in (sharp, blurred, deblurred)))
    save_png(path, strip)
    return strip


# --- scoring a split ---------------------------------------------------------------
_BASELINE_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _baseline_key(h5_path: Path | str, split: str, indices: Sequence[int]) -> tuple:
    path = Path(h5_path).resolve()
    stat = path.stat()
    # The file's size and mtime are part of the key: a rebuilt file is re-scored.
    return (str(path), stat.st_size, stat.st_mtime_ns, split, tuple(indices))


def evaluate_split(
    generator: Any,
    h5_path: Path | str,
    split: str = DEFAULT_EVAL_SPLIT,
    *,
    batch_size: int = DEFAULT_EVAL_BATCH,
    limit: int | None = None,
    progress: bool = True,
    precision: str = DEFAULT_PRECISION,
    crop_border: int = 0,
    protocol: str = DEFAULT_PROTOCOL,
    y_channel: bool = DEFAULT_Y_CHANNEL,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score ``generator`` on one split of an HDF5 file.

    Reads pairs in batches of ``batch_size`` (contiguous slices, constant memory),
    deblurs each batch in inference mode and scores the uint8 result against the
    sharp image (definitions in the module docstring). ``limit`` scores
    ``strip_indices(count, limit)``: that many pairs evenly spread over the split,
    the same ones every call; ``None`` scores every pair. ``precision`` as in
    :func:`deblur_array`. ``crop_border``, ``protocol`` and ``y_channel`` as in
    :func:`psnr` and :func:`ssim`; the summary and every row name them.

    Returns ``(summary, rows)``. ``summary`` has ``count``, ``psnr``, ``ssim``,
    ``blurred_psnr``, ``blurred_ssim`` (means over images, PSNR capped at 100 dB
    per image) and ``seconds_per_image`` (wall-clock time of the generator alone,
    per image, including its first-call tracing). ``rows`` holds one dict per image:
    ``index``, ``source`` (from ``{split}_source`` if the file has it, else ""),
    ``psnr`` (``inf`` when identical), ``ssim``, ``blurred_psnr``, ``blurred_ssim``.

    The blurred-input scores depend only on the data, so they are cached in-process
    per (file, size, mtime, split, pairs, crop border, protocol, channel): the
    trainer calls this every epoch.
    """
    summary, rows, _ = _evaluate(generator, h5_path, split, batch_size=batch_size,
                                 limit=limit, progress=progress, precision=precision,
                                 crop_border=crop_border, protocol=protocol,
                                 y_channel=y_channel)
    return summary, rows


def evaluate_with_strip(
    generator: Any,
    h5_path: Path | str,
    split: str,
    strip_path: Path | str,
    *,
    strips: int = DEFAULT_STRIPS,
    batch_size: int = DEFAULT_EVAL_BATCH,
    limit: int | None = None,
    progress: bool = True,
    precision: str = DEFAULT_PRECISION,
    crop_border: int = 0,
    protocol: str = DEFAULT_PROTOCOL,
    y_channel: bool = DEFAULT_Y_CHANNEL,
) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray]:
    """:func:`evaluate_split` and the sample strip of the same pass.

    The strip's rows are ``strip_rows(count, limit, strips)``, pairs the scoring
    deblurs anyway, so the strip costs no generator pass of its own. Writes it to
    ``strip_path`` (PNG, atomically) and returns ``(summary, rows, strip)``; the
    summary gains ``strip_indices``.
    """
    summary, rows, kept = _evaluate(generator, h5_path, split, batch_size=batch_size,
                                    limit=limit, progress=progress, precision=precision,
                                    strips=strips, crop_border=crop_border,
                                    protocol=protocol, y_channel=y_channel)
    order = sorted(kept)
    strip = make_strip(*(np.stack([kept[i][part] for i in order]) for part in range(3)))
    save_png(strip_path, strip)
    summary["strip_indices"] = order
    return summary, rows, strip


def _evaluate(
    generator: Any,
    h5_path: Path | str,
    split: str,
    *,
    batch_size: int,
    limit: int | None,
    progress: bool,
    precision: str,
    strips: int | None = None,
    crop_border: int = 0,
    protocol: str = DEFAULT_PROTOCOL,
    y_channel: bool = DEFAULT_Y_CHANNEL,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[int, tuple[np.ndarray, ...]]]:
    """Both evaluations: the report, and the (sharp, blurred, deblurred) images of
    ``strip_rows(count, limit, strips)`` by index (none when ``strips`` is None)."""
    if batch_size < 1:
        raise DgfError(f"batch size must be at least 1; got {batch_size}")
    if limit is not None and limit < 1:
        raise DgfError(f"limit must be at least 1 pair; got {limit}")
    crop_border = check_crop_border(crop_border)
    check_protocol(protocol)
    y_channel = bool(y_channel)
    h5, info = _open_split(h5_path, split)
    with h5:
        check_window(crop_border, info.height, info.width, protocol)
        indices = scored_indices(info.count, limit)
        keep = set() if strips is None else set(strip_rows(info.count, limit, strips))
        key = (*_baseline_key(h5_path, split, indices), crop_border, protocol, y_channel)
        cached = _BASELINE_CACHE.get(key)
        sources = _sources(h5, split, indices)
        scores = _score_pairs(
            generator, h5, split, indices, baseline=cached is None, batch_size=batch_size,
            progress=progress, precision=precision, keep=keep, crop_border=crop_border,
            protocol=protocol, y_channel=y_channel,
        )
    if cached is None:
        cached = (np.asarray(scores.blurred_psnr), np.asarray(scores.blurred_ssim))
        _BASELINE_CACHE[key] = cached
    summary, rows = _split_report(indices, sources, scores, cached, crop_border, protocol,
                                  y_channel)
    return summary, rows, scores.kept


@dataclass
class _Scores:
    """Per-image scores of one pass over a split, in the order of its indices."""

    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    blurred_psnr: list[float] = field(default_factory=list)  # empty without baseline
    blurred_ssim: list[float] = field(default_factory=list)
    generator_seconds: float = 0.0
    # index -> (sharp, blurred, deblurred) uint8 images of the pairs asked to be kept
    kept: dict[int, tuple[np.ndarray, ...]] = field(default_factory=dict)


def _score_pairs(
    generator: Any,
    h5,
    split: str,
    indices: Sequence[int],
    *,
    baseline: bool,
    batch_size: int,
    progress: bool,
    precision: str,
    keep: set[int] = frozenset(),
    crop_border: int = 0,
    protocol: str = DEFAULT_PROTOCOL,
    y_channel: bool = DEFAULT_Y_CHANNEL,
) -> _Scores:
    """Deblur and score the pairs ``indices`` of ``split`` in the open file ``h5``,
    ``batch_size`` at a time; with ``baseline`` the blurred inputs are scored too.
    The images of the indices in ``keep`` are kept (``_Scores.kept``)."""
    sharp_ds, blurred_ds = h5[sharp_name(split)], h5[blurred_name(split)]
    scores = _Scores()
    bar = tqdm(
        total=len(indices),
        desc=f"eval {split}",
        unit="img",
        disable=not progress,
        leave=False,
    )
    with bar:
        for idx in _index_batches(indices, batch_size):
            sharp = _read(sharp_ds, idx)
            blurred = _read(blurred_ds, idx)
            t0 = time.perf_counter()
            deblurred = deblur_array(generator, blurred, batch_size=len(idx),
                                     precision=precision)
            scores.generator_seconds += time.perf_counter() - t0
            for i, s, b, d in zip(idx, sharp, blurred, deblurred):
                if i in keep:
                    scores.kept[i] = (s.copy(), b.copy(), d.copy())
                how = (crop_border, protocol, y_channel)
                scores.psnr.append(psnr(s, d, *how))
                scores.ssim.append(ssim(s, d, *how))
                if baseline:
                    scores.blurred_psnr.append(psnr(s, b, *how))
                    scores.blurred_ssim.append(ssim(s, b, *how))
            bar.update(len(idx))
    return scores


def _split_report(
    indices: Sequence[int],
    sources: Sequence[str],
    scores: _Scores,
    baseline: tuple[np.ndarray, np.ndarray],
    crop_border: int = 0,
    protocol: str = DEFAULT_PROTOCOL,
    y_channel: bool = DEFAULT_Y_CHANNEL,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``(summary, rows)`` of :func:`evaluate_split` from its scores and the
    blurred-input ``baseline`` (PSNR and SSIM arrays, one value per index)."""
    b_psnr_arr, b_ssim_arr = baseline
    settings = {"crop_border": crop_border, "protocol": protocol, "y_channel": bool(y_channel)}
    rows = [
        {
            "index": int(i),
            "source": src,
            "psnr": float(gp),
            "ssim": float(gs),
            "blurred_psnr": float(bp),
            "blurred_ssim": float(bs),
            **settings,
        }
        for i, src, gp, gs, bp, bs in zip(
            indices, sources, scores.psnr, scores.ssim, b_psnr_arr, b_ssim_arr
        )
    ]
    summary = {
        "count": len(indices),
        "psnr": mean_psnr(scores.psnr),
        "ssim": float(np.mean(scores.ssim)),
        "blurred_psnr": mean_psnr(list(b_psnr_arr)),
        "blurred_ssim": float(np.mean(b_ssim_arr)),
        "seconds_per_image": scores.generator_seconds / len(indices),
        **settings,
    }
    return summary, rows


# --- plots and pictures --------------------------------------------------------------
def plot_metrics(
    epochs: Sequence[int],
    psnr: Sequence[float],
    ssim: Sequence[float],
    blurred_psnr: float | Sequence[float],
    blurred_ssim: float | Sequence[float],
    path: Path | str,
    *,
    crop_border: int = 0,
    protocol: str = DEFAULT_PROTOCOL,
    y_channel: bool = DEFAULT_Y_CHANNEL,
) -> None:
    """Plot test PSNR and SSIM against epoch, blurred-input baselines dashed.

    Two stacked panels in an 800x600 px PNG (written atomically). A baseline given as
    one number, or as per-epoch numbers that are all equal (the usual case: it
    depends only on the data), is drawn as a horizontal dashed line; differing
    per-epoch baselines are drawn as a dashed line over the epochs. A
    ``crop_border`` above 0 (the scores' :func:`psnr` ``crop_border``) is named in
    the title and the axis labels, as are a ``protocol`` other than ``skimage`` and
    ``y_channel`` (:func:`describe_settings`).
    """
    epochs = [int(e) for e in epochs]
    if not (len(epochs) == len(psnr) == len(ssim)) or not epochs:
        raise DgfError(
            f"plot_metrics needs one PSNR and one SSIM per epoch; got {len(epochs)} "
            f"epochs, {len(psnr)} PSNR, {len(ssim)} SSIM values"
        )
    # Figure + Agg canvas directly: no pyplot global state, no display needed.
    fig = Figure(figsize=(8, 6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1, sharex=True)
    crop_border = check_crop_border(crop_border)
    named = describe_settings(crop_border, check_protocol(protocol), y_channel)
    crop = f", {named}" if named else ""
    panels = (
        (axes[0], psnr, blurred_psnr, f"PSNR (dB){crop}"),
        (axes[1], ssim, blurred_ssim, f"SSIM{crop}"),
    )
    for ax, values, baseline, label in panels:
        ax.plot(epochs, [min(float(v), PSNR_CAP_DB) for v in values], "o-", label="deblurred")
        base = np.atleast_1d(np.asarray(baseline, dtype=np.float64))
        if base.size == 1 or np.allclose(base, base[0]):
            ax.axhline(float(base[0]), linestyle="--", color="gray", label="blurred input")
        else:
            if base.size != len(epochs):
                raise DgfError(f"{label} baseline needs 1 or {len(epochs)} values; got {base.size}")
            ax.plot(epochs, base, "--", color="gray", label="blurred input")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")
    axes[1].set_xlabel("epoch")
    axes[0].set_title(f"test metrics per epoch{crop}")
    if len(epochs) < 20:
        axes[1].set_xticks(epochs)
    fig.tight_layout()
    write_atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def _progress_image(strips: Sequence[np.ndarray], labels: Sequence[str]) -> np.ndarray:
    """Stack strips vertically, each under a BAND_HEIGHT-pixel white band with its label.

    Strip ``k`` starts at pixel row ``(k + 1) * BAND_HEIGHT + sum of the heights of
    strips before it``; narrower strips are padded on the right with white.
    """
    width = max(s.shape[1] for s in strips)
    blocks = []
    for strip, label in zip(strips, labels):
        band = Image.new("RGB", (width, BAND_HEIGHT), (255, 255, 255))
        ImageDraw.Draw(band).text((4, 3), label, fill=(0, 0, 0))
        blocks.append(np.asarray(band))
        if strip.shape[1] < width:
            pad = np.full((strip.shape[0], width - strip.shape[1], 3), 255, np.uint8)
            strip = np.concatenate([strip, pad], axis=1)
        blocks.append(strip)
    return np.concatenate(blocks, axis=0)


def _progress_epochs(epochs: Sequence[int]) -> list[int]:
    if len(epochs) <= MAX_PROGRESS_EPOCHS:
        return list(epochs)
    n = MAX_PROGRESS_EPOCHS
    # Evenly spaced, first and last always shown: the start and the end of learning.
    picks = {round(k * (len(epochs) - 1) / (n - 1)) for k in range(n)}
    return [epochs[i] for i in sorted(picks)]


# --- whole model / whole run -------------------------------------------------------
def _write_csv(path: Path, keys: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(keys), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    write_atomic(path, write)


def evaluate_model(
    model_path: Path | str,
    h5_path: Path | str,
    out_dir: Path | str | None = None,
    *,
    split: str = DEFAULT_EVAL_SPLIT,
    strips: int = DEFAULT_STRIPS,
    batch_size: int = DEFAULT_EVAL_BATCH,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    precision: str = DEFAULT_PRECISION,
    crop_border: int = DEFAULT_CROP_BORDER,
    protocol: str = DEFAULT_PROTOCOL,
    y_channel: bool = DEFAULT_Y_CHANNEL,
) -> dict[str, Any]:
    """Score one saved generator on a split and write its report.

    Writes ``out_dir/summary.json`` (the :func:`evaluate_split` summary plus
    ``model``, ``h5``, ``split`` and ``strip_indices``), ``out_dir/per_image.csv``
    (one row per scored pair) and ``out_dir/strip.png`` (``strips`` rows of
    sharp | blurred | deblurred). ``out_dir`` defaults to ``<model stem>_eval/``
    next to the model. Existing outputs are an error unless ``overwrite``.
    ``precision`` (``"fp32"`` or ``"bf16"``, also written to the summary) as in
    :func:`deblur_array`. ``crop_border`` pixels are removed at each side before
    PSNR/SSIM (:func:`psnr`); the summary and every row of ``per_image.csv`` name
    it, and one that leaves nothing of the split's images is refused before the
    model loads. So are ``protocol`` and ``y_channel`` (:func:`psnr`, :func:`ssim`),
    and a crop that leaves less than the protocol's SSIM window
    (:func:`check_window`). Returns the summary.
    """
    check_precision(precision)
    crop_border = check_crop_border(crop_border)
    check_protocol(protocol)
    model_path, h5_path = Path(model_path), Path(h5_path)
    out = Path(out_dir) if out_dir is not None else model_path.parent / f"{model_path.stem}_eval"
    targets = [out / "summary.json", out / "per_image.csv", out / "strip.png"]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise DgfError(
            f"would overwrite {', '.join(existing)}; pass --overwrite or choose "
            f"another --out"
        )
    check_output(out, folder=True)
    h5, info = _open_split(h5_path, split)
    h5.close()
    check_window(crop_border, info.height, info.width, protocol)
    generator = load_generator(model_path)
    summary, rows, _ = evaluate_with_strip(
        generator, h5_path, split, out / "strip.png", strips=strips, batch_size=batch_size,
        limit=limit, progress=progress, precision=precision, crop_border=crop_border,
        protocol=protocol, y_channel=y_channel,
    )
    _write_csv(out / "per_image.csv", ROW_KEYS, rows)
    summary = {
        **summary,
        "model": str(model_path),
        "h5": str(h5_path),
        "split": split,
        "precision": precision,
        # What the model file records of its training (None: it records nothing).
        "model_metadata": read_metadata(model_path),
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    summary["out_dir"] = str(out)
    return summary


def find_snapshots(run_dir: Path | str) -> dict[int, Path]:
    """Map epoch -> ``RUN/snapshots/generator_epoch_NNNN.keras``, in epoch order."""
    found = {}
    folder = Path(run_dir) / "snapshots"
    if folder.is_dir():
        for path in folder.iterdir():
            match = SNAPSHOT_RE.match(path.name)
            if match and path.is_file():
                found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def resolve_run_h5(run_dir: Path | str, h5_path: Path | str | None = None) -> Path:
    """The HDF5 file of a run: ``h5_path`` if given, else ``RUN/config.json["h5"]``.

    A relative path from the config is tried from the working directory, then from
    the run folder. DgfError, naming what was tried, when nothing exists.
    """
    run_dir = Path(run_dir)
    if h5_path is not None:
        return require_file(h5_path, "HDF5 file")
    config = run_dir / "config.json"
    if not config.is_file():
        raise DgfError(f"{config} not found, so the run's HDF5 file is unknown; pass --h5 PATH")
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("h5")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as exc:
        raise DgfError(f"{config}: not a JSON object ({exc}); pass --h5 PATH") from exc
    if not value:
        raise DgfError(f"{config} has no \"h5\" entry; pass --h5 PATH")
    tried = [Path(value)]
    if not tried[0].is_absolute():
        tried.append(run_dir / value)
    for path in tried:
        if path.is_file():
            return path
    raise DgfError(
        f"the run's HDF5 file ({config}: h5 = {value!r}) was not found at "
        f"{' or '.join(str(p) for p in tried)}; pass --h5 PATH"
    )


_BOOLS = {"True": True, "False": False}  # how csv writes a bool


def _read_run_csv(path: Path) -> dict[int, dict[str, float]]:
    # A table with other columns (one written before metrics.csv named its crop
    # border, protocol and channel) is not trusted: {} scores every epoch again.
    if not path.is_file():
        return {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != RUN_CSV_KEYS:
                return {}
            return {
                int(row["epoch"]): {**{k: float(row[k]) for k in RUN_METRIC_KEYS},
                                    "crop_border": int(row["crop_border"]),
                                    "protocol": check_protocol(row["protocol"]),
                                    "y_channel": _BOOLS[row["y_channel"]]}
                for row in reader
            }
    except (ValueError, KeyError, TypeError, DgfError):
        # A damaged table is rebuilt rather than trusted.
        return {}


def evaluate_run(
    run_dir: Path | str,
    *,
    h5_path: Path | str | None = None,
    split: str = DEFAULT_EVAL_SPLIT,
    strips: int = DEFAULT_STRIPS,
    batch_size: int = DEFAULT_EVAL_BATCH,
    out_dir: Path | str | None = None,
    limit: int | None = None,
    force: bool = False,
    progress: bool = True,
    precision: str = DEFAULT_PRECISION,
    crop_border: int = DEFAULT_CROP_BORDER,
    protocol: str = DEFAULT_PROTOCOL,
    y_channel: bool = DEFAULT_Y_CHANNEL,
) -> list[dict[str, Any]]:
    """Score every per-epoch snapshot of a training run and draw its progress.

    For each ``RUN/snapshots/generator_epoch_NNNN.keras`` in epoch order: writes
    ``out/strips/epoch_NNNN.png`` (the same ``strips`` test pairs every epoch,
    :func:`strip_rows`: the trainer's own samples show the same pairs when ``limit``
    is the run's ``val_samples``) and scores the split (``limit`` as in
    :func:`evaluate_split`). Then writes ``out/metrics.csv`` (epoch, psnr, ssim,
    blurred_psnr, blurred_ssim, crop_border, protocol, y_channel), ``out/metrics.png`` (:func:`plot_metrics`) and
    ``out/progress.png`` (each epoch's strip under a labelled band, see
    :func:`_progress_image`; at most ``MAX_PROGRESS_EPOCHS`` epochs, evenly spaced).
    ``out`` defaults to ``RUN/eval/``.

    Epochs already in ``out/metrics.csv`` are not re-scored, unless ``force``, the
    snapshot file changed, its strip is missing, or the HDF5 file, split, strips or
    limit differ from the previous evaluation (kept in ``out/eval_state.json``).
    ``precision`` (``"fp32"`` or ``"bf16"``) as in :func:`deblur_array`; a change
    of it re-scores every epoch too, as does one of ``crop_border`` (pixels removed
    at each side before PSNR/SSIM, :func:`psnr`; named in the plot when above 0),
    ``protocol`` or ``y_channel`` (:func:`ssim`; named in the plot when not the
    defaults). Returns one dict per epoch with the ``metrics.csv`` columns.
    """
    check_precision(precision)
    crop_border = check_crop_border(crop_border)
    check_protocol(protocol)
    y_channel = bool(y_channel)
    run_dir = Path(run_dir)
    snapshots = _run_snapshots(run_dir)
    h5 = resolve_run_h5(run_dir, h5_path)
    handle, info = _open_split(h5, split)
    handle.close()
    check_window(crop_border, info.height, info.width, protocol)
    out = check_output(Path(out_dir) if out_dir is not None else run_dir / "eval", folder=True)
    indices = strip_rows(info.count, limit, strips)
    settings = _run_settings(h5, split, indices, limit, precision, crop_border, protocol,
                             y_channel)
    results, seen, todo = _previous_results(out, settings, snapshots, force)
    prepare_output(out, folder=True)
    for epoch in tqdm(todo, desc="epochs", unit="epoch", disable=not progress):
        path = snapshots[epoch]
        stamp = path.stat().st_mtime_ns
        results[epoch] = _score_snapshot(
            path, _strip_path(out, epoch), h5, split, strips=strips, batch_size=batch_size,
            limit=limit, progress=progress, precision=precision, crop_border=crop_border,
            protocol=protocol, y_channel=y_channel,
        )
        seen[str(epoch)] = stamp
        # Saved after every epoch: an interrupted evaluation keeps what it finished.
        _save_run_tables(out, results, settings, seen)
    _save_run_tables(out, results, settings, seen)
    _draw_run(out, results, crop_border, protocol, y_channel)
    return [{"epoch": e, **results[e]} for e in sorted(results)]


def _run_snapshots(run_dir: Path) -> dict[int, Path]:
    """The run's snapshots (:func:`find_snapshots`); DgfError when there are none."""
    if not run_dir.is_dir():
        raise DgfError(f"run folder not found: {run_dir}")
    snapshots = find_snapshots(run_dir)
    if not snapshots:
        raise DgfError(
            f"no snapshots in {run_dir / 'snapshots'} (expected "
            f"generator_epoch_0001.keras, ...); train with snapshots on, or score a "
            f"single model with --model"
        )
    return snapshots


def _run_settings(
    h5: Path, split: str, indices: Sequence[int], limit: int | None, precision: str,
    crop_border: int = 0, protocol: str = DEFAULT_PROTOCOL,
    y_channel: bool = DEFAULT_Y_CHANNEL,
) -> dict[str, Any]:
    """What a run's scores depend on besides the snapshots (``eval_state.json``)."""
    stat = h5.stat()
    settings = {
        "h5": str(h5.resolve()),
        "h5_size": stat.st_size,
        "h5_mtime_ns": stat.st_mtime_ns,
        "split": split,
        "strip_indices": list(indices),
        "limit": limit,
    }
    if precision != "fp32":
        # Only when not the default, so evaluations made before the option existed
        # still match and are not re-scored.
        settings["precision"] = precision
    if crop_border:
        # Likewise only when not 0.
        settings["crop_border"] = crop_border
    if protocol != DEFAULT_PROTOCOL:
        settings["protocol"] = protocol
    if y_channel:
        settings["y_channel"] = True
    return settings


def _strip_path(out: Path, epoch: int) -> Path:
    return out / "strips" / f"epoch_{epoch:04d}.png"


def _previous_results(
    out: Path, settings: dict[str, Any], snapshots: dict[int, Path], force: bool
) -> tuple[dict[int, dict[str, float]], dict[str, int], list[int]]:
    """What an earlier evaluation into ``out`` already scored and still holds.

    Returns ``(results, seen, todo)``: the metrics of each epoch kept (epoch ->
    ``metrics.csv`` row without the epoch), the snapshot modification times they
    were scored at (epoch as text -> ns), and the epochs to score again.
    """
    try:
        state = json.loads((out / "eval_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    if not isinstance(state, dict):  # damaged: everything is scored again
        state = {}
    same_settings = state.get("settings") == settings
    done = _read_run_csv(out / "metrics.csv") if same_settings and not force else {}
    seen = state.get("snapshots", {}) if same_settings else {}
    if not isinstance(seen, dict):
        seen = {}
    results: dict[int, dict[str, float]] = {}
    todo = []
    for epoch, path in snapshots.items():
        if (
            epoch in done
            and seen.get(str(epoch)) == path.stat().st_mtime_ns
            and _strip_path(out, epoch).is_file()
        ):
            results[epoch] = done[epoch]
        else:
            todo.append(epoch)
    seen = {k: v for k, v in seen.items() if str(k).isdigit() and int(k) in results}
    return results, seen, todo


def _score_snapshot(
    path: Path,
    strip: Path,
    h5: Path,
    split: str,
    *,
    strips: int,
    batch_size: int,
    limit: int | None,
    progress: bool,
    precision: str,
    crop_border: int = 0,
    protocol: str = DEFAULT_PROTOCOL,
    y_channel: bool = DEFAULT_Y_CHANNEL,
) -> dict[str, float]:
    """Score one snapshot and draw its strip into ``strip`` (one generator pass);
    its ``metrics.csv`` row (without the epoch)."""
    try:
        generator = load_generator(path)
    except DgfError as exc:
        raise DgfError(
            f"{exc} Snapshot {path.name} is damaged: remove it to score the other "
            f"epochs, or start a new --run-dir"
        ) from None
    summary, _, _ = evaluate_with_strip(
        generator, h5, split, strip, strips=strips, batch_size=batch_size, limit=limit,
        progress=progress, precision=precision, crop_border=crop_border,
        protocol=protocol, y_channel=y_channel,
    )
    return {**{k: float(summary[k]) for k in RUN_METRIC_KEYS},
            **{k: summary[k] for k in SETTING_KEYS}}


def _save_run_tables(
    out: Path,
    results: dict[int, dict[str, float]],
    settings: dict[str, Any],
    seen: dict[str, int],
) -> None:
    """Write ``metrics.csv`` and ``eval_state.json`` of a run's evaluation."""
    rows = [{"epoch": e, **results[e]} for e in sorted(results)]
    _write_csv(out / "metrics.csv", RUN_CSV_KEYS, rows)
    write_text_atomic(
        out / "eval_state.json",
        json.dumps({"settings": settings, "snapshots": seen}, indent=2) + "\n",
    )


def _draw_run(out: Path, results: dict[int, dict[str, float]], crop_border: int = 0,
              protocol: str = DEFAULT_PROTOCOL, y_channel: bool = DEFAULT_Y_CHANNEL) -> None:
    """Write ``metrics.png`` and ``progress.png`` from every epoch's scores and strip,
    scored at ``crop_border``, ``protocol`` and ``y_channel`` (named in the plot and
    the labels when not the defaults, :func:`describe_settings`)."""
    epochs = sorted(results)
    plot_metrics(
        epochs,
        [results[e]["psnr"] for e in epochs],
        [results[e]["ssim"] for e in epochs],
        [results[e]["blurred_psnr"] for e in epochs],
        [results[e]["blurred_ssim"] for e in epochs],
        out / "metrics.png",
        crop_border=crop_border, protocol=protocol, y_channel=y_channel,
    )
    shown = _progress_epochs(epochs)
    strip_images = []
    for e in shown:
        try:
            with Image.open(_strip_path(out, e)) as img:
                strip_images.append(np.asarray(img.convert("RGB")))
        except (OSError, ValueError, SyntaxError) as exc:
            raise DgfError(
                f"{_strip_path(out, e)} is damaged ({exc}); remove it and run dgf-eval "
                f"again to draw it anew"
            ) from None
    named = describe_settings(crop_border, protocol, y_channel)
    crop = f" ({named})" if named else ""
    labels = [
        f"epoch {e}: PSNR {results[e]['psnr']:.2f} dB, SSIM {results[e]['ssim']:.4f}{crop}"
        f"   (sharp | blurred | deblurred)"
        for e in shown
    ]
    save_png(out / "progress.png", _progress_image(strip_images, labels))
