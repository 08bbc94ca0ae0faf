"""Synthetic training pairs: sharp photos blurred with random camera-shake kernels
(:mod:`dgf.kernels`), optionally with what a camera adds (:mod:`dgf.realism`).

Border handling: a crop is blurred together with the photo around it (the kernel
radius on every side), so the blurred half carries the light that real shake would
bring in from outside the frame. Where the photo ends, it is extended by mirror
reflection that repeats the edge pixel (NumPy ``symmetric``, SciPy ``reflect``).
:func:`dgf.kernels.blur` on a whole image uses that reflection at all four borders.

Photos whose short side is below the crop size are upscaled (Lanczos) so that the
short side equals the crop size; larger photos are cropped at their own resolution.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skimage_data
from tqdm import tqdm

from dgf.checks import is_int
from dgf.errors import DgfError
from dgf.fileio import DiskFull, check_output, prepare_output, write_atomic, write_text_atomic
from dgf.images import SUFFIX_WORDS, find_images, is_image_name, read_rgb, write_image
from dgf.kernels import (
    DEFAULT_STRENGTH, blur_valid, check_kernel_args, random_kernel, round_levels,
)
from dgf.realism import Realism

OUTPUT_FORMATS = ("jpg", "png")
KERNEL_SUFFIX = ".kernel.npy"
MANIFEST_NAME = "make_pairs.json"

# The skimage.data photos that ship inside the scikit-image wheel (no download) and
# are real scenes at least 256 px on the short side. Left out on purpose: `clock`
# (already motion-blurred), `horse`/`logo`/`checkerboard` (drawings), `page`/`text`
# (too small), `hubble_deep_field`/`retina` (mostly black background).
_SAMPLE_PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle",
    "coins",
    "moon",
    "immunohistochemistry",
    "brick",
    "gravel",
)

def sample_photos() -> list[tuple[str, np.ndarray]]:
    """The sample photos bundled with scikit-image, loaded without any download.

    Returns:
        (name, image) pairs; each image (H, W, 3) uint8 RGB, short side >= 256.
        Gray photos are repeated into three channels.
    """
    photos = []
    for name in _SAMPLE_PHOTOS:
        try:
            image = (
                skimage_data.stereo_motorcycle()[0] if name == "motorcycle"
                else getattr(skimage_data, name)()
            )
        except (ImportError, OSError, ValueError, AttributeError) as exc:
            # Builds of scikit-image that leave an image out (or want to download
            # it) just give fewer samples.
            print(f"warning: sample photo '{name}' unavailable ({exc})", file=sys.stderr)
            continue
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        photos.append((name, np.ascontiguousarray(image[:, :, :3], dtype=np.uint8)))
    if not photos:
        raise DgfError("no scikit-image sample photo could be loaded offline.")
    return photos


# _gather_sources has a parameter of the same name (the setting
# MakePairsOptions.sample_photos); it calls the function through this alias.
_bundled_photos = sample_photos


def _fit_short_side(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Upscale (Lanczos) so the short side is at least ``size``; return the image
    and the scale factor used (1.0 when it was large enough)."""
    h, w = image.shape[:2]
    if min(h, w) >= size:
        return image, 1.0
    scale = size / min(h, w)
    new_w = max(size, int(round(w * scale)))
    new_h = max(size, int(round(h * scale)))
    resized = Image.fromarray(image).resize((new_w, new_h), Image.LANCZOS)
    return np.asarray(resized, dtype=np.uint8), scale


def _split_photos(count: int, test_fraction: float, rng: np.random.Generator) -> set[int]:
    """Indices of the photos that go to test: a random ``test_fraction`` of them,
    at least one (and never all) when there are two or more and the fraction > 0."""
    if count < 2 or test_fraction == 0:
        return set()
    n_test = min(count - 1, max(1, int(round(count * test_fraction))))
    return set(int(i) for i in rng.permutation(count)[:n_test])


