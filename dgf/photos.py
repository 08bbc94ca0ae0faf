"""``dgf-eval --photos``: what deblurring did to your own photos, without a sharp
original to score against.

Each photo is deblurred as dgf-deblur deblurs it (the same
:class:`~dgf.predictor.Predictor` and ``--scale``, ``auto`` choosing from the photo's
blur, :mod:`dgf.blur`) and measured before and after with three no-reference
measures, all on the photo's luma shrunk to ``dgf.blur.WORK_SIDE`` px on its shorter
side, so photos of any size compare:

* ``blur_effect``: scikit-image's :func:`skimage.measure.blur_effect` (Crete et al.
  2007: how much re-blurring the image changes it), 0 sharp to 1 blurred;
* ``gradient_energy``: the mean squared luma gradient (levels per pixel, squared);
* ``streak_px``: the streak length :func:`dgf.blur.estimate_blur` measures, in
  pixels of the full photo (None: too flat to measure).

They say whether edges got steeper and streaks shorter, not whether the result is
right: ringing, halos and amplified noise raise the gradient energy too. Look at the
picture written beside them: before | after, the whole photo and a 1:1 crop of its
most detailed region.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.measure import blur_effect
from tqdm import tqdm

from dgf.blur import WORK_SIDE, auto_factor, estimate_blur, luma, model_reference
from dgf.errors import DgfError
from dgf.fileio import check_output, prepare_output, write_text_atomic
from dgf.images import SUFFIX_WORDS, find_images, read_image, write_image
from dgf.metadata import read_metadata, training_side
from dgf.predictor import Predictor
from dgf.runtime import load_generator
from dgf.spec import InferenceSpec

#: Width of each half of the picture's top row, and side of its 1:1 crops.
PANEL = 512
CSV_NAME = "photos.csv"
JSON_NAME = "photos.json"
PICTURE_SUFFIX = "_compare.jpg"
MEASURES = ("blur_effect", "gradient_energy", "streak_px")
_GAP = 4  # px of white between the panels


def measure(rgb: np.ndarray) -> dict[str, float | None]:
    """The no-reference measures (module docstring) of an (H, W, 3) uint8 photo."""
    gray = luma(rgb, WORK_SIDE)
    gy, gx = np.gradient(gray)
    streak = estimate_blur(rgb).length
    return {"blur_effect": float(blur_effect(gray / 255.0)),
            "gradient_energy": float(np.mean(gx * gx + gy * gy)),
            "streak_px": None if streak is None else float(streak)}


def detail_box(rgb: np.ndarray, side: int) -> tuple[int, int, int]:
    """(top, left, side) of the ``side`` x ``side`` window (smaller for a smaller
    photo) with the most gradient energy: the photo's most detailed region."""
    height, width = rgb.shape[:2]
    side = min(side, height, width)
    gray = luma(rgb, WORK_SIDE)
    factor = min(gray.shape) / min(height, width)
    gy, gx = np.gradient(gray)
    window = max(1, round(side * factor))
    energy = ndimage.uniform_filter(gx * gx + gy * gy, window, mode="constant")
    half = window // 2
    inner = energy[half:gray.shape[0] - (window - half) + 1,
                   half:gray.shape[1] - (window - half) + 1]
    row, col = np.unravel_index(np.argmax(inner), inner.shape) if inner.size else (0, 0)
    top = min(height - side, max(0, round(row / factor)))
    left = min(width - side, max(0, round(col / factor)))
    return int(top), int(left), int(side)


def picture(before: np.ndarray, after: np.ndarray, panel: int = PANEL) -> np.ndarray:
    """before | after: the whole photos shrunk to ``panel`` px wide above, 1:1 crops
    (``panel`` px square at most) of the most detailed region of ``before`` below,
    white between; (H, W, 3) uint8."""
    height, width = before.shape[:2]
    shown = (panel, max(1, round(height * panel / width)))
    top = [np.asarray(Image.fromarray(img).resize(shown, Image.Resampling.LANCZOS))
           for img in (before, after)]
    y, x, side = detail_box(before, panel)
    crops = [img[y:y + side, x:x + side] for img in (before, after)]
    canvas = np.full((shown[1] + _GAP + side, 2 * panel + _GAP, 3), 255, np.uint8)
    for i, (whole, crop) in enumerate(zip(top, crops)):
        left = i * (panel + _GAP)
        canvas[:shown[1], left:left + panel] = whole
        canvas[shown[1] + _GAP:, left:left + side] = crop
    return canvas


