"""``dgf-deblur``: deblur photo files and folders with a trained generator.

Plans the jobs (inputs to outputs, folders mirrored), reads each image upright,
runs it through a :class:`dgf.predictor.Predictor` (the generator and the
:class:`~dgf.spec.InferenceSpec` the command built from its flags: precision, engine,
XLA, tiling, scale), writes the result atomically and reports which files failed.
The defaults of the command's options live in :mod:`dgf.options`.

Reading and writing image files, and the conversions uint8 ``x`` → ``x / 127.5 - 1``
(:func:`~dgf.images.to_unit`) and generator output ``y`` → ``clip(rint((y + 1) *
127.5), 0, 255)`` as uint8 (:func:`~dgf.images.to_uint8`), live in :mod:`dgf.images`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from dgf import host
from dgf import prefetch
from dgf.blur import BlurEstimate, auto_factor, describe_choice, model_reference
from dgf.errors import DgfError
from dgf.fileio import DiskFull, check_output
from dgf.images import (
    ALPHA_FORMATS, PHOTO_SUFFIXES, PHOTO_WORDS, find_images, format_missing, image_format,
    is_image_name, photo_size, read_image, write_image,
)
from dgf.metadata import read_metadata, training_side
from dgf.options import (
    DEFAULT_DEBLUR_PRECISION, DEFAULT_MAX_MEGAPIXELS, DEFAULT_QUALITY, DEFAULT_SCALE,
)
from dgf.predictor import Predictor, resolve
from dgf.runtime import load_generator, resolve_precision
from dgf.spec import InferenceSpec, check_scale, scaled_size
from dgf.tiling import auto_scale, band_bytes

COMPARE_DIR = "compare"
#: dgf-deblur's inference settings: ``--precision auto``, ``--scale auto``, the
#: fastest engine measured here, the model's seamless tiling.
DEBLUR_SPEC = InferenceSpec(precision=DEFAULT_DEBLUR_PRECISION, scale=DEFAULT_SCALE)


@dataclass(frozen=True)
class WriteOptions:
    """How dgf-deblur writes: ``compare`` adds ``out/compare/REL/NAME_compare.EXT``
    (blurred | deblurred side by side), ``overwrite`` replaces existing outputs,
    ``quality`` is the JPEG quality (1-100)."""

    compare: bool = False
    overwrite: bool = False
    quality: int = DEFAULT_QUALITY

    def __post_init__(self) -> None:
        if isinstance(self.quality, bool) or not isinstance(self.quality, int) \
                or not 1 <= self.quality <= 100:
            raise DgfError(f"JPEG quality {self.quality} must be between 1 and 100.")


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
            found = find_images(src, exclude=out_dir if nested else None,
                                suffixes=PHOTO_SUFFIXES)
            if not found:
                raise DgfError(
                    f"input folder {src} contains no {PHOTO_WORDS} images "
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


# Bytes per full-size pixel at the peak of one photo: the RGB input (3) and output (3)
# and Pillow's own copy while decoding or writing (4: it stores RGB in 32 bits).
_FULL_SIZE_BYTES = 10
# A comparison adds the side-by-side image (6) and Pillow's copy of it (8).
_COMPARE_BYTES = 14
# Bytes per pixel of the scaled photo: below scale 1 its uint8 copy (3), its float32
# [-1, 1] copy, the blended output and the correction (3 x 12), the blending weights
# (4); at scale 1 the output and weights (16) and the grid padding (3).
_SCALED_BYTES = {True: 43, False: 19}


def memory_needed(height: int, width: int, scale: float, *, tile: int, batch: int,
                  compare: bool = False) -> int:
    """Bytes deblurring a height x width photo at ``scale`` holds at its peak, besides
    the process and the generator's own working memory (which depends on the tile,
    not the photo): the full-size uint8 buffers, the bands of the full-size steps
    (:func:`dgf.tiling.band_bytes`), the scaled photo's buffers and one batch of
    tiles in and out."""
    full = height * width * (_FULL_SIZE_BYTES + (_COMPARE_BYTES if compare else 0))
    small_h, small_w = scaled_size(height, width, scale)
    scaled = small_h * small_w * _SCALED_BYTES[scale < 1.0]
    side = min(tile or max(small_h, small_w), max(small_h, small_w))
    tiles = 2 * batch * side * side * 3 * 4
    # An EXIF orientation may turn the photo: the bands are as wide as its longer side.
    return full + band_bytes(max(height, width), scale) + scaled + tiles


def _scale_for(predictor: Predictor, height: int, width: int,
               train_side: int | None) -> float:
    """The factor a height x width photo's memory is estimated at before decoding:
    ``--scale``, or for auto the size rule (the blur is measured once decoded)."""
    scale = predictor.spec.scale
    return auto_scale(height, width, train_side) if scale == "auto" else float(scale)


def _choose_scale(predictor: Predictor, job: _Job, rgb: np.ndarray, train_side: int | None,
                  train_streak: float | None, estimate: BlurEstimate | None = None) -> float:
    """The factor the decoded photo runs at: ``--scale``, or for auto the one that maps
    its measured streak (``estimate``, or measured here) onto the model's training blur
    (:mod:`dgf.blur`; the size rule when the model records no training blur), said on
    stdout."""
    if predictor.spec.scale != "auto":
        return float(predictor.spec.scale)
    factor, estimate = auto_factor(rgb, train_side, train_streak, estimate)
    line = describe_choice(str(job.source), estimate, factor, train_streak, train_side)
    if line:
        print(line, flush=True)
    return factor


def _preflight(job: _Job, writing: WriteOptions) -> None:
    """The checks of one job that need neither the model nor the photo's pixels."""
    targets = [job.output] + ([job.compare] if job.compare else [])
    if not writing.overwrite:
        for target in targets:
            if target.exists():
                raise _JobFailed(_exists_error(target))
    if not is_image_name(job.source, PHOTO_SUFFIXES):
        raise _JobFailed(
            f"unsupported file type '{job.source.suffix}'; expected {PHOTO_WORDS}"
        )
    reason = format_missing(PHOTO_SUFFIXES[job.source.suffix.lower()])
    if reason:  # reading it is the first thing that would fail
        raise _JobFailed(reason)
    for target in targets:
        reason = format_missing(image_format(target), writing=True)
        if reason:
            raise _JobFailed(f"cannot write {target}: {reason}")


