"""``dgf-deblur``: deblur photo files and folders with a trained generator.

Plans the jobs (inputs to outputs, folders mirrored), reads each image upright,
runs it through :func:`dgf.runtime.deblur_image` (the model runtime: loading,
BatchNorm folding, tiling), writes the result atomically and reports which files
failed. The defaults of the command's options live in :mod:`dgf.options`.

The conversions live here and are shared with ``dgf.evaluate`` and
``dgf.runtime``: uint8 ``x`` → ``x / 127.5 - 1`` (:func:`to_unit`); generator
output ``y`` → ``clip(rint((y + 1) * 127.5), 0, 255)`` as uint8 (:func:`to_uint8`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from dgf.errors import DgfError
from dgf.fileio import check_output, write_atomic
from dgf.options import (
    DEFAULT_BATCH,
    DEFAULT_OVERLAP,
    DEFAULT_PRECISION,
    DEFAULT_QUALITY,
    DEFAULT_TILE,
)
from dgf.runtime import check_precision, check_tiling, deblur_image, load_generator

IMAGE_SUFFIXES = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}
COMPARE_DIR = "compare"


# --- conversions -------------------------------------------------------------
def to_unit(x_uint8: Any) -> np.ndarray:
    """uint8 image(s), any shape -> float32 in [-1, 1] (``x / 127.5 - 1``)."""
    return np.asarray(x_uint8, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def to_uint8(x: Any) -> np.ndarray:
    """Generator output -> the uint8 image a user would save.

    ``x``: any shape, float in [-1, 1] (NumPy array or tensor). Returns
    ``clip(rint((x + 1) * 127.5), 0, 255)`` as uint8; ``np.rint`` rounds halves to
    even, so -1 -> 0, 0 -> 128 (127.5 rounds to the even 128), 1 -> 255.
    """
    arr = np.asarray(x, dtype=np.float32)
    return np.clip(np.rint((arr + 1.0) * 127.5), 0, 255).astype(np.uint8)


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


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _plan(inputs: Sequence[Path | str], out_dir: Path, compare: bool) -> list[_Job]:
    """Map inputs to outputs; files keep their name, folders are mirrored."""
    pairs: list[tuple[Path, Path]] = []
    out_resolved = out_dir.resolve()
    for raw in inputs:
        src = Path(raw)
        if src.is_dir():
            # Skip earlier outputs when OUT lies inside (not at) an input folder.
            nested = out_resolved != src.resolve()
            found = sorted(
                p for p in src.rglob("*")
                if p.is_file() and _is_image_name(p)
                and not (nested and out_resolved in p.resolve().parents)
            )
            if not found:
                raise DgfError(
                    f"input folder {src} contains no .jpg, .jpeg or .png images "
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


def _read_rgb(path: Path) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Read an image upright as (H, W, 3) uint8, plus its alpha (H, W) uint8 if any.

    Also returns what to carry into the output: ICC profile (RGB sources only) and
    EXIF without the orientation tag.
    """
    with Image.open(path) as img:
        img.load()
        upright = ImageOps.exif_transpose(img)
    keep: dict = {}
    exif = upright.getexif()
    if exif:
        exif.pop(ExifTags.Base.Orientation, None)
        keep["exif"] = exif
    if upright.mode in ("RGB", "RGBA") and upright.info.get("icc_profile"):
        keep["icc_profile"] = upright.info["icc_profile"]
    mode = upright.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: Pillow's RGB conversion clips instead of scaling.
        grey = np.asarray(upright, dtype=np.float64) / 257.0
        rgb = np.repeat(np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None], 3, 2)
        return rgb, None, keep
    alpha = None
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        mode == "P" and "transparency" in upright.info
    )
    if has_alpha:
        rgba = upright.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3].copy()
        rgb = np.asarray(rgba)[..., :3].copy()
    else:
        rgb = np.asarray(upright.convert("RGB")).copy()
    return rgb, alpha, keep


def _save_atomic(image: Image.Image, target: Path, *, quality: int, keep: dict) -> None:
    """Write ``image`` to ``target`` atomically (:func:`dgf.fileio.write_atomic`)."""
    fmt = IMAGE_SUFFIXES[target.suffix.lower()]
    options: dict = {}
    if fmt == "JPEG":
        options["quality"] = quality
        if image.mode == "RGBA":
            image = image.convert("RGB")
    if "icc_profile" in keep:
        options["icc_profile"] = keep["icc_profile"]
    if "exif" in keep:
        try:
            options["exif"] = keep["exif"].tobytes()
        except (ValueError, TypeError, OSError, KeyError):
            pass  # a malformed EXIF block is not worth losing the image over
    write_atomic(target, lambda tmp: image.save(tmp, format=fmt, **options))


def _exists_error(path: Path) -> str:
    return f"output {path} already exists; pass --overwrite to replace it"


def _process(
    generator, job: _Job, *, tile: int, overlap: int, batch_size: int,
    overwrite: bool, quality: int, progress: bool, precision: str,
) -> None:
    targets = [job.output] + ([job.compare] if job.compare else [])
    if not overwrite:
        for target in targets:
            if target.exists():
                raise _JobFailed(_exists_error(target))
    if not _is_image_name(job.source):
        raise _JobFailed(
            f"unsupported file type '{job.source.suffix}'; expected .jpg, .jpeg or .png"
        )
    try:
        rgb, alpha, keep = _read_rgb(job.source)
    except UnidentifiedImageError as exc:
        raise _JobFailed(f"not an image file Pillow can read ({exc})") from exc
    except Image.DecompressionBombError as exc:
        raise _JobFailed(f"image too large to open safely ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise _JobFailed(f"corrupt, truncated or unreadable image ({exc})") from exc
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
    if alpha is not None and IMAGE_SUFFIXES[job.output.suffix.lower()] == "PNG":
        out.putalpha(Image.fromarray(alpha, "L"))
    try:
        _save_atomic(out, job.output, quality=quality, keep=keep)
        if job.compare is not None:
            side = np.concatenate([rgb, deblurred], axis=1)
            _save_atomic(Image.fromarray(side, "RGB"), job.compare, quality=quality,
                         keep={k: v for k, v in keep.items() if k == "icc_profile"})
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
    precision: str = DEFAULT_PRECISION,
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