@dataclass
class MakePairsReport:
    """What :func:`make_pairs` wrote."""

    out_dir: Path
    train_pairs: int
    test_pairs: int
    train_photos: int
    test_photos: int
    upscaled: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [
            f"wrote {self.train_pairs} train pairs from {self.train_photos} photo(s) to "
            f"{self.out_dir / 'train'}",
            f"wrote {self.test_pairs} test pairs from {self.test_photos} photo(s) to "
            f"{self.out_dir / 'test'}",
        ]
        if self.upscaled:
            lines.append(f"upscaled {len(self.upscaled)} photo(s) smaller than the crop size")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable file(s):")
            lines += [f"  {name}: {why}" for name, why in self.skipped]
        lines += [f"note: {note}" for note in self.notes]
        lines.append(f"settings and sources: {self.out_dir / MANIFEST_NAME} ({self.seconds:.1f} s)")
        return "\n".join(lines)


def _existing_outputs(out_dir: Path) -> list[Path]:
    found = []
    for split in ("train", "test"):
        folder = out_dir / split
        if folder.is_dir():
            found += [
                p
                for p in folder.iterdir()
                if p.is_file()
                and (is_image_name(p) or p.name.endswith(KERNEL_SUFFIX))
            ]
    found.sort()
    manifest = out_dir / MANIFEST_NAME
    if manifest.is_file():
        found.append(manifest)
    return found


@dataclass(frozen=True)
class MakePairsOptions:
    """How :func:`make_pairs` makes its pairs: every setting of ``dgf-make-pairs``
    but the folders, ``--overwrite`` and ``--no-progress``. Checked when made: a bad
    value is a DgfError naming it and what is allowed.

    Attributes:
        per_image: random crops (each with its own kernel) per photo.
        size: side of the square crops; smaller photos are upscaled first.
        test_fraction: share of the photos that go to test, in [0, 1).
        seed: same seed and inputs give byte-identical files.
        kernel_size: odd side of the kernel canvas.
        strength: camera-shake strength in (0, 1]; see :func:`random_kernel`.
        noise: std of Gaussian noise added to the blurred half, in 8-bit levels.
        quality: JPEG quality (``fmt="jpg"``); chroma is not subsampled.
        fmt: "jpg" or "png" (lossless).
        linear_light: blur in linear light (sRGB decoded, convolved, encoded back).
        highlight_gain: with ``linear_light``, near-white pixels of the sharp crop
            are made up to this many times brighter than white before blurring, and
            the result is clipped, as saturated lights smear in real photos (1: off).
        jpeg_quality_range: (LO, HI): re-compress the blurred half once as JPEG at
            a quality drawn from LO..HI per pair (None: off). See :mod:`dgf.realism`.
        sample_photos: use scikit-image's bundled photos instead of a folder.
    """

    per_image: int = 4
    size: int = 256
    test_fraction: float = 0.1
    seed: int = 0
    kernel_size: int = 31
    strength: float = DEFAULT_STRENGTH
    noise: float = 0.0
    quality: int = 95
    fmt: str = "jpg"
    linear_light: bool = False
    highlight_gain: float = 1.0
    jpeg_quality_range: tuple[int, int] | None = None
    sample_photos: bool = False

    def __post_init__(self) -> None:
        per_image, size, seed = self.per_image, self.size, self.seed
        if not is_int(per_image) or per_image < 1:
            raise DgfError(f"per-image {per_image!r} must be a whole number >= 1.")
        if not is_int(size) or size < 8:
            raise DgfError(f"size {size!r} must be a whole number >= 8 (e.g. 256).")
        if not (0.0 <= float(self.test_fraction) < 1.0):
            raise DgfError(
                f"test-fraction {self.test_fraction!r} must be in [0, 1): the share of "
                f"source photos that go to test (0 for no test split)."
            )
        if not is_int(seed) or seed < 0:
            raise DgfError(f"seed {seed!r} must be a whole number >= 0.")
        check_kernel_args(self.kernel_size, self.strength)
        if self.kernel_size > size:
            raise DgfError(f"kernel size {self.kernel_size} is larger than the crop size {size}.")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise DgfError(f"noise {self.noise!r} must be >= 0 (std in 8-bit levels, e.g. 2).")
        if not is_int(self.quality) or not 1 <= self.quality <= 100:
            raise DgfError(f"JPEG quality {self.quality!r} must be between 1 and 100.")
        if self.fmt not in OUTPUT_FORMATS:
            raise DgfError(f"format {self.fmt!r} is not one of {', '.join(OUTPUT_FORMATS)}.")
        self.realism.check()
        if self.jpeg_quality_range is not None:
            object.__setattr__(self, "jpeg_quality_range", tuple(self.jpeg_quality_range))

    @property
    def realism(self) -> Realism:
        """The camera steps these options switch on."""
        return Realism(self.linear_light, self.highlight_gain, self.jpeg_quality_range)

    def settings(self, sharp_dir: Path | str | None) -> dict:
        """The manifest's record of these options and the photo folder."""
        return {
            "sharp_dir": None if self.sample_photos else str(Path(sharp_dir)),
            "sample_photos": self.sample_photos, "per_image": self.per_image,
            "size": self.size, "test_fraction": self.test_fraction, "seed": self.seed,
            "kernel_size": self.kernel_size, "strength": self.strength,
            "noise": self.noise, "quality": self.quality, "format": self.fmt,
            **self.realism.settings(),
        }


