"""What a generator's geometry means for running it on photos: its receptive field
and the work of its convolutions, and tiled inference of images of any size.

**Tiling** (:func:`deblur_image`). The generator is fully convolutional, so any
image size works, but activation memory grows with the pixel count (a 12-megapixel
photo at channel_rate 64 needs tens of GiB untiled). Large images are therefore cut
into equal-sized overlapping tiles that run in small batches and are blended back
with a window that is flat in each tile's interior and ramps across the overlap.
``--tile T`` bounds a tile's pixels (T x T, its memory); the tile's sides are
chosen per image (:func:`tile_shape`) so that the fewest pixels go through the
model: a 1196x1596 image takes four 1196x576 tiles rather than six of 864x864.

Why the window starts with a near-zero margin: the generator zero-pads at its input
border, so a tile's outputs within the receptive-field radius (about 17 px for the
DGF generator) of a cut edge differ from what the whole image would give. The window
gives the outer third of the overlap almost no weight (1e-6, never zero, so the
normalisation is always defined) and ramps linearly across the middle third. With
the default overlap of 64 px the margin is 21 px, more than the radius, so the tiled
result matches the untiled one to float round-off. Tile edges that lie on the true
image border keep weight 1: there the untiled run sees the same zero padding.

The generator itself runs through a :class:`dgf.predictor.Predictor` (BatchNorm
folding, precision, engine, XLA or not), which this module is handed and never imports.
Keras is imported only where a model's layers are read, so the full-size steps run in
a process that has not loaded TensorFlow (:mod:`dgf.prefetch`).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from dgf.errors import DgfError
from dgf.images import to_uint8, to_unit
from dgf.optional import Lazy
from dgf.options import DEFAULT_OVERLAP, DEFAULT_TILE
from dgf.spec import check_scale, scaled_size

# Keras and the models, imported where a model's layers are read: the full-size steps
# run in a process that has not loaded TensorFlow (dgf.prefetch).
layers, models = Lazy("keras.layers"), Lazy("dgf.models")

# Weight of the outputs a tile produces next to a cut edge; small but non-zero so the
# accumulated weight can never be zero.
_EDGE_WEIGHT = 1e-6


# --- counting work ---------------------------------------------------------------------
def _propagate(model, start: Any, rule: Callable[[Any, list[Any]], Any]) -> dict[int, Any]:
    """Carry a value through ``model``'s functional graph, inputs first: each input
    tensor holds ``start``, and each layer call's outputs hold ``rule(layer, the
    values of its inputs)``. Returns tensor id -> value."""
    values: dict[int, Any] = {id(t): start for t in model.inputs}
    for depth in sorted(model._nodes_by_depth, reverse=True):  # inputs first
        for node in model._nodes_by_depth[depth]:
            seen = [values[id(t)] for t in node.input_tensors if id(t) in values]
            out = rule(node.operation, seen or [start])
            for tensor in node.output_tensors:
                values[id(tensor)] = out
    return values


def conv_flops(model, height: int, width: int) -> int:
    """Floating-point operations of ``model``'s convolutions on one height x width image.

    Counted analytically per convolution call: ``2 * H' * W' * kh * kw * (C_in /
    groups) * C_out``, where H' x W' is the size of the convolution's output, the
    positions it computes: the image's, reduced by the strides of the convolutions
    and pooling layers up to and including it (:func:`_output_side`: rounding up
    with 'same' padding, whole windows only with 'valid'), and divided by the factor
    of a :class:`~dgf.models.SpaceToDepth` before it, which first extends the image
    to a multiple of that factor (a :class:`~dgf.models.DepthToSpace` cuts back to
    the image's size). Bias adds, BatchNorm, pooling, activations and concatenation
    are not counted: they are memory-bound and well under 1% of the arithmetic.
    """
    total = 0

    def rule(op, seen: list[tuple[int, int]]) -> tuple[int, int]:
        nonlocal total
        rows, cols = seen[0]
        if isinstance(op, (layers.Conv2D, layers.MaxPooling2D, layers.AveragePooling2D)):
            window = op.kernel_size if isinstance(op, layers.Conv2D) else op.pool_size
            dilation = getattr(op, "dilation_rate", (1, 1))
            rows, cols = (_output_side(side, *about, op.padding) for side, about in zip(
                (rows, cols), zip(window, op.strides, dilation)))
        if isinstance(op, layers.Conv2D):
            kh, kw, c_in_per_group, c_out = op.kernel.shape
            total += 2 * rows * cols * kh * kw * c_in_per_group * c_out
            return rows, cols
        if isinstance(op, models.SpaceToDepth):
            return -(-rows // op.factor), -(-cols // op.factor)
        if isinstance(op, models.DepthToSpace):
            return seen[-1]  # cut to its reference image's size
        return rows, cols

    _propagate(model, (int(height), int(width)), rule)
    return int(total)


def _output_side(side: int, window: int, stride: int, dilation: int, padding: str) -> int:
    """The output side of a convolution or pooling over ``side`` input positions:
    ``ceil(side / stride)`` with 'same' padding, the whole windows with 'valid'."""
    if padding == "valid":
        return (side - (window - 1) * dilation - 1) // stride + 1
    return -(-side // stride)


def receptive_field(model) -> int:
    """The side in pixels of the input square one output pixel of ``model`` sees.

    Computed from the layers: each convolution widens it by ``(k - 1) * dilation``
    times the input pixels one of its positions spans (the product of the strides
    and :class:`~dgf.models.SpaceToDepth` factors before it); a SpaceToDepth adds
    ``factor - 1`` and multiplies that span; a :class:`~dgf.models.DepthToSpace`
    divides it; layers with several inputs see the widest. The DGF generator at
    space-to-depth 1 gives 35.
    """
    def rule(op, seen: list[tuple[float, float]]) -> tuple[float, float]:
        size, span = max(seen)
        if isinstance(op, layers.Conv2D):
            return size + (op.kernel_size[0] - 1) * op.dilation_rate[0] * span, \
                span * op.strides[0]
        if isinstance(op, models.SpaceToDepth):
            return size + (op.factor - 1) * span, span * op.factor
        if isinstance(op, models.DepthToSpace):
            return size, span / op.factor
        return size, span

    field = _propagate(model, (1.0, 1.0), rule)
    return int(round(max(field[id(t)][0] for t in model.outputs)))


def seamless_tiling(model, tile: int | None = None, overlap: int | None = None
                    ) -> tuple[int, int]:
    """``(tile, overlap)`` for tiled inference of ``model`` with no visible seams:
    an overlap whose near-zero outer third exceeds the receptive-field radius (at
    least ``DEFAULT_OVERLAP``, a multiple of 8), and a tile of at least
    ``DEFAULT_TILE`` and four overlaps. Values given are kept."""
    if overlap is None:
        radius = receptive_field(model) // 2
        overlap = max(DEFAULT_OVERLAP, -(-3 * (radius + 1) // 8) * 8)
    if tile is None:
        tile = max(DEFAULT_TILE, 4 * overlap)
    return tile, overlap


# --- tiling ------------------------------------------------------------------
def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``min(tile, length)`` covering ``length``.

    Consecutive tiles overlap by at least ``overlap``; the last one is shifted back
    inside the image rather than padded, so every tile has the same size.
    """
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


#: Tile sides are multiples of this (and of the model's grid): few distinct tile
#: shapes, so an engine or XLA compiles few and calibration measures few.
TILE_STEP = 64


def _tiles_along(length: int, side: int, overlap: int) -> int:
    """How many tiles of ``side`` overlapping by ``overlap`` cover ``length``
    (:func:`tile_starts`' count)."""
    return len(tile_starts(length, side, overlap))


def tile_shape(height: int, width: int, tile: int, overlap: int,
               step: int = TILE_STEP) -> tuple[int, int]:
    """The tile ``(rows, cols)`` that covers a ``height`` x ``width`` image with the
    fewest pixels through the model: at most ``tile`` x ``tile`` pixels per tile
    (what its memory allows), each side a multiple of ``step`` or the whole side,
    neighbours overlapping by at least ``overlap``. A 1196x1596 image at tile 864 and
    overlap 216 takes four 1196x576 tiles (2.8 MP) where six 864x864 (4.5 MP) did."""
    if height <= tile and width <= tile:
        return height, width
    budget = tile * tile
    least = -(-(2 * overlap + 1) // step) * step  # a side must exceed two overlaps

    def fitted(length: int, side: int) -> int:
        """The smallest side (on the step grid, or the whole length) that covers
        ``length`` with as few tiles as ``side`` does."""
        count = _tiles_along(length, side, overlap)
        if count == 1:
            return min(length, side)
        need = -(-(length + (count - 1) * overlap) // count)
        return min(length, -(-need // step) * step)

    best: tuple[int, int, int, int] | None = None
    for rows in [height] + list(range(least, height, step)):
        if rows * least > budget and rows != height:
            break
        cols_cap = budget // rows
        cols = width if width <= cols_cap else cols_cap // step * step
        if cols < least and cols != width:
            continue
        th, tw = fitted(height, rows), fitted(width, cols)
        count = _tiles_along(height, th, overlap) * _tiles_along(width, tw, overlap)
        cost = (count * th * tw, count, th, tw)
        if best is None or cost < best:
            best = cost
    if best is None:  # no side on the grid fits two overlaps: square tiles, as asked
        return min(height, tile), min(width, tile)
    return best[2], best[3]


def _axis_window(start: int, size: int, length: int, overlap: int) -> np.ndarray:
    """1-D blend weights of one tile along one axis (see the module docstring, Tiling)."""
    w = np.ones(size, np.float32)
    if overlap == 0:
        return w
    margin = overlap // 3
    ramp = overlap - 2 * margin
    # Ramp from (near) 0 to 1 over `ramp` pixels after `margin` near-zero ones.
    d = np.arange(size, dtype=np.float32)
    rising = np.clip((d - margin + 0.5) / ramp, _EDGE_WEIGHT, 1.0)
    if start > 0:
        w = np.minimum(w, rising)
    if start + size < length:
        w = np.minimum(w, rising[::-1])
    return w


def _run_generator(call: Callable[[np.ndarray], Any], batch_uint8: np.ndarray) -> np.ndarray:
    return np.asarray(call(to_unit(batch_uint8)), dtype=np.float32)



#: Smallest shorter side, in pixels, ``--scale auto`` shrinks a photo to.
AUTO_MIN_SIDE = 128


def auto_scale(height: int, width: int, training_side: int | None, *,
               streak: float | None = None, training_streak: float | None = None) -> float:
    """The scale ``--scale auto`` runs a height x width photo at.

    With the model's training blur known (``training_streak``, px: the median streak
    of its blurred training images, :func:`dgf.blur.measure_training_blur`): the one
    that shrinks the photo's ``streak`` (px, :func:`dgf.blur.estimate_blur`) to that
    length, ``training_streak / streak``, at most 1 and at least what keeps
    ``AUTO_MIN_SIDE`` px on the shorter side; 1 when the photo's streak could not
    be measured (``streak`` None: too small or too flat).

    Without it, the older rule: the model's training image side over the photo's
    shorter side (the photo's blur taken to be the same fraction of its size as in
    the training images), at most 1; 1 when the model does not record its training
    images."""
    shorter = min(height, width)
    if training_streak is not None:
        if streak is None or not streak > 0:
            return 1.0
        least = min(1.0, AUTO_MIN_SIDE / shorter)
        return float(min(1.0, max(least, training_streak / streak)))
    if not training_side:
        return 1.0
    return min(1.0, training_side / shorter)


#: Rows of the full-size photo that the steps at full resolution (shrinking it for
#: ``scale``, enlarging the correction, adding it, rounding to uint8) take at a time, so
#: that their float32 buffers grow with the photo's width, not its area.
BAND_ROWS = 256

# Pillow's filter supports in source pixels (times the step when shrinking).
_SUPPORT = {Image.Resampling.LANCZOS: 3.0, Image.Resampling.BICUBIC: 2.0}


def _source_rows(top: int, bottom: int, rows: int, out_rows: int, reach: float
                 ) -> tuple[int, int]:
    """The rows [lo, hi) of a ``rows``-high image that Pillow reads to resample it to
    ``out_rows`` rows, for output rows [top, bottom); ``reach``: the filter's support
    in source rows. One row more each side than Pillow's own bounds, for rounding."""
    if rows == out_rows:
        return top, bottom
    step = rows / out_rows
    lo = int(np.floor((top + 0.5) * step - reach)) - 1
    hi = int(np.ceil((bottom - 0.5) * step + reach)) + 1
    return max(lo, 0), min(hi, rows)


def _resize_rows(image: np.ndarray, top: int, bottom: int, size: tuple[int, int],
                 convert: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Rows [top, bottom) of ``image`` (h, w, C) resized to ``size`` (height, width):
    antialiased Lanczos when shrinking, bicubic when enlarging, each channel in float32
    (no rounding). Reads only the source rows those need (``convert``, e.g.
    :func:`to_unit`, turns them into float32 first), and equals the same rows of the
    whole image resized, to float round-off: Pillow's box gives the band's place."""
    height, width = size
    rows, cols = image.shape[:2]
    method = (Image.Resampling.LANCZOS if height < rows or width < cols
              else Image.Resampling.BICUBIC)
    step = rows / height
    lo, hi = _source_rows(top, bottom, rows, height, _SUPPORT[method] * max(step, 1.0))
    crop = image[lo:hi] if convert is None else convert(image[lo:hi])
    # Pillow refuses a box past the image: the last band ends exactly at its bottom.
    box = (0.0, top * step - lo, float(cols),
           float(hi - lo) if bottom == height else bottom * step - lo)
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(crop[..., c]))
                           .resize((width, bottom - top), method, box=box), dtype=np.float32)
                for c in range(crop.shape[2])]
    return np.stack(channels, axis=-1)


def _shrink_rows(step: float) -> int:
    """Source rows per band when shrinking by 1 / ``step``: at least :data:`BAND_ROWS`,
    and four times the filter's reach, so the rows read twice stay a small share."""
    return int(max(BAND_ROWS, 4 * _SUPPORT[Image.Resampling.LANCZOS] * step))


def band_bytes(width: int, scale: float) -> int:
    """Bytes the full-size steps of :func:`deblur_image` hold at once for a photo
    ``width`` pixels wide at ``scale``: enlarging, adding and rounding hold about six
    float32 RGB buffers of :data:`BAND_ROWS` rows; shrinking about two of its band
    (:func:`_shrink_rows`) and the filter's reach above and below."""
    rows = 6 * BAND_ROWS
    if scale < 1.0:
        step = 1.0 / scale
        reach = _SUPPORT[Image.Resampling.LANCZOS] * step + 2
        rows = max(rows, 2 * int(_shrink_rows(step) + 2 * reach))
    return rows * width * 3 * 4


def _shrink(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The uint8 ``image`` shrunk to (height, width) in [-1, 1] and rounded to uint8,
    a band of :func:`_shrink_rows` source rows at a time."""
    step = image.shape[0] / height
    rows = max(1, int(_shrink_rows(step) / step))
    out = np.empty((height, width, 3), np.uint8)
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        out[top:bottom] = to_uint8(_resize_rows(image, top, bottom, (height, width), to_unit))
    return out


def _add_enlarged(image: np.ndarray, correction: np.ndarray) -> np.ndarray:
    """``to_uint8(to_unit(image) + correction enlarged to image's size)``, a band of
    :data:`BAND_ROWS` rows at a time."""
    height, width = image.shape[:2]
    out = np.empty_like(image)
    for top in range(0, height, BAND_ROWS):
        bottom = min(top + BAND_ROWS, height)
        band = _resize_rows(correction, top, bottom, (height, width))
        band += to_unit(image[top:bottom])
        out[top:bottom] = to_uint8(band)
    return out


def _to_uint8_rows(unit: np.ndarray) -> np.ndarray:
    """:func:`to_uint8` a band of :data:`BAND_ROWS` rows at a time (the same values,
    without its full-size temporaries)."""
    out = np.empty(unit.shape, np.uint8)
    for top in range(0, unit.shape[0], BAND_ROWS):
        out[top : top + BAND_ROWS] = to_uint8(unit[top : top + BAND_ROWS])
    return out


def deblur_image(predictor, image: np.ndarray, *, scale: float = 1.0,
                 progress: bool = False, images_ahead: int | None = None,
                 shrunk: np.ndarray | None = None) -> np.ndarray:
    """Deblur one image with ``predictor`` (:class:`dgf.predictor.Predictor`), tiled
    when it exceeds the predictor's tile.

    Args:
        predictor: the generator and its :class:`~dgf.spec.InferenceSpec`: its
            ``tiling()`` gives the tile edge in pixels, a bound on each tile's
            pixels whose shape :func:`tile_shape` fits to the image (0 runs the whole
            image at once; an image no larger than the tile is one call) and the least overlap of neighbouring tiles (< tile / 2; more than
            1.5x the generator's receptive-field radius for a seamless result,
            :func:`seamless_tiling`); ``spec.batch`` tiles run per generator call (1 by
            default: on a CPU larger batches run no faster per pixel, measured, and
            multiply peak memory, about 3 GiB per 512 px tile at channel_rate 64; raise
            it on a GPU). Precision, engine and XLA are the predictor's; the tiling and
            blending are the same for all.
        image: (H, W, 3) uint8 in [0, 255], any H and W >= 1.
        scale: in (0, 1]. Below 1 the generator runs on the image shrunk by this
            factor (antialiased), where a long blur is within its reach, and the
            correction it makes there (its output minus its input) is enlarged
            (bicubic) and added to the full-size image: the result has the input's
            exact size and keeps all of its own detail, and a generator that
            changes nothing returns the input unchanged. The steps at full size
            (shrinking, enlarging the correction, adding it, rounding to uint8) run
            :data:`BAND_ROWS` rows at a time, so their memory grows with the width.
        progress: show a tqdm bar over the tiles (for images of several tiles).
        images_ahead: how many images of about this size the caller still has to
            deblur, this one included (dgf-deblur: its photos left). With it, the
            predictor's auto choice of path is measured only where those images'
            calls (:func:`tile_calls` each) repay the measurement
            (:meth:`dgf.predictor.Predictor.call`); None measures as it always does.
        shrunk: ``image`` already shrunk to ``scale`` as this function would
            (:mod:`dgf.prefetch` does it while TensorFlow loads); used when its size
            is the scaled size, else ignored.

    Returns:
        (H, W, 3) uint8 in [0, 255], the deblurred image.
    """
    tile, overlap = predictor.tiling()
    batch_size = predictor.spec.batch
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DgfError(
            f"expected an (H, W, 3) uint8 image, got shape {image.shape} dtype "
            f"{image.dtype}."
        )
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise DgfError(f"image of size {width}x{height} is empty.")
    scale = check_scale(scale, height, width) if scale != 1.0 else 1.0
    align = grid_factor(predictor.generator)
    small_h, small_w = scaled_size(height, width, scale)
    ahead = None if images_ahead is None else images_ahead * tile_calls(
        small_h, small_w, tile, overlap, batch_size, align)
    call = predictor.call(calls_ahead=ahead)
    if scale == 1.0:
        return _to_uint8_rows(_deblur_unit(call, image, tile, overlap, batch_size, progress,
                                           align))
    if shrunk is not None and shrunk.shape == (small_h, small_w, 3):
        small = shrunk
    else:
        small = _shrink(image, small_h, small_w)
    correction = (_deblur_unit(call, small, tile, overlap, batch_size, progress, align)
                  - to_unit(small))
    return _add_enlarged(image, correction)


def grid_factor(model) -> int:
    """The pixel grid ``model`` works on: the product of its
    :class:`~dgf.models.SpaceToDepth` factors (1 for the paper's layout). Its output
    only shifts with its input by multiples of this, so tiles start on that grid."""
    factor = 1
    for layer in getattr(model, "layers", []):
        if isinstance(layer, models.SpaceToDepth):
            factor *= layer.factor
    return factor


def _aligned(tile: int, overlap: int, step: int, align: int) -> tuple[int, int, int]:
    """``(tile, overlap, step)`` on an ``align``-pixel grid: the tile rounded down,
    the overlap and step up, the overlap kept under half the tile."""
    tile = max(align, tile // align * align)
    overlap = -(-overlap // align) * align
    if 2 * overlap >= tile:
        overlap = (tile // 2 - 1) // align * align
    return tile, overlap, -(-step // align) * align


def tile_calls(height: int, width: int, tile: int, overlap: int, batch: int = 1,
               align: int = 1, step: int = TILE_STEP) -> int:
    """How many generator calls :func:`deblur_image` makes on a ``height`` x
    ``width`` image (its scaled size) with these settings: its tiles, ``batch`` per
    call (one call when the image fits one tile)."""
    if tile == 0 or (height <= tile and width <= tile):
        return 1
    if align > 1:
        tile, overlap, step = _aligned(tile, overlap, step, align)
        return tile_calls(height + -height % align, width + -width % align, tile, overlap,
                          batch, 1, step)
    rows, cols = tile_shape(height, width, tile, overlap, step)
    count = len(tile_starts(height, rows, overlap)) * len(tile_starts(width, cols, overlap))
    return -(-count // batch)


def _deblur_unit(call: Callable[[np.ndarray], Any], image: np.ndarray, tile: int,
                 overlap: int, batch_size: int, progress: bool, align: int = 1,
                 step: int = TILE_STEP) -> np.ndarray:
    """The generator's float output in [-1, 1] for the uint8 ``image``, tiled as
    :func:`deblur_image` describes.

    For a model on an ``align``-pixel grid (space-to-depth) the image is first
    extended to a multiple of ``align`` as the model itself would extend it
    (mirrored at the bottom and right), and tiles, their overlap and their starts
    are multiples of ``align``: every tile then sees the grid the whole image
    sees, and the tiled result matches the untiled one. Tiles are
    :func:`tile_shape`'s: at most ``tile`` x ``tile`` pixels, shaped to the image."""
    height, width = image.shape[:2]
    if tile == 0 or (height <= tile and width <= tile):
        return _run_generator(call, image[None])[0]
    if align > 1:
        pad_h, pad_w = -height % align, -width % align
        padded = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
        tile, overlap, step = _aligned(tile, overlap, step, align)
        out = _deblur_unit(call, padded, tile, overlap, batch_size, progress, step=step)
        return out[:height, :width]

    th, tw = tile_shape(height, width, tile, overlap, step)
    ys, xs = tile_starts(height, th, overlap), tile_starts(width, tw, overlap)
    wy = {y: _axis_window(y, th, height, overlap) for y in ys}
    wx = {x: _axis_window(x, tw, width, overlap) for x in xs}
    accum = np.zeros((height, width, 3), np.float32)
    weight = np.zeros((height, width, 1), np.float32)
    positions = [(y, x) for y in ys for x in xs]
    with tqdm(total=len(positions), desc="tiles", unit="tile", leave=False,
              disable=not progress) as bar:
        for i in range(0, len(positions), batch_size):
            chunk = positions[i : i + batch_size]
            batch = np.stack([image[y : y + th, x : x + tw] for y, x in chunk])
            outputs = _run_generator(call, batch)
            for (y, x), out in zip(chunk, outputs):
                w = (wy[y][:, None] * wx[x][None, :])[..., None]
                accum[y : y + th, x : x + tw] += out * w
                weight[y : y + th, x : x + tw] += w
            bar.update(len(chunk))
    accum /= weight
    return accum