def _photos(inputs: Sequence[Path | str]) -> list[tuple[Path, Path]]:
    """(photo, its name under the output folder) for files and folders (searched
    recursively); DgfError for a missing path, a folder without images, or two
    photos with one name."""
    found: list[tuple[Path, Path]] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            images = find_images(path)
            if not images:
                raise DgfError(f"photo folder {path} contains no {SUFFIX_WORDS} images "
                               f"(searched recursively).")
            found.extend((p, p.relative_to(path)) for p in images)
        elif path.is_file():
            found.append((path, Path(path.name)))
        else:
            raise DgfError(f"photo {path} does not exist.")
    seen: dict[Path, Path] = {}
    for photo, name in found:
        if name in seen and seen[name] != photo:
            raise DgfError(f"photos {seen[name]} and {photo} have the same name {name}; "
                           f"report them into different --out folders.")
        seen[name] = photo
    return found


def _write_tables(out: Path, rows: list[dict[str, Any]], about: dict[str, Any]) -> None:
    fields = ["photo", "width", "height", "scale"] + [
        f"{m}_{when}" for m in MEASURES for when in ("before", "after")]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    write_text_atomic(out / CSV_NAME, text.getvalue())
    write_text_atomic(out / JSON_NAME, json.dumps({**about, "photos": rows}, indent=1) + "\n")


def _choose_scale(rgb: np.ndarray, spec: InferenceSpec, reference: tuple) -> float:
    """The scale a photo runs at: ``spec.scale``, or for auto dgf-deblur's choice
    (``reference``: the model's training streak and image side)."""
    if spec.scale != "auto":
        return float(spec.scale)
    streak, side = reference
    return auto_factor(rgb, side, streak)[0]


def report_photos(model: Path | str, inputs: Sequence[Path | str], out_dir: Path | str,
                  spec: InferenceSpec, *, overwrite: bool = False,
                  progress: bool = True) -> dict[str, Any]:
    """Deblur each photo of ``inputs`` (files, folders) with the generator ``model``
    as ``spec`` says, and write into ``out_dir``: ``NAME_compare.jpg`` per photo
    (:func:`picture`), ``photos.csv`` and ``photos.json`` (the measures before and
    after, the scale; the JSON adds the model and settings). Every file is written
    atomically; existing tables are kept unless ``overwrite``. Returns the JSON's
    content; a photo that cannot be read is listed under ``failed``."""
    out = Path(out_dir)
    photos = _photos(inputs)
    check_output(out, folder=True)
    if not overwrite:
        for name in (CSV_NAME, JSON_NAME):
            if (out / name).exists():
                raise DgfError(f"{out / name} already exists; pass --overwrite to replace "
                               f"it, or choose another --out.")
    predictor = Predictor(load_generator(model), spec, source=model)
    predictor.tiling()
    record = read_metadata(model)
    streak, note = model_reference(record, model) if spec.scale == "auto" else (None, None)
    if note:
        print(note, flush=True)
    reference = (streak, training_side(record))
    rows, failed = [], []
    prepare_output(out, folder=True)
    for index, (photo, name) in enumerate(tqdm(photos, desc="photos", unit="img",
                                               disable=not progress)):
        try:
            rgb = read_image(photo).rgb
        except (DgfError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            failed.append({"photo": str(photo), "error": str(exc)})
            print(f"warning: {photo}: cannot be read ({exc}); skipped", flush=True)
            continue
        scale = _choose_scale(rgb, spec, reference)
        after = predictor.deblur_image(rgb, scale=scale, images_ahead=len(photos) - index)
        target = out / name.parent / (name.stem + PICTURE_SUFFIX)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_image(target, picture(rgb, after), quality=90)
        row = {"photo": str(photo), "width": rgb.shape[1], "height": rgb.shape[0],
               "scale": round(scale, 4), "picture": str(target)}
        for when, image in (("before", rgb), ("after", after)):
            for key, value in measure(image).items():
                row[f"{key}_{when}"] = value
        rows.append(row)
    about = {"model": str(model), "settings": spec.describe(), "measured_at": WORK_SIDE,
             "failed": failed}
    _write_tables(out, rows, about)
    return {**about, "photos": rows, "out_dir": str(out)}
