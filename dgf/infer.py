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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from dgf.blur import describe_choice, estimate_blur, model_reference
from dgf.errors import DgfError
from dgf.fileio import DiskFull, check_output
from dgf.images import (
    SUFFIX_WORDS, find_images, image_format, is_image_name, read_image, write_image,
)
from dgf.metadata import read_metadata, training_side
from dgf.options import DEFAULT_DEBLUR_PRECISION, DEFAULT_QUALITY, DEFAULT_SCALE
from dgf.predictor import Predictor, resolve
from dgf.runtime import load_generator, resolve_precision
from dgf.spec import InferenceSpec, check_scale
from dgf.tiling import auto_scale

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


def _process(predictor: Predictor, job: _Job, writing: WriteOptions, *, progress: bool,
             train_side: int | None = None, train_streak: float | None = None) -> None:
    targets = [job.output] + ([job.compare] if job.compare else [])
    if not writing.overwrite:
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
    height, width = rgb.shape[:2]
    scale = predictor.spec.scale
    factor = float(scale) if scale != "auto" else 1.0
    if scale == "auto":
        estimate = estimate_blur(rgb) if train_streak is not None else None
        factor = auto_scale(height, width, train_side, training_streak=train_streak,
                            streak=estimate.length if estimate else None)
        line = describe_choice(str(job.source), estimate, factor, train_streak, train_side)
        if line:
            print(line, flush=True)
    try:
        factor = check_scale(factor, height, width)
    except DgfError as exc:
        raise _JobFailed(str(exc)) from exc
    try:
        deblurred = predictor.deblur_image(rgb, scale=factor, progress=progress)
    except (tf.errors.ResourceExhaustedError, MemoryError) as exc:
        raise _JobFailed(
            f"out of memory at {rgb.shape[1]}x{rgb.shape[0]} with tile "
            f"{predictor.tiling()[0]}; "
            f"use a smaller --tile or --batch"
        ) from exc
    out = Image.fromarray(deblurred, "RGB")
    if source.alpha is not None and image_format(job.output) == "PNG":
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
) -> DeblurReport:
    """Deblur image files and folders into ``out_dir``.

    Files keep their name and format (JPEG or PNG, chosen by suffix); the tree under
    each input folder is mirrored. Output is upright (EXIF orientation applied, tag
    dropped) and RGB; a PNG's alpha channel is kept unchanged. ``writing`` says
    whether a comparison is written beside, whether existing outputs are replaced and
    the JPEG quality (:class:`WriteOptions`).

    Problems with the whole run (missing model, missing input path, folder without
    images, two inputs mapped to one output, bad tile settings, a missing engine or
    one that cannot run the precision) raise DgfError before any image is processed.
    Problems with one file (unreadable, unsupported suffix, existing output without
    ``overwrite``) are recorded in the report, passed to ``on_failure`` and the other
    files still run.

    ``spec`` (:class:`~dgf.spec.InferenceSpec`) says how the generator runs. Its
    ``precision`` "auto" is bf16 where the CPU computes bfloat16 natively and fp32
    elsewhere (the run says which it chose). Its ``scale`` is a factor in (0, 1] or
    ``"auto"``: each photo is deblurred at that scale (:func:`dgf.tiling.deblur_image`)
    and returned at its own size; ``auto`` picks, per photo, the scale that shrinks its
    blur streaks (:func:`dgf.blur.estimate_blur`) to the length the model learned on
    (its record's training blur, :func:`dgf.tiling.auto_scale`) and prints both; a
    photo too small or flat to measure runs at 1 with a note; a model without a
    training record runs at 1, and the run says so.
    """
    precision = resolve(spec)
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
    for job in tqdm(jobs, desc="deblur", unit="img", disable=not progress):
        try:
            _process(predictor, job, writing, progress=progress, train_side=train_side,
                     train_streak=train_streak)
        except DiskFull as exc:
            raise exc.keeping(f"the {len(report.processed)} image(s) deblurred before it "
                              f"are kept in {out_dir}; free space and run again (existing "
                              f"outputs are skipped without --overwrite)") from None
        except _JobFailed as exc:
            report.failed.append((job.source, str(exc)))
            if on_failure is not None:
                on_failure(job.source, str(exc))
        else:
            report.processed.append(job.output)
    return report