@dataclass(frozen=True)
class _Recipe:
    """How every pair of one run is made and named."""

    options: MakePairsOptions
    photo_digits: int

    @property
    def crop_digits(self) -> int:
        return max(2, len(str(self.options.per_image - 1)))


@dataclass
class _PhotoPairs:
    """What one source photo gave: the records of its pairs, or why it was skipped."""

    name: str
    split: str
    records: list[dict] = field(default_factory=list)
    upscaled: bool = False
    skipped: str | None = None


def _gather_sources(
    sharp_dir: Path | str | None, sample_photos: bool, out_dir: Path
) -> list[tuple[str, Path | np.ndarray]]:
    """(name, photo file or image) of every source photo, in their numbering order."""
    if sample_photos:
        return [(f"skimage.data.{name}", image) for name, image in _bundled_photos()]
    sharp_dir = Path(sharp_dir)
    if not sharp_dir.is_dir():
        raise DgfError(f"{sharp_dir} is not a folder; give the folder of sharp photos.")
    paths = find_images(sharp_dir, exclude=out_dir if out_dir.exists() else None)
    if not paths:
        raise DgfError(
            f"no {SUFFIX_WORDS} photos found under {sharp_dir} (searched "
            f"recursively); point SHARP_DIR at your sharp photos."
        )
    return [(str(p.relative_to(sharp_dir)), p) for p in paths]


def _clear_outputs(out_dir: Path, overwrite: bool) -> None:
    """Remove the pairs, kernels and manifest of an earlier run (only with
    ``overwrite``; DgfError naming one of them otherwise)."""
    existing = _existing_outputs(out_dir)
    if existing and not overwrite:
        raise DgfError(
            f"{out_dir} already holds {len(existing)} pair/kernel files (e.g. "
            f"{existing[0]}); pass --overwrite to replace them or choose another OUT_DIR."
        )
    for path in existing:
        path.unlink()


def _write_pair(
    folder: Path, stem: str, pair: np.ndarray, kernel: np.ndarray, recipe: _Recipe
) -> None:
    # The kernel goes first, so every pair on disk has its kernel, even when the
    # run is interrupted between the two.
    write_atomic(folder / f"{stem}{KERNEL_SUFFIX}", lambda tmp: np.save(tmp, kernel))
    # 4:4:4 chroma: subsampling would smear the sharp half's colour edges.
    fmt = recipe.options.fmt
    options = {"quality": recipe.options.quality, "subsampling": 0} if fmt == "jpg" else {}
    write_image(folder / f"{stem}.{fmt}", pair, **options)