def _check_size(predictor: Predictor, job: _Job, max_pixels: int,
                train_side: int | None) -> None:
    """Refuse a photo, from its header, before decoding it: over ``max_pixels``, or
    needing more memory than this process can still allocate."""
    try:
        width, height = photo_size(job.source)
    except DgfError as exc:  # a format this installation cannot read
        raise _JobFailed(str(exc)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise _JobFailed(_unreadable(exc)) from exc
    megapixels, limit = width * height / 1e6, max_pixels / 1e6
    enough = math.ceil(megapixels)
    tile, _ = predictor.tiling()
    need = memory_needed(height, width, _scale_for(predictor, height, width, train_side),
                         tile=tile, batch=predictor.spec.batch,
                         compare=job.compare is not None)
    if width * height > max_pixels:
        raise _JobFailed(
            f"{width}x{height} is {megapixels:.1f} megapixels, over the limit of "
            f"{limit:g} (--max-megapixels); pass --max-megapixels {enough} or "
            f"more to deblur it (it needs about {host.size_text(need)} of memory)")
    available = host.available_memory()
    if available is not None and need > available:
        raise _JobFailed(
            f"{width}x{height} ({megapixels:.1f} megapixels) needs about "
            f"{host.size_text(need)} of memory to deblur and {host.size_text(available)} "
            f"is available; free memory, or shrink the photo (it is within "
            f"--max-megapixels {limit:g}, but memory sets the limit here)")


def _unreadable(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return f"not an image file Pillow can read ({exc})"
    if isinstance(exc, Image.DecompressionBombError):
        return f"larger than --max-megapixels once decoded ({exc})"
    return f"corrupt, truncated or unreadable image ({exc})"


@dataclass(frozen=True)
class _Run:
    """What every job of one run shares: how it writes, whether it shows progress,
    the pixel limit, and for ``--scale auto`` the model's training image side and
    training blur."""

    writing: WriteOptions
    progress: bool
    max_pixels: int
    train_side: int | None = None
    train_streak: float | None = None


def _process(predictor: Predictor, job: _Job, run: _Run, *, images_ahead: int | None = None,
             following: _Job | None = None) -> None:
    """Deblur one job; once its photo is read, ``following``'s is read ahead."""
    writing, max_pixels = run.writing, run.max_pixels
    train_side, train_streak = run.train_side, run.train_streak
    _preflight(job, writing)
    _check_size(predictor, job, max_pixels, train_side)
    # A command process's first photo may have been read while TensorFlow loaded.
    source, estimate, small = prefetch.take(job.source) or (None, None, None)
    if source is None:
        try:
            source = read_image(job.source, max_pixels=max_pixels)
        except DgfError as exc:
            raise _JobFailed(str(exc)) from exc
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise _JobFailed(_unreadable(exc)) from exc
    if following is not None:  # the next photo is read while this one runs
        _read_next(predictor, following, run)
    rgb = source.rgb
    height, width = rgb.shape[:2]
    factor = _choose_scale(predictor, job, rgb, train_side, train_streak, estimate)
    try:
        factor = check_scale(factor, height, width)
    except DgfError as exc:
        raise _JobFailed(str(exc)) from exc
    try:
        deblurred = predictor.deblur_image(rgb, scale=factor, progress=run.progress,
                                           images_ahead=images_ahead, shrunk=small)
    except (tf.errors.ResourceExhaustedError, MemoryError) as exc:
        raise _JobFailed(
            f"out of memory at {rgb.shape[1]}x{rgb.shape[0]} with tile "
            f"{predictor.tiling()[0]}; "
            f"use a smaller --tile or --batch"
        ) from exc
    out = Image.fromarray(deblurred, "RGB")
    if source.alpha is not None and image_format(job.output) in ALPHA_FORMATS:
        out.putalpha(Image.fromarray(source.alpha, "L"))
    try:
        write_image(job.output, out, quality=writing.quality, metadata=source.metadata)
        if job.compare is not None:
            side = np.concatenate([rgb, deblurred], axis=1)
            icc = {k: v for k, v in source.metadata.items() if k == "icc_profile"}
            write_image(job.compare, side, quality=writing.quality, metadata=icc)
    except DiskFull:
        raise  # not a problem of this photo: the run stops (deblur_paths)
    except DgfError as exc:  # OutputError: cannot write OUTPUT: reason
        raise _JobFailed(str(exc)) from exc


def _read_next(predictor: Predictor, job: _Job, run: _Run) -> None:
    """Have :func:`dgf.prefetch.read_ahead` read ``job``'s photo while the one before
    it runs, unless a check it will fail makes that wasted work."""
    try:
        _preflight(job, run.writing)
    except _JobFailed:
        return
    prefetch.read_ahead(job.source, max_pixels=run.max_pixels, scale=predictor.spec.scale,
                        side=run.train_side, reference=run.train_streak)


class _JobFailed(Exception):
    """One input could not be deblurred; the message says why."""


def deblur_paths(
    model_path: Path | str,
    inputs: Sequence[Path | str],
    out_dir: Path | str,
    spec: InferenceSpec = DEBLUR_SPEC,
    *,
    writing: WriteOptions = WriteOptions(),
    progress: bool = True,
    on_failure: Callable[[Path, str], None] | None = None,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
) -> DeblurReport:
    """Deblur image files and folders into ``out_dir``.

    Files keep their name and format, chosen by suffix: JPEG, PNG, WebP, AVIF or HEIC
    (:data:`dgf.images.PHOTO_SUFFIXES`; HEIC needs the ``heif`` extra, and a format
    this installation cannot read or write fails that file, saying what to install);
    EXIF and the ICC profile are kept. The tree under each input folder is mirrored.
    Output is upright (EXIF orientation applied, tag dropped) and RGB; an alpha
    channel is kept where the format has one (PNG, WebP, AVIF, HEIC). ``writing``
    says whether a comparison is written beside, whether existing outputs are
    replaced and the quality of lossy outputs (:class:`WriteOptions`).

    Before decoding a photo its header is checked: a photo over ``max_megapixels``,
    or one that needs more memory than this process can still allocate
    (:func:`memory_needed` against :func:`dgf.host.available_memory`), fails with a
    message naming both numbers. Below the limit Pillow's decompression-bomb
    warning is not raised.

    Problems with the whole run (missing model, missing input path, folder without
    images, two inputs mapped to one output, bad tile settings, a missing engine or
    one that cannot run the precision) raise DgfError before any image is processed.
    Problems with one file (unreadable, unsupported suffix, too large, existing output
    without ``overwrite``) are recorded in the report, passed to ``on_failure`` and
    the other files still run.

    ``spec`` (:class:`~dgf.spec.InferenceSpec`) says how the generator runs. Its
    ``precision`` "auto" is bf16 where the CPU computes bfloat16 natively and fp32
    elsewhere (the run says which it chose). Its ``scale`` is a factor in (0, 1] or
    ``"auto"``: each photo is deblurred at that scale (:func:`dgf.tiling.deblur_image`)
    and returned at its own size; ``auto`` picks, per photo, the scale that shrinks its
    blur streaks (:func:`dgf.blur.estimate_blur`) to the length the model learned on
    (its record's training blur, :func:`dgf.tiling.auto_scale`) and prints both; a
    photo too small or flat to measure runs at 1 with a note; a model without a
    training record runs at 1, and the run says so.

    With ``engine`` or ``jit`` auto and no choice stored for a photo's tiles, the
    paths are measured when the photos left in the run have enough tiles to repay
    it (:data:`dgf.predictor.MEASURE_CALLS_PER_PATH`); a single phone photo runs on
    TensorFlow without XLA unmeasured, and the run says so.
    """
    precision = resolve(spec)
    if isinstance(max_megapixels, bool) or not isinstance(max_megapixels, (int, float)) \
            or not 0 < max_megapixels < float("inf"):
        raise DgfError(f"--max-megapixels must be a number above 0, got {max_megapixels!r}.")
    if not inputs:
        raise DgfError("no inputs given; pass image files or folders.")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DgfError(f"output {out_dir} exists and is not a folder.")
    check_output(out_dir, folder=True)
    jobs = _plan(inputs, out_dir, writing.compare)
    predictor = Predictor(load_generator(model_path), spec, source=model_path)
    predictor.tiling()  # the model's own tile and overlap, checked before any image
    scale = spec.scale
    record = read_metadata(model_path) if scale == "auto" else None
    train_side = training_side(record) if scale == "auto" else None
    train_streak, note = model_reference(record, model_path) if scale == "auto" else (None, None)
    if note:
        print(note, flush=True)
    if scale == "auto" and train_side is None:
        print(f"--scale auto: {model_path} does not record its training images (no "
              f"training metadata); running at scale 1 (pass --scale F to choose)",
              flush=True)
    if spec.precision == "auto":
        print(f"--precision auto: {precision}" + (
            " (this CPU computes bfloat16 natively)" if precision == "bf16" else
            f" ({spec.engine} runs fp32 only)" if spec.engine != "auto"
            and resolve_precision("auto") == "bf16" else ""), flush=True)
    report = DeblurReport()
    run = _Run(writing, progress, int(max_megapixels * 1e6), train_side, train_streak)
    try:
        for index, job in enumerate(tqdm(jobs, desc="deblur", unit="img",
                                         disable=not progress)):
            try:
                _process(predictor, job, run, images_ahead=len(jobs) - index,
                         following=jobs[index + 1] if index + 1 < len(jobs) else None)
            except DiskFull as exc:
                raise exc.keeping(f"the {len(report.processed)} image(s) deblurred before "
                                  f"it are kept in {out_dir}; free space and run again "
                                  f"(existing outputs are skipped without --overwrite)"
                                  ) from None
            except _JobFailed as exc:
                report.failed.append((job.source, str(exc)))
                if on_failure is not None:
                    on_failure(job.source, str(exc))
            else:
                report.processed.append(job.output)
            finally:  # its read ahead, if it failed a check before taking it
                prefetch.discard(job.source)
    finally:
        prefetch.discard()  # a read ahead that no job reached (the run stopped)
    return report
