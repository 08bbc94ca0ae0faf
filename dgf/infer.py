"""Deblur photos of any size with a trained generator, in overlapping tiles.

The generator is fully convolutional, so any image size works, but activation memory
grows with the pixel count (a 12-megapixel photo at channel_rate 64 needs tens of
GiB untiled). Large images are therefore cut into equal-sized overlapping tiles that
run in small batches and are blended back with a window that is flat in each tile's
interior and ramps across the overlap.

Why the window starts with a near-zero margin: the generator zero-pads at its input
border, so a tile's outputs within the receptive-field radius (about 17 px for the
DGF generator) of a cut edge differ from what the whole image would give. The window
gives the outer third of the overlap almost no weight (1e-6, never zero, so the
normalisation is always defined) and ramps linearly across the middle third. With
the default overlap of 64 px the margin is 21 px, more than the radius, so the tiled
result matches the untiled one to float round-off. Tile edges that lie on the true
image border keep weight 1: there the untiled run sees the same zero padding.

Model loading lives here and is shared with ``dgf.evaluate``; the compiled,
BatchNorm-folded inference call lives in :mod:`dgf.runtime`; reading and writing
image files and the conversions uint8 ``x`` → ``x / 127.5 - 1`` (:func:`to_unit`) and
generator output ``y`` → ``clip(rint((y + 1) * 127.5), 0, 255)`` as uint8
(:func:`to_uint8`) live in :mod:`dgf.images`.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from dgf.errors import DgfError
from dgf.fileio import check_output, require_file
from dgf.images import (
    SUFFIX_WORDS, find_images, image_format, is_image_name, read_image, to_uint8, to_unit,
    write_image,
)
from dgf.runtime import check_precision, inference_call

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 64
DEFAULT_BATCH = 1
DEFAULT_QUALITY = 95
COMPARE_DIR = "compare"
# Weight of the outputs a tile produces next to a cut edge; small but non-zero so the
# accumulated weight can never be zero.
_EDGE_WEIGHT = 1e-6


# --- model -------------------------------------------------------------------
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
    import keras

    import dgf.models  # noqa: F401  (registers the generator's custom layers)

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a bad archive
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


# --- tiling ------------------------------------------------------------------
def check_tiling(tile: int, overlap: int, batch_size: int) -> None:
    """Raise DgfError for a tile / overlap / batch combination that cannot work."""
    if tile < 0:
        raise DgfError(f"tile size {tile} is negative; use a size in pixels or 0.")
    if overlap < 0:
        raise DgfError(f"overlap {overlap} is negative.")
    if tile and 2 * overlap >= tile:
        raise DgfError(
            f"overlap {overlap} is too large for tile {tile}: each side's overlap "
            f"must be less than half the tile (try --overlap {max(0, (tile - 1) // 2)} "
            f"or a larger --tile)."
        )
    if batch_size < 1:
        raise DgfError(f"batch size {batch_size} must be at least 1.")


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


def _axis_window(start: int, size: int, length: int, overlap: int) -> np.ndarray:
    """1-D blend weights of one tile along one axis (see the module docstring)."""
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


def deblur_image(
    generator,
    image: np.ndarray,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = False,
    precision: str = "fp32",
) -> np.ndarray:
    """Deblur one image with ``generator``, tiled when it exceeds ``tile``.

    Args:
        generator: Keras model, (B, h, w, 3) float32 in [-1, 1] → same shape and
            range; called with ``training=False``.
        image: (H, W, 3) uint8 in [0, 255], any H and W ≥ 1.
        tile: tile edge in pixels; 0 runs the whole image at once. An image no
            larger than ``tile`` on an axis is one tile wide on that axis.
        overlap: minimum overlap of neighbouring tiles in pixels (< tile / 2). It
            must exceed 1.5× the generator's receptive-field radius for a seamless
            result (64 for the DGF generator's ~17 px).
        batch_size: tiles per generator call. 1 by default: on a CPU larger
            batches run no faster per pixel (measured) and multiply peak memory
            (about 3 GiB per 512 px tile at channel_rate 64); raise it on a GPU.
        progress: show a tqdm bar over the tiles (for images of several tiles).
        precision: ``"fp32"`` or ``"bf16"``; the generator runs as its BatchNorm-
            folded copy (:func:`dgf.runtime.inference_call`) with its current
            weights.

    Returns:
        (H, W, 3) uint8 in [0, 255], the deblurred image.
    """
    check_tiling(tile, overlap, batch_size)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DgfError(
            f"expected an (H, W, 3) uint8 image, got shape {image.shape} dtype "
            f"{image.dtype}."
        )
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise DgfError(f"image of size {width}x{height} is empty.")
    call = inference_call(generator, precision)
    if tile == 0 or (height <= tile and width <= tile):
        return to_uint8(_run_generator(call, image[None])[0])

    th, tw = min(tile, height), min(tile, width)
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
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
    return to_uint8(accum / weight)


# --- files -------------------------------------------------------------------
@dataclass
class DeblurReport:
    """What :func:`deblur_paths` did: outputs written, and inputs that failed."""

    processed: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Job:
    source: Path
    output: Path
    compare: Path | None


def _plan(inputs: Sequence[Path | str], out_dir: Path, compare: bool) -> list[_Job]:
    """Map inputs to outputs; files keep their name, folders are mirrored."""
    pairs: list[tuple[Path, Path]] = []
    out_resolved = out_dir.resolve()
    for raw in inputs:
        src = Path(raw)
        if src.is_dir():
            # Skip earlier outputs when OUT lies inside (not at) an input folder.
            nested = out_resolved != src.resolve()
            found = find_images(src, exclude=out_dir if nested else None)
            if not found:
                raise DgfError(
                    f"input folder {src} contains no {SUFFIX_WORDS} images "
                    f"(searched recursively)."
                )
            pairs.extend((p, p.relative_to(src)) for p in found)
        elif src.is_file():
            pairs.append((src, Path(src.name)))
        else:
            raise DgfError(f"input {src} does not exist.")
    jobs: list[_Job] = []
    claimed: dict[Path, Path] = {}
    for src, rel in pairs:
        output = out_dir / rel
        cmp = (
            out_dir / COMPARE_DIR / rel.with_name(f"{rel.stem}_compare{rel.suffix}")
            if compare
            else None
        )
        for target in (output, cmp):
            if target is None:
                continue
            key = target.resolve()
            if key == src.resolve():
                raise DgfError(
                    f"output {target} would replace its input {src}; choose another "
                    f"output folder with -o."
                )
            if key in claimed and claimed[key] != src:
                raise DgfError(
                    f"inputs {claimed[key]} and {src} would both be written to "
                    f"{target}; deblur them into different output folders."
                )
            claimed[key] = src
        jobs.append(_Job(src, output, cmp))
    return jobs


def _exists_error(path: Path) -> str:
    return f"output {path} already exists; pass --overwrite to replace it"


def _process(
    generator, job: _Job, *, tile: int, overlap: int, batch_size: int,
    overwrite: bool, quality: int, progress: bool, precision: str,
) -> None:
    import tensorflow as tf

    targets = [job.output] + ([job.compare] if job.compare else [])
    if not overwrite:
        for target in targets:
            if target.exists():
                raise _JobFailed(_exists_error(target))
    if not is_image_name(job.source):
        raise _JobFailed(
            f"unsupported file type '{job.source.suffix}'; expected {SUFFIX_WORDS}"
        )
    try:
        source = read_image(job.source)
    except UnidentifiedImageError as exc:
        raise _JobFailed(f"not an image file Pillow can read ({exc})") from exc
    except Image.DecompressionBombError as exc:
        raise _JobFailed(f"image too large to open safely ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise _JobFailed(f"corrupt, truncated or unreadable image ({exc})") from exc
    rgb = source.rgb
    try:
        deblurred = deblur_image(
            generator, rgb, tile=tile, overlap=overlap, batch_size=batch_size,
            progress=progress, precision=precision,
        )
    except (tf.errors.ResourceExhaustedError, MemoryError) as exc:
        raise _JobFailed(
            f"out of memory at {rgb.shape[1]}x{rgb.shape[0]} with tile {tile}; "
            f"use a smaller --tile or --batch"
        ) from exc
    out = Image.fromarray(deblurred, "RGB")
    if source.alpha is not None and image_format(job.output) == "PNG":
        out.putalpha(Image.fromarray(source.alpha, "L"))
    try:
        write_image(job.output, out, quality=quality, metadata=source.metadata)
        if job.compare is not None:
            side = np.concatenate([rgb, deblurred], axis=1)
            icc = {k: v for k, v in source.metadata.items() if k == "icc_profile"}
            write_image(job.compare, side, quality=quality, metadata=icc)
    except DgfError as exc:  # OutputError: cannot write OUTPUT: reason
        raise _JobFailed(str(exc)) from exc


class _JobFailed(Exception):
    """One input could not be deblurred; the message says why."""


def deblur_paths(
    model_path: Path | str,
    inputs: Sequence[Path | str],
    out_dir: Path | str,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = DEFAULT_BATCH,
    compare: bool = False,
    overwrite: bool = False,
    quality: int = DEFAULT_QUALITY,
    progress: bool = True,
    on_failure: Callable[[Path, str], None] | None = None,
    precision: str = "fp32",
) -> DeblurReport:
    """Deblur image files and folders into ``out_dir``.

    Files keep their name and format (JPEG or PNG, chosen by suffix); the tree under
    each input folder is mirrored. Output is upright (EXIF orientation applied, tag
    dropped) and RGB; a PNG's alpha channel is kept unchanged. With ``compare``,
    ``out_dir/compare/REL/NAME_compare.EXT`` holds blurred | deblurred side by side.

    Problems with the whole run (missing model, missing input path, folder without
    images, two inputs mapped to one output, bad tile settings) raise DgfError before
    any image is processed. Problems with one file (unreadable, unsupported suffix,
    existing output without ``overwrite``) are recorded in the report, passed to
    ``on_failure`` and the other files still run. ``precision`` is ``"fp32"`` or
    ``"bf16"`` (DgfError up front where TensorFlow cannot run bf16).
    """
    check_tiling(tile, overlap, batch_size)
    check_precision(precision)
    if not 1 <= quality <= 100:
        raise DgfError(f"JPEG quality {quality} must be between 1 and 100.")
    if not inputs:
        raise DgfError("no inputs given; pass image files or folders.")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DgfError(f"output {out_dir} exists and is not a folder.")
    check_output(out_dir, folder=True)
    jobs = _plan(inputs, out_dir, compare)
    generator = load_generator(model_path)
    report = DeblurReport()
    for job in tqdm(jobs, desc="deblur", unit="img", disable=not progress):
        try:
            _process(
                generator, job, tile=tile, overlap=overlap, batch_size=batch_size,
                overwrite=overwrite, quality=quality, progress=progress,
                precision=precision,
            )
        except _JobFailed as exc:
            report.failed.append((job.source, str(exc)))
            if on_failure is not None:
                on_failure(job.source, str(exc))
        else:
            report.processed.append(job.output)
    return report