def _cut_pairs(
    image: np.ndarray, index: int, name: str, scale: float, split: str, out_dir: Path,
    recipe: _Recipe,
) -> list[dict]:
    """Cut, blur and write the ``per_image`` pairs of one photo (short side at least
    the crop size); return their manifest records."""
    o, realism = recipe.options, recipe.options.realism
    size, radius = o.size, o.kernel_size // 2
    # One generator per photo, keyed by its place in the sorted list, so a photo's
    # crops and kernels do not depend on how many came before it or failed.
    rng = np.random.default_rng([o.seed, 1, index])
    # The camera steps draw from their own stream: switching them on leaves the
    # crops and kernels of a seed as they were.
    camera = np.random.default_rng([o.seed, 2, index])
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="symmetric")
    h, w = image.shape[:2]
    records = []
    for k in range(o.per_image):
        top = int(rng.integers(0, h - size + 1))
        left = int(rng.integers(0, w - size + 1))
        kernel = random_kernel(rng, o.kernel_size, o.strength)
        sharp = image[top : top + size, left : left + size]
        region = padded[top : top + size + 2 * radius, left : left + size + 2 * radius]
        blurred, drawn = realism.blur(region, lambda canvas: blur_valid(canvas, kernel), camera)
        if o.noise > 0:
            blurred = blurred + rng.normal(0.0, o.noise, blurred.shape)
        blurred, compressed = realism.compress(round_levels(blurred), camera)
        pair = np.concatenate([sharp, blurred], axis=1)
        stem = f"{index:0{recipe.photo_digits}d}_{k:0{recipe.crop_digits}d}"
        _write_pair(out_dir / split, stem, pair, kernel, recipe)
        records.append({
            "file": f"{split}/{stem}.{o.fmt}",
            "kernel": f"{split}/{stem}{KERNEL_SUFFIX}",
            "source": name,
            "crop": {"top": top, "left": left, "size": size, "scale": scale},
            **drawn, **compressed,
        })
    return records


def _photo_pairs(
    index: int, name: str, source: Path | np.ndarray, split: str, out_dir: Path,
    recipe: _Recipe,
) -> _PhotoPairs:
    """Read one source photo (a file, or an image already in memory) and write its
    pairs; an unreadable file is reported, not raised."""
    try:
        image = read_rgb(source) if isinstance(source, Path) else source
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        tqdm.write(f"warning: skipping {name}: {exc}", file=sys.stderr)
        return _PhotoPairs(name, split, skipped=f"{type(exc).__name__}: {exc}")
    image, scale = _fit_short_side(image, recipe.options.size)
    records = _cut_pairs(image, index, name, scale, split, out_dir, recipe)
    return _PhotoPairs(name, split, records, upscaled=scale != 1.0)


def _move_photo(result: _PhotoPairs, split: str, out_dir: Path) -> None:
    """Move one photo's pairs and kernels to the other split folder."""
    for record in result.records:
        for key in ("file", "kernel"):
            name = Path(record[key]).name
            os.replace(out_dir / record[key], out_dir / split / name)
            record[key] = f"{split}/{name}"
    result.split = split


def _remove_written(results: list[_PhotoPairs], out_dir: Path) -> None:
    for result in results:
        for record in result.records:
            for key in ("file", "kernel"):
                (out_dir / record[key]).unlink(missing_ok=True)


def _settle_splits(
    out_dir: Path, results: list[_PhotoPairs], test_fraction: float, seed: int
) -> list[str]:
    """Make both splits non-empty from the photos that could be read.

    The test photos are drawn before reading; when the unreadable ones were all of
    one split, photos of the other are moved over (drawn with the seed). Fewer than
    two readable photos cannot make two splits: their pairs are removed again and a
    DgfError says what to do. Returns the notes for the report.
    """
    done = [r for r in results if r.skipped is None]
    if test_fraction == 0 or not done:
        return []
    if len(done) < 2:
        _remove_written(results, out_dir)
        raise DgfError(
            f"only {len(done)} of {len(results)} photos could be read, and a train and "
            f"a test split need at least two; add readable photos, or pass "
            f"--test-fraction 0 to write a train split only."
        )
    test = [r for r in done if r.split == "test"]
    train = [r for r in done if r.split == "train"]
    if test and train:
        return []
    want = min(len(done) - 1, max(1, int(round(len(done) * test_fraction))))
    source, target = (train, "test") if not test else (test, "train")
    count = want if target == "test" else len(done) - want
    order = np.random.default_rng([seed, 3]).permutation(len(source))[:count]
    for i in sorted(int(i) for i in order):
        _move_photo(source[i], target, out_dir)
    return [f"moved {count} readable photo(s) to {target}: the photos drawn for it "
            f"could not be read"]


