"""Synthetic training pairs: sharp photos blurred with random camera-shake kernels.

Kernels follow the idea of Boracchi and Foi (2012), as used by DeblurGAN: the path
of the camera during the exposure is a particle with inertia, nudged by small random
accelerations, jerked now and then by impulsive shakes and pulled back towards where
it started. The path is sampled far finer than a pixel, splatted bilinearly onto a
small canvas and normalised to sum 1; a random exposure fraction decides how much of
the path the shutter sees, so one strength setting yields short and long kernels.

Border handling: a crop is blurred together with the photo around it (the kernel
radius on every side), so the blurred half carries the light that real shake would
bring in from outside the frame. Where the photo ends, it is extended by mirror
reflection that repeats the edge pixel (NumPy ``symmetric``, SciPy ``reflect``).
:func:`blur` on a whole image therefore uses that reflection at all four borders.

Photos whose short side is below the crop size are upscaled (Lanczos) so that the
short side equals the crop size; larger photos are cropped at their own resolution.
"""
from __future__ import annotations

import json
import math
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
from dgf.fileio import check_output, prepare_output, write_atomic, write_text_atomic
from dgf.images import SUFFIX_WORDS, find_images, is_image_name, read_rgb, write_image

OUTPUT_FORMATS = ("jpg", "png")
KERNEL_SUFFIX = ".kernel.npy"
MANIFEST_NAME = "make_pairs.json"
DEFAULT_STRENGTH = 0.75  # sample photos: blurred-vs-sharp PSNR about 25.7 dB, near GOPRO

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

# Trajectory model constants. The path is simulated with unit speed per step; the
# constants below are per step, so they do not depend on the kernel size.
_STEPS = 2000
_JITTER = 0.03  # std of the per-step random acceleration, times strength
_SHAKE_RATE = 0.002  # chance per step of an impulsive shake, times strength
_SHAKE_SIZE = 1.2  # size of an impulsive shake relative to the (unit) velocity
_PULL = 12.0  # most centripetal pull; orbits shrink to steps / sqrt(pull)
_EXPOSURE = (0.3, 1.0)  # fraction of the trajectory the shutter sees


def _check_kernel_args(size: int, strength: float) -> None:
    if not is_int(size):
        raise DgfError(f"kernel size must be an integer, got {size!r}.")
    if size < 3 or size % 2 == 0:
        raise DgfError(
            f"kernel size {size} is not allowed: use an odd size of at least 3 "
            f"(e.g. 31) so the kernel has a centre pixel and does not shift the image."
        )
    if not (isinstance(strength, (int, float)) and 0.0 < float(strength) <= 1.0):
        raise DgfError(
            f"strength {strength!r} is outside (0, 1]: 0.1 gives short, smooth "
            f"strokes, 1 gives long, shaky ones that fill the kernel canvas."
        )


def _trajectory(rng: np.random.Generator, strength: float) -> np.ndarray:
    """A camera path as complex positions, unit speed, ``_STEPS`` samples."""
    velocity = np.exp(1j * rng.uniform(0.0, 2.0 * np.pi))
    pull = rng.uniform(0.0, _PULL) / _STEPS**2
    jitter = _JITTER * strength
    shake_rate = _SHAKE_RATE * strength
    kicks = jitter * (rng.standard_normal(_STEPS) + 1j * rng.standard_normal(_STEPS))
    shakes = rng.random(_STEPS) < shake_rate
    shake_dirs = np.exp(1j * rng.uniform(0.0, 2.0 * np.pi, _STEPS))
    positions = np.empty(_STEPS, dtype=np.complex128)
    position = 0j
    # Sequential by nature: each step's velocity depends on the last one (inertia)
    # and on the position (the pull back towards the start).
    for t in range(_STEPS):
        positions[t] = position
        change = kicks[t] - pull * position
        if shakes[t]:
            change += _SHAKE_SIZE * shake_dirs[t]
        velocity = velocity + change
        speed = abs(velocity)
        velocity = velocity / speed if speed > 1e-12 else np.exp(1j * rng.uniform(0, 2 * np.pi))
        position = position + velocity
    return positions


def random_kernel(
    rng: np.random.Generator, size: int = 31, strength: float = DEFAULT_STRENGTH
) -> np.ndarray:
    """Draw one random camera-shake point-spread function.

    Args:
        rng: source of randomness; the same generator state gives the same kernel.
        size: side of the square canvas in pixels; odd, at least 3.
        strength: in (0, 1]. Scales the length of the camera path (at full exposure
            ``strength * 1.5 * (size - 1)`` pixels of travel) and how irregular it
            is (random jitter and the rate of impulsive shakes). Paths that would
            leave the canvas are shrunk to fit.

    Returns:
        (size, size) float32, non-negative, summing to 1, with its centre of mass on
        the centre pixel so blurring does not shift the image.
    """
    _check_kernel_args(size, strength)
    path = _trajectory(rng, float(strength))
    exposure = rng.uniform(*_EXPOSURE)
    path = path[: max(2, int(round(exposure * _STEPS)))]
    length = float(strength) * 1.5 * (size - 1) * exposure
    # Unit speed per step: scaling by length / steps gives the wanted path length.
    path = path * (length / _STEPS)
    # Centring the mean sample centres the PSF's mass: bilinear splatting keeps the
    # first moment exactly, so the blurred image is not displaced from the sharp one.
    path = path - path.mean()
    half = (size - 1) / 2.0
    reach = max(np.abs(path.real).max(), np.abs(path.imag).max())
    limit = half - 0.5  # keeps the right/bottom splat neighbour on the canvas
    if reach > limit:
        path = path * (limit / reach)
    x = path.real + half
    y = path.imag + half
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx = x - x0
    fy = y - y0
    kernel = np.zeros(size * size, dtype=np.float64)
    for dy, dx, w in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        np.add.at(kernel, (y0 + dy) * size + (x0 + dx), w)
    kernel = kernel.reshape(size, size)
    kernel /= kernel.sum()
    return kernel.astype(np.float32)


