"""How long a photo's blur streaks are, measured from the photo alone.

``--scale auto`` (:func:`dgf.tiling.auto_scale`) shrinks a photo until its streaks are
as long as the blur the model learned on; this module measures both: a photo's
streaks (:func:`estimate_blur`) and, with the same measure, the blurred images of a
training file (:func:`measure_training_blur`), which ``dgf-train`` records in the
model file.

**The measure: the edges' spread along the blur, less their spread across it.** Shake
smears every edge along the direction of motion: crossed along that direction, an
edge of any orientation takes as many pixels to change as the streak is long. For
each of ``DIRECTIONS`` directions the estimator takes the strongest edges of the
directional derivative (among the pixels of largest gradient, those above the
derivative's 90th percentile that are local maxima along the direction) and walks
from each along the direction while the derivative stays above ``_RAMP_FLOOR`` of its
peak. Over that walk the derivative is the edge's profile: its length is that of the
straight uniform streak with the same second moment, sqrt(12 x variance), the same
rule :func:`streak_length` applies to a kernel. The direction's length is the median
of its edges'. A photo's own softness (focus, demosaicing, an enlarged picture)
spreads edges equally in every direction and shake only along its path, so the
photo's streak is the length along the most spread direction with the least spread
one taken out in quadrature (second moments add under convolution):
sqrt(longest² - shortest²). A sharp photo measures a few pixels; an image without
edges is *flat* (no estimate).

It runs on the luma shrunk to ``WORK_SIDE`` px on its shorter side (about 0.3 s for
a 12 MP photo on a 2-core host); where the edges' spread there (their derivative's
sum over the walk over its peak, the 70th percentile over the edges, largest over the
directions) is more than ``_COARSE_SPREAD`` px, it is measured again at half that size,
where a long streak fits the walk. Chosen with ``benchmarks/bench_scale.py --phone``
over the spread alone (``edge-spread-1``, which read an enlarged photo's softness as
shake), a gradient-autocorrelation width, a directional spectrum fall-off and a
cepstrum, whose estimates followed the photo's content more than its blur
(``docs/results.md``).

:func:`streak_length` is the length the benchmark and the tests draw kernels at: the
length of the straight uniform streak with the same spread (second moment) along its
longest axis.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

from dgf.errors import DgfError
from dgf.kernels import DEFAULT_STRENGTH, random_kernel
from dgf.metadata import TRAINING_BLUR, training_file, training_side, training_streak
from dgf.optional import Lazy
from dgf.schema import blurred_name, open_pairs_file
from dgf.tiling import auto_scale

# Imported when a blur is first measured (0.19 s): dgf-deblur's first photo is
# measured in dgf.prefetch's child, so its own process may never need it.
ndimage = Lazy("scipy.ndimage")

#: The estimator's name, recorded beside a training blur: a record measured by
#: another estimator is not compared with this one's photos.
ESTIMATOR = "edge-spread-2"
#: Shorter side, in pixels, of the luma the blur is measured on.
WORK_SIDE = 1024
#: Smallest shorter side a photo needs for an estimate.
MIN_SIDE = 64
#: Directions (over 180 degrees) the edges are crossed along.
DIRECTIONS = 12
#: A photo of which nine pixels in ten change by less than this many levels per
#: pixel (at the working size, along every direction) is flat: a blank page, a wall,
#: fog. Measured: blurred photos 2.3-8.9 (benchmarks/bench_scale.py --phone), a grey
#: page with noise of 2 levels 0.74.
FLAT_GRADIENT = 1.0
#: Fewest strong edges an estimate needs.
MIN_EDGES = 50

_SMOOTH = 0.8  # Gaussian sigma before the derivative (px): calms noise and JPEG blocks
_REACH = 48  # px walked each way from an edge
_RAMP_FLOOR = 0.15  # an edge's walk stops where its derivative falls below this x peak
_EDGES = 1000  # strongest edges used per direction
_CANDIDATES = 48_000  # pixels of largest gradient the edges are chosen from
_PERCENTILE = 70  # of the edges' spreads, for the choice of size
_COARSE_SPREAD = 12.0  # px of spread at the working size beyond which half the size measures
_COARSE_MIN_SIDE = 512  # ... when the working size is at least this (not a 256 px image)


@dataclass(frozen=True)
class BlurEstimate:
    """What :func:`estimate_blur` found: ``length`` (the streak length in pixels of
    the image it was given) or None with ``reason`` (why there is no estimate);
    ``side`` is the shorter side of the luma it was measured on."""

    length: float | None
    reason: str | None = None
    side: int = 0


def luma(image: np.ndarray, side: int | None = WORK_SIDE) -> np.ndarray:
    """The BT.601 luma (float32, levels 0-255) of ``image`` ((H, W, 3) uint8 RGB or
    (H, W) grey), shrunk (Lanczos, antialiased) to ``side`` px on its shorter side
    when larger; ``side`` None keeps the size."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 3:
        gray = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).convert("L")
    elif image.ndim == 2:
        gray = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    else:
        raise DgfError(f"expected an (H, W, 3) RGB or (H, W) grey image, got shape "
                       f"{image.shape}.")
    width, height = gray.size
    if side is not None and min(height, width) > side:
        factor = side / min(height, width)
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        gray = gray.resize(size, Image.Resampling.LANCZOS, reducing_gap=1.0)
    return np.asarray(gray, dtype=np.float32)