def _summarise(
    out_dir: Path, per_image: int, results: list[_PhotoPairs], notes: list[str]
) -> MakePairsReport:
    """The report of a run from what each photo gave; DgfError when none was read."""
    done = [r for r in results if r.skipped is None]
    n_test = sum(r.split == "test" for r in done)
    n_train = len(done) - n_test
    report = MakePairsReport(
        out_dir, n_train * per_image, n_test * per_image, n_train, n_test,
        upscaled=[r.name for r in done if r.upscaled],
        skipped=[(r.name, r.skipped) for r in results if r.skipped is not None],
    )
    if not done:
        raise DgfError(
            f"none of the {len(results)} photos could be read; first problem: "
            f"{report.skipped[0][0]}: {report.skipped[0][1]}"
        )
    report.notes += notes
    return report


def _manifest(settings: dict, results: list[_PhotoPairs]) -> dict:
    """The contents of ``make_pairs.json``: settings, every pair's source and crop,
    and the photos skipped."""
    return {
        "tool": "dgf-make-pairs",
        "settings": settings,
        "pairs": [record for r in results for record in r.records],
        "skipped": [{"source": r.name, "reason": r.skipped} for r in results
                    if r.skipped is not None],
    }


def make_pairs(
    sharp_dir: Path | str | None,
    out_dir: Path | str,
    options: MakePairsOptions = MakePairsOptions(),
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> MakePairsReport:
    """Blur sharp photos with random camera-shake kernels into side-by-side pairs.

    Writes ``out_dir/{train,test}/PPPP_KK.{jpg,png}`` (sharp crop on the left half,
    blurred on the right: width 2 * size, height size), the kernel of each pair as
    ``PPPP_KK.kernel.npy`` ((k, k) float32 summing to 1) beside it, and
    ``out_dir/make_pairs.json`` with the settings and the source photo and crop of
    every pair. ``PPPP`` numbers the source photo, so all crops of a photo share it;
    whole photos go to test, never single crops, so none leaks across splits. Every
    file is written atomically (:mod:`dgf.fileio`), the manifest last.

    Args:
        sharp_dir: folder searched recursively for .jpg/.jpeg/.png photos (hidden
            files and folders left out); None with ``options.sample_photos``.
        out_dir: where the train/ and test/ folders go.
        options: how the pairs are made (:class:`MakePairsOptions`, e.g.
            ``MakePairsOptions(per_image=2, size=128, seed=1)``).
        overwrite: replace existing pairs in ``out_dir``; without it they are an error.
        progress: show a progress bar over photos.
    """
    started = time.perf_counter()
    if options.sample_photos and sharp_dir is not None:
        raise DgfError("give either a SHARP_DIR or --sample-photos, not both.")
    if not options.sample_photos and sharp_dir is None:
        raise DgfError("give a SHARP_DIR of sharp photos, or use --sample-photos.")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DgfError(f"{out_dir} exists and is not a folder; choose another OUT_DIR.")
    check_output(out_dir, folder=True)
    sources = _gather_sources(sharp_dir, options.sample_photos, out_dir)
    test_fraction = float(options.test_fraction)
    if len(sources) < 2 and test_fraction > 0:
        raise DgfError(
            f"found 1 photo ({sources[0][0]}); a train and a test split need at least "
            f"two: add photos, or pass --test-fraction 0 to write a train split only."
        )
    _clear_outputs(out_dir, overwrite)

    test_set = _split_photos(len(sources), test_fraction,
                             np.random.default_rng([options.seed, 0]))
    for split in ("train", "test"):
        prepare_output(out_dir / split, folder=True)
    recipe = _Recipe(options, photo_digits=max(4, len(str(len(sources) - 1))))
    bar = tqdm(sources, desc="photos", unit="photo", disable=not progress)
    try:
        results = [
            _photo_pairs(index, name, source, "test" if index in test_set else "train",
                         out_dir, recipe)
            for index, (name, source) in enumerate(bar)
        ]
    except DiskFull as exc:  # stops at the first: a full disk is not one photo's problem
        raise exc.keeping(f"the pairs written before it are kept in {out_dir}, without "
                          f"{MANIFEST_NAME}; free space and run again with --overwrite") from None
    finally:
        bar.close()

    notes = _settle_splits(out_dir, results, test_fraction, options.seed)
    report = _summarise(out_dir, options.per_image, results, notes)
    write_text_atomic(out_dir / MANIFEST_NAME,
                      json.dumps(_manifest(options.settings(sharp_dir), results), indent=1) + "\n")
    report.seconds = time.perf_counter() - started
    return report