def _blur_valid(padded: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve a padded (H + k - 1, W + k - 1, 3) image; return the valid (H, W, 3)
    part as float64 (not rounded)."""
    k = kernel.shape[0]
    ph, pw = padded.shape[:2]
    # Circular convolution on the padded canvas: rows/cols from k - 1 on never wrap,
    # so they equal the linear convolution's valid part.
    spectrum = np.fft.rfft2(padded.astype(np.float64), axes=(0, 1))
    kernel_spectrum = np.fft.rfft2(kernel.astype(np.float64), s=(ph, pw))
    full = np.fft.irfft2(spectrum * kernel_spectrum[:, :, None], s=(ph, pw), axes=(0, 1))
    return full[k - 1 :, k - 1 :]


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _check_kernel(kernel: np.ndarray) -> np.ndarray:
    kernel = np.asarray(kernel)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
        raise DgfError(
            f"kernel has shape {kernel.shape}; expected a square 2-D array with an odd "
            f"side (e.g. (31, 31)) so it has a centre pixel."
        )
    if not np.all(np.isfinite(kernel)):
        raise DgfError("kernel contains NaN or infinite values.")
    return kernel


def blur(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Blur an RGB image with a point-spread function, channel by channel.

    Args:
        image: (H, W, 3) uint8.
        kernel: (k, k) float, k odd; normally non-negative and summing to 1
            (as from :func:`random_kernel`). Applied as a true convolution with its
            centre pixel as origin.

    Returns:
        (H, W, 3) uint8, rounded to the nearest level. Pixels beyond the border are
        mirror reflections that repeat the edge pixel (NumPy ``symmetric``).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DgfError(
            f"image has shape {image.shape} and dtype {image.dtype}; expected "
            f"(H, W, 3) uint8 RGB."
        )
    kernel = _check_kernel(kernel)
    r = kernel.shape[0] // 2
    padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode="symmetric")
    return _to_uint8(_blur_valid(padded, kernel))


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


# make_pairs has a flag of the same name; it calls the function through this alias.
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


def _check_options(
    per_image: int, size: int, test_fraction: float, seed: int, kernel_size: int,
    strength: float, noise: float, quality: int, fmt: str,
) -> None:
    if not is_int(per_image) or per_image < 1:
        raise DgfError(f"per-image {per_image!r} must be a whole number >= 1.")
    if not is_int(size) or size < 8:
        raise DgfError(f"size {size!r} must be a whole number >= 8 (e.g. 256).")
    if not (0.0 <= float(test_fraction) < 1.0):
        raise DgfError(
            f"test-fraction {test_fraction!r} must be in [0, 1): the share of source "
            f"photos that go to test (0 for no test split)."
        )
    if not is_int(seed) or seed < 0:
        raise DgfError(f"seed {seed!r} must be a whole number >= 0.")
    _check_kernel_args(kernel_size, strength)
    if kernel_size > size:
        raise DgfError(f"kernel size {kernel_size} is larger than the crop size {size}.")
    if not (math.isfinite(noise) and noise >= 0):
        raise DgfError(f"noise {noise!r} must be >= 0 (std in 8-bit levels, e.g. 2).")
    if not is_int(quality) or not 1 <= quality <= 100:
        raise DgfError(f"JPEG quality {quality!r} must be between 1 and 100.")
    if fmt not in OUTPUT_FORMATS:
        raise DgfError(f"format {fmt!r} is not one of {', '.join(OUTPUT_FORMATS)}.")



@dataclass(frozen=True)
class _Recipe:
    """How every pair of one run is made and named."""

    per_image: int
    size: int
    kernel_size: int
    strength: float
    noise: float
    quality: int
    fmt: str
    seed: int
    photo_digits: int

    @property
    def crop_digits(self) -> int:
        return max(2, len(str(self.per_image - 1)))


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
    options = {"quality": recipe.quality, "subsampling": 0} if recipe.fmt == "jpg" else {}
    write_image(folder / f"{stem}.{recipe.fmt}", pair, **options)


def _cut_pairs(
    image: np.ndarray, index: int, name: str, scale: float, split: str, out_dir: Path,
    recipe: _Recipe,
) -> list[dict]:
    """Cut, blur and write the ``per_image`` pairs of one photo (short side at least
    the crop size); return their manifest records."""
    size, radius = recipe.size, recipe.kernel_size // 2
    # One generator per photo, keyed by its place in the sorted list, so a photo's
    # crops and kernels do not depend on how many came before it or failed.
    rng = np.random.default_rng([recipe.seed, 1, index])
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="symmetric")
    h, w = image.shape[:2]
    records = []
    for k in range(recipe.per_image):
        top = int(rng.integers(0, h - size + 1))
        left = int(rng.integers(0, w - size + 1))
        kernel = random_kernel(rng, recipe.kernel_size, recipe.strength)
        sharp = image[top : top + size, left : left + size]
        region = padded[top : top + size + 2 * radius, left : left + size + 2 * radius]
        blurred = _blur_valid(region, kernel)
        if recipe.noise > 0:
            blurred = blurred + rng.normal(0.0, recipe.noise, blurred.shape)
        pair = np.concatenate([sharp, _to_uint8(blurred)], axis=1)
        stem = f"{index:0{recipe.photo_digits}d}_{k:0{recipe.crop_digits}d}"
        _write_pair(out_dir / split, stem, pair, kernel, recipe)
        records.append({
            "file": f"{split}/{stem}.{recipe.fmt}",
            "kernel": f"{split}/{stem}{KERNEL_SUFFIX}",
            "source": name,
            "crop": {"top": top, "left": left, "size": size, "scale": scale},
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
    image, scale = _fit_short_side(image, recipe.size)
    records = _cut_pairs(image, index, name, scale, split, out_dir, recipe)
    return _PhotoPairs(name, split, records, upscaled=scale != 1.0)


def _summarise(
    out_dir: Path, per_image: int, results: list[_PhotoPairs], test_fraction: float
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
    if test_fraction > 0 and n_test == 0:
        report.notes.append("the test split is empty: it needs at least two readable photos")
    if n_test > 0 and n_train == 0:
        report.notes.append("the train split is empty: its photos could not be read")
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
    *,
    per_image: int = 4,
    size: int = 256,
    test_fraction: float = 0.1,
    seed: int = 0,
    kernel_size: int = 31,
    strength: float = DEFAULT_STRENGTH,
    noise: float = 0.0,
    quality: int = 95,
    fmt: str = "jpg",
    sample_photos: bool = False,
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
            files and folders left out); None with ``sample_photos=True``.
        out_dir: where the train/ and test/ folders go.
        per_image: random crops (each with its own kernel) per photo.
        size: side of the square crops; smaller photos are upscaled first.
        test_fraction: share of the photos that go to test, in [0, 1).
        seed: same seed and inputs give byte-identical files.
        kernel_size: odd side of the kernel canvas.
        strength: camera-shake strength in (0, 1]; see :func:`random_kernel`.
        noise: std of Gaussian noise added to the blurred half, in 8-bit levels.
        quality: JPEG quality (``fmt="jpg"``); chroma is not subsampled.
        fmt: "jpg" or "png" (lossless).
        sample_photos: use scikit-image's bundled photos instead of ``sharp_dir``.
        overwrite: replace existing pairs in ``out_dir``; without it they are an error.
        progress: show a progress bar over photos.
    """
    started = time.perf_counter()
    if sample_photos and sharp_dir is not None:
        raise DgfError("give either a SHARP_DIR or --sample-photos, not both.")
    if not sample_photos and sharp_dir is None:
        raise DgfError("give a SHARP_DIR of sharp photos, or use --sample-photos.")
    _check_options(per_image, size, test_fraction, seed, kernel_size, strength, noise,
                   quality, fmt)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DgfError(f"{out_dir} exists and is not a folder; choose another OUT_DIR.")
    check_output(out_dir, folder=True)
    sources = _gather_sources(sharp_dir, sample_photos, out_dir)
    _clear_outputs(out_dir, overwrite)

    test_set = _split_photos(len(sources), float(test_fraction), np.random.default_rng([seed, 0]))
    for split in ("train", "test"):
        prepare_output(out_dir / split, folder=True)
    recipe = _Recipe(per_image, size, kernel_size, strength, noise, quality, fmt, seed,
                     photo_digits=max(4, len(str(len(sources) - 1))))
    bar = tqdm(sources, desc="photos", unit="photo", disable=not progress)
    results = [
        _photo_pairs(index, name, source, "test" if index in test_set else "train",
                     out_dir, recipe)
        for index, (name, source) in enumerate(bar)
    ]
    bar.close()

    report = _summarise(out_dir, per_image, results, float(test_fraction))
    settings = {
        "sharp_dir": None if sample_photos else str(Path(sharp_dir)),
        "sample_photos": sample_photos, "per_image": per_image, "size": size,
        "test_fraction": test_fraction, "seed": seed, "kernel_size": kernel_size,
        "strength": strength, "noise": noise, "quality": quality, "format": fmt,
    }
    write_text_atomic(out_dir / MANIFEST_NAME,
                      json.dumps(_manifest(settings, results), indent=1) + "\n")
    report.seconds = time.perf_counter() - started
    return report