def _bilinear(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``image`` interpolated bilinearly at (``rows``, ``cols``), points outside
    taking the nearest border value (as SciPy's ``map_coordinates(order=1,
    mode="nearest")``, faster)."""
    h, w = image.shape
    r = np.clip(rows, 0, h - 1)
    c = np.clip(cols, 0, w - 1)
    r0 = np.minimum(r.astype(np.intp), h - 2)
    c0 = np.minimum(c.astype(np.intp), w - 2)
    fr, fc = r - r0, c - c0
    top = image[r0, c0] * (1 - fc) + image[r0, c0 + 1] * fc
    bottom = image[r0 + 1, c0] * (1 - fc) + image[r0 + 1, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


class _Edges:
    """The candidate edges of a luma image: the ``_CANDIDATES`` pixels of largest
    gradient away from the border, with their derivatives, and a sample of every
    pixel's derivatives (for the percentiles)."""

    def __init__(self, gray: np.ndarray) -> None:
        smooth = ndimage.gaussian_filter(gray.astype(np.float32), _SMOOTH)
        self.gy, self.gx = np.gradient(smooth)
        h, w = gray.shape
        margin = min(_REACH // 2, min(h, w) // 4)
        inner = (slice(margin, h - margin), slice(margin, w - margin))
        gx, gy = self.gx[inner].ravel(), self.gy[inner].ravel()
        size = gx * gx + gy * gy
        count = min(size.size - 1, _CANDIDATES)
        picks = np.argpartition(size, -count)[-count:]
        ys, xs = np.unravel_index(picks, (h - 2 * margin, w - 2 * margin))
        self.ys, self.xs = ys + margin, xs + margin
        self.cgx, self.cgy = gx[picks], gy[picks]
        step = max(1, size.size // 100_000)
        self.sample = (gx[::step], gy[::step])
        self.buffer = np.empty_like(self.gx)  # each direction's derivative size

    def spread(self, angle: float) -> tuple[float, float, float, int]:
        """(spread, length, strength, edges) along ``angle``: the ``_PERCENTILE`` of
        the edges' spreads (sum over peak of the derivative along the walk) and the
        median of their second-moment lengths (module docstring), the 90th percentile
        of the derivative's size over the image and the number of edges measured."""
        c, s = np.cos(angle), np.sin(angle)
        strength = float(np.percentile(np.abs(c * self.sample[0] + s * self.sample[1]), 90))
        peak = np.abs(c * self.cgx + s * self.cgy)
        keep = np.nonzero(peak > max(strength, FLAT_GRADIENT))[0]
        keep = keep[np.argsort(peak[keep])[::-1][: 8 * _EDGES]]
        ys, xs, peak = self.ys[keep], self.xs[keep], peak[keep]
        if not len(keep):
            return 0.0, 0.0, strength, 0
        size = np.multiply(self.gx, c, out=self.buffer)
        size += s * self.gy
        np.abs(size, out=size)
        ahead = _bilinear(size, ys + s, xs + c)
        behind = _bilinear(size, ys - s, xs - c)
        ridge = (peak >= ahead) & (peak > behind)  # the edge's centre along the direction
        ys, xs = ys[ridge][:_EDGES], xs[ridge][:_EDGES]
        if len(ys) < MIN_EDGES:
            return 0.0, 0.0, strength, len(ys)
        steps = np.arange(-_REACH, _REACH + 1, dtype=np.float32)
        profile = _bilinear(size, ys[:, None] + steps[None, :] * s,
                            xs[:, None] + steps[None, :] * c)
        centre = profile[:, _REACH]
        above = profile > _RAMP_FLOOR * centre[:, None]
        # The walk each way from the centre (the centre counted on both sides).
        right = profile[:, _REACH:] * np.cumprod(above[:, _REACH:], axis=1)
        left = profile[:, _REACH::-1] * np.cumprod(above[:, _REACH::-1], axis=1)
        out = steps[_REACH:]
        area = right.sum(1) + left.sum(1) - centre
        mean = (right @ out - left @ out) / area
        variance = np.maximum((right @ (out * out) + left @ (out * out)) / area - mean ** 2, 0)
        return (float(np.percentile(area / centre, _PERCENTILE)),
                float(np.median(np.sqrt(12.0 * variance))), strength, len(ys))


def edge_spread(gray: np.ndarray) -> tuple[float | None, float | None, str | None]:
    """(spread, streak, None) of ``gray``'s edges, in its pixels: the spread along its
    most spread direction, which chooses the size to measure at, and the streak, its
    longest direction's length with the shortest's taken out (module docstring); or
    (None, None, why) for an image too small or too flat."""
    h, w = gray.shape
    if min(h, w) < MIN_SIDE:
        return None, None, f"{w}x{h} is too small to measure its blur (under {MIN_SIDE} px)"
    edges = _Edges(gray)
    found = [edges.spread(np.pi * k / DIRECTIONS) for k in range(DIRECTIONS)]
    strongest = max(strength for _, _, strength, _ in found)
    measured = [(spread, length) for spread, length, _, count in found if count >= MIN_EDGES]
    if strongest < FLAT_GRADIENT or not measured:
        return None, None, (f"too flat to measure its blur (edges of {strongest:.2f} "
                            f"levels per pixel, under {FLAT_GRADIENT:g})")
    lengths = [length for _, length in measured]
    streak = float(np.sqrt(max(lengths) ** 2 - min(lengths) ** 2))
    return max(spread for spread, _ in measured), streak, None


def estimate_blur(image: np.ndarray) -> BlurEstimate:
    """The streak length, in pixels of ``image`` ((H, W, 3) uint8 RGB or (H, W)
    grey), of its blur: the streak of its edges (:func:`edge_spread`, module
    docstring) in its luma at ``WORK_SIDE`` px, or at half that where the edges'
    spread is over ``_COARSE_SPREAD`` px there (when that is at least
    ``_COARSE_MIN_SIDE`` px), scaled back to the image's size. ``length`` is None,
    with ``reason``, for an image too small or too flat."""
    image = np.asarray(image)
    full = min(image.shape[:2])
    gray = luma(image, WORK_SIDE)
    spread, streak, reason = edge_spread(gray)
    side = min(gray.shape)
    if spread is not None and spread > _COARSE_SPREAD and side >= _COARSE_MIN_SIDE:
        coarse = luma(gray, side // 2)
        _, again, _ = edge_spread(coarse)
        if again is not None:
            streak, side = again, min(coarse.shape)
    if streak is None:
        return BlurEstimate(None, reason, side)
    return BlurEstimate(streak * full / side, None, side)


# --- the blur a model learned on ----------------------------------------------------
def summarize(lengths: Iterable[float | None], **about: Any) -> dict[str, Any]:
    """The record of a set of images' streak lengths: median and quartiles in
    pixels, how many were measured and skipped (flat), ``estimator``, and ``about``
    (the data file, split, image side)."""
    lengths = list(lengths)
    values = [float(v) for v in lengths if v is not None]
    if not values:
        raise DgfError("none of the images has edges enough to measure its blur.")
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    return {"estimator": ESTIMATOR, "streak_px": round(float(median), 3),
            "q25": round(float(q25), 3), "q75": round(float(q75), 3),
            "count": len(values), "skipped": len(lengths) - len(values), **about}


def measure_training_blur(h5_path: Path | str, split: str = "train",
                          limit: int | None = None) -> dict[str, Any]:
    """The streak lengths of the blurred images of ``split`` in the HDF5 pairs file
    at ``h5_path`` (``limit`` evenly spaced ones; None: all), each measured at its
    own size, summarised by :func:`summarize`: what a model trained on that file
    learned. DgfError when the file or split cannot be read."""
    with open_pairs_file(h5_path) as f:
        name = blurred_name(split)
        if name not in f:
            raise DgfError(f"{h5_path} has no {split} split ({name}); cannot measure the "
                           f"blur the model learned on.")
        data = f[name]
        count = data.shape[0]
        picks = range(count) if limit is None or limit >= count else \
            np.linspace(0, count - 1, limit).round().astype(int)
        lengths = [estimate_blur(data[int(i)]).length for i in picks]
        side = int(min(data.shape[1:3]))
    return summarize(lengths, h5=str(h5_path), split=split, image_side=side)


#: Blurred training images measured when a model's record lacks its training blur.
REFERENCE_IMAGES = 64


def model_reference(record: dict[str, Any] | None, model: Path | str
                    ) -> tuple[float | None, str | None]:
    """(the streak length in px the model learned on, a ``note:`` line or None) for
    ``--scale auto``: the record's ``training_blur`` when this estimator measured it;
    otherwise (no training blur, or one measured by an older estimator) the blur
    measured on ``REFERENCE_IMAGES`` blurred train images of the training file the
    record names, when that file is here (with a note); else None and a note that
    each photo's scale follows its size (:func:`dgf.tiling.auto_scale`'s older rule).
    Both notes name ``dgf-info MODEL --measure-blur``, which records it in the file.
    A model without any training record gets (None, None): the caller says so."""
    streak = training_streak(record, ESTIMATOR)
    if streak is not None or record is None or training_side(record) is None:
        return streak, None
    older = ((record.get(TRAINING_BLUR) or {}).get("estimator"))
    lacks = (f"records its training blur measured by {older}, not {ESTIMATOR}" if older
             else "does not record its training blur")
    fix = f"`dgf-info {model} --measure-blur` records it"
    h5 = training_file(record)
    why = "names no training file"
    if h5 is not None:
        try:
            blur = measure_training_blur(h5, limit=REFERENCE_IMAGES)
        except DgfError as exc:
            why = f"its training file {h5} cannot be measured ({exc})"
        else:
            return blur["streak_px"], (
                f"note: --scale auto: {model} {lacks}; measured {blur['count']} blurred "
                f"train images of {h5}: streaks of {blur['streak_px']:.1f} px ({fix} in "
                f"the file)")
    else:
        named = ((record.get("data") or {}).get("h5"))
        if named:
            why = f"its training file {named} is not here"
    return None, (f"note: --scale auto: {model} {lacks} and {why}; each photo runs at "
                  f"the model's training image side over its shorter side, which assumes "
                  f"its blur is as large a part of it as in the training images "
                  f"({fix}, given the training file: --measure-blur FILE.h5)")


def auto_factor(rgb: np.ndarray, side: int | None, reference: float | None,
                estimate: BlurEstimate | None = None) -> tuple[float, BlurEstimate | None]:
    """``(scale, estimate)`` of ``--scale auto`` for a photo: its blur measured (or
    ``estimate``, already measured) when the model records its training blur
    (``reference``, px), and :func:`dgf.tiling.auto_scale` of the two (the size rule
    with the training image ``side`` when it does not)."""
    if reference is None:
        estimate = None
    elif estimate is None:
        estimate = estimate_blur(rgb)
    height, width = rgb.shape[:2]
    return auto_scale(height, width, side, training_streak=reference,
                      streak=estimate.length if estimate else None), estimate


def describe_choice(name: str, estimate: BlurEstimate | None, scale: float,
                    reference: float | None, side: int | None = None) -> str | None:
    """The line dgf-deblur prints for a photo at ``--scale auto``: its streaks, the
    model's (``reference``), and the scale chosen; a ``note:`` when its blur could not
    be measured; for a model without a training blur, the scale from the training
    image ``side`` (None without that either: the run has said so once)."""
    if reference is None or estimate is None:
        if side is None:
            return None
        return f"{name}: scale {scale:.3g} (the training image side {side} px over its size)"
    if estimate.length is None:
        return f"note: {name}: {estimate.reason}; running at scale 1"
    why = " (streaks no longer than the model's)" if scale == 1.0 else ""
    return (f"{name}: streaks about {estimate.length:.0f} px, the model learned "
            f"{reference:.1f} px: scale {scale:.3g}{why}")


# --- kernels of a known length (benchmarks, tests) ----------------------------------
def streak_length(kernel: np.ndarray) -> float:
    """The length in pixels of the straight uniform streak with ``kernel``'s spread
    along its longest axis: sqrt(12 x the largest eigenvalue of its covariance)."""
    k = np.asarray(kernel, dtype=np.float64)
    ys, xs = np.mgrid[: k.shape[0], : k.shape[1]]
    mass = k.sum()
    cy, cx = (k * ys).sum() / mass, (k * xs).sum() / mass
    dy, dx = ys - cy, xs - cx
    cov = np.array([[(k * dy * dy).sum(), (k * dy * dx).sum()],
                    [(k * dy * dx).sum(), (k * dx * dx).sum()]]) / mass
    return float(np.sqrt(12.0 * np.linalg.eigvalsh(cov).max()))


def shake_kernel(seed: int, length: float, strength: float = DEFAULT_STRENGTH) -> np.ndarray:
    """A camera-shake kernel (:func:`dgf.kernels.random_kernel`) drawn from ``seed``
    whose :func:`streak_length` is ``length`` pixels (within a few percent): the
    same path is drawn on a canvas sized to make it that long."""
    if not (np.isfinite(length) and length > 0):
        raise DgfError(f"streak length {length!r} must be a positive number of pixels.")
    size = 101
    for _ in range(2):
        kernel = random_kernel(np.random.default_rng(seed), size, strength)
        size = int(round((size - 1) * length / streak_length(kernel))) + 1
        size = max(3, size + (size % 2 == 0))
    return random_kernel(np.random.default_rng(seed), size, strength)
