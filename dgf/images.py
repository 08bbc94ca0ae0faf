"""Image files in and out: which files are images, finding them, decoding them to
8-bit RGB, writing them atomically, and the [-1, 1] scale the generator works in.

Decoding (:func:`to_rgb_array`) turns every Pillow mode into (H, W, 3) uint8 RGB the
same way for every command: greyscale, palette, CMYK and alpha modes through
Pillow's own conversion (alpha is dropped from the RGB, not composited; readers that
keep it return it separately), 16-bit greyscale scaled by 255/65535 and rounded
(Pillow would clip it, turning most 16-bit photos white). 32-bit float images have
no fixed range and are refused with ValueError.

The readers differ only in what their callers need around that conversion:

* :func:`read_rgb` and :func:`read_image` decode the whole file with its EXIF
  orientation applied and raise Pillow's own errors (``make_pairs``, ``deblur``);
  :func:`read_image` also returns the alpha channel and the metadata worth carrying
  into an output (ICC profile, EXIF without the orientation tag).
* :func:`open_image`, :func:`image_size` and :func:`load_rgb_image` read pairs for
  ``build-hdf5``: pixels as stored (no EXIF rotation, which would turn a side-by-side
  pair on its side), optional JPEG draft decoding, and every failure as
  :class:`BadImageError` naming the file.

**Formats.** Training pairs and the files dgf writes for itself are JPEG or PNG
(:data:`IMAGE_SUFFIXES`). Photos to deblur may also be phone formats
(:data:`PHOTO_SUFFIXES`): WebP and AVIF (Pillow reads and writes them where it was
built with libwebp and libavif: :func:`format_missing`), and HEIC/HEIF through the
optional pillow-heif (extra ``heif``); a HEIC name without it is a DgfError naming
the install command. A caller bounds a photo's size before decoding it:
:func:`photo_size` reads the header of any size, and ``read_image(path,
max_pixels=N)`` sets Pillow's decompression-bomb limit to N for that read
(:func:`pixel_limit`), so Pillow neither warns nor refuses below it.

Files whose name, or any folder's name below the searched one, starts with '.' are
not images to :func:`find_images`: that is where :mod:`dgf.fileio` writes its
temporary files, so a half-written output left by an interrupted run is never read.

Conversions for the generator: uint8 ``x`` -> ``x / 127.5 - 1`` (:func:`to_unit`);
generator output ``y`` -> ``clip(rint((y + 1) * 127.5), 0, 255)`` as uint8
(:func:`to_uint8`). No TensorFlow import here.
"""
from __future__ import annotations

import struct
import threading
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError, features

from dgf.errors import DgfError, install_hint
from dgf.fileio import write_atomic

_HEIF_MISSING = "ModuleNotFoundError: No module named 'pillow_heif'"
try:  # optional (extra heif): HEIC/HEIF photos
    import pillow_heif
except ImportError as _exc:
    pillow_heif = None
    _HEIF_MISSING = f"{type(_exc).__name__}: {_exc}"
else:
    pillow_heif.register_heif_opener()

# Suffix (lower case) -> the Pillow format an output with that suffix is written in.
# Training pairs and dgf's own images: JPEG and PNG.
IMAGE_SUFFIXES = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}
SUFFIX_WORDS = ".jpg, .jpeg or .png"
# Photos dgf-deblur reads and writes: those and the phone formats.
PHOTO_SUFFIXES = {**IMAGE_SUFFIXES, ".webp": "WEBP", ".avif": "AVIF", ".heic": "HEIF",
                  ".heif": "HEIF"}
PHOTO_WORDS = ".jpg, .jpeg, .png, .webp, .avif, .heic or .heif"
#: The extra that installs pillow-heif, for HEIC/HEIF photos.
HEIF_EXTRA = "heif"
# Lossy formats, which take a quality; formats that keep an alpha channel.
_QUALITY_FORMATS = ("JPEG", "WEBP", "AVIF", "HEIF")
ALPHA_FORMATS = ("PNG", "WEBP", "AVIF", "HEIF")

# Greyscale modes Pillow gives 16-bit PNGs ("I" for some versions and 32-bit files).
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")

# Everything Pillow raises for a file that is not a decodable image of a sane size.
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


class BadImageError(DgfError):
    """One input file cannot be used; ``path`` names it, ``reason`` says why."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


# --- names and finding -------------------------------------------------------
def is_image_name(path: Path | str, suffixes: Mapping[str, str] = IMAGE_SUFFIXES) -> bool:
    """Whether ``path`` has one of ``suffixes`` in any case (by default the pairs'
    .jpg, .jpeg, .png; :data:`PHOTO_SUFFIXES` for photos)."""
    return Path(path).suffix.lower() in suffixes


def image_format(path: Path | str) -> str:
    """The Pillow format (``"JPEG"``, ``"PNG"``, ``"WEBP"``, ``"AVIF"``, ``"HEIF"``) an
    image at ``path`` is written in; DgfError for any other suffix."""
    path = Path(path)
    fmt = PHOTO_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DgfError(
            f"cannot write image {path}: suffix '{path.suffix}' is not {PHOTO_WORDS}."
        )
    return fmt


def format_missing(fmt: str, *, writing: bool = False) -> str | None:
    """Why this installation cannot read (or, ``writing``, write) images in the Pillow
    format ``fmt``, with what to install; None when it can."""
    if fmt in ("WEBP", "AVIF") and not features.check(fmt.lower()):
        return (f"this Pillow ({Image.__version__}) was built without {fmt} support; "
                f"install a Pillow wheel from the package index, which includes it")
    if fmt != "HEIF":
        return None
    if pillow_heif is None:
        return (f"HEIC/HEIF needs pillow-heif, which is not installed ({_HEIF_MISSING}); "
                f"install it with {install_hint(HEIF_EXTRA)}")
    if writing and not pillow_heif.libheif_info().get("HEIF"):
        return (f"this pillow-heif ({pillow_heif.__version__}) has no HEVC encoder, so "
                f"it reads HEIC but cannot write it; install pillow-heif's wheel from "
                f"the package index (it includes x265), or convert the photo to JPEG "
                f"first")
    return None


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def find_images(folder: Path | str, *, exclude: Path | str | None = None,
                suffixes: Mapping[str, str] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files under ``folder`` (recursive, any case of ``suffixes``), sorted.

    Hidden files and everything inside hidden folders below ``folder`` (names that
    start with '.') are left out, and so is everything inside ``exclude`` (an
    output folder that lies inside ``folder``).
    """
    folder = Path(folder)
    excluded = Path(exclude).resolve() if exclude is not None else None
    found = []
    for path in folder.rglob("*"):
        if not is_image_name(path, suffixes) or _is_hidden(path.relative_to(folder)):
            continue
        if not path.is_file():
            continue
        if excluded is not None and path.resolve().is_relative_to(excluded):
            continue
        found.append(path)
    return sorted(found)


# --- the one conversion ------------------------------------------------------
def to_rgb_array(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a Pillow image of any mode (see the module docstring).

    Raises ValueError for 32-bit float images.
    """
    mode = img.mode
    if mode in _WIDE_GREY_MODES:
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        # 255 / 65535 = 1 / 257, rounded: never a tie, as 257 is odd.
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        raise ValueError("32-bit float images have no fixed range; save as 8 or 16 bit")
    return np.asarray(img if mode == "RGB" else img.convert("RGB"), dtype=np.uint8)


def to_rgb_image(img: Image.Image) -> Image.Image:
    """:func:`to_rgb_array` as a Pillow image, for resizing and cropping; an RGB
    image comes back as it is, without a copy."""
    if img.mode == "RGB":
        return img
    return Image.fromarray(to_rgb_array(img), "RGB")


def alpha_channel(img: Image.Image) -> np.ndarray | None:
    """(H, W) uint8 alpha of an image with transparency, None for one without."""
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        return np.asarray(img.convert("RGBA"))[..., 3].copy()
    return None


# --- reading whole images (make_pairs, deblur) -------------------------------
@dataclass
class LoadedImage:
    """An image file as :func:`read_image` decodes it.

    ``rgb``: (H, W, 3) uint8, upright. ``alpha``: (H, W) uint8 or None. ``metadata``:
    what an output of it keeps, for :func:`write_image`: ``"exif"`` (without the
    orientation tag, the pixels being upright) and ``"icc_profile"`` (RGB sources
    only: another mode's profile does not describe RGB pixels).
    """

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def open_upright(path: Path | str) -> Image.Image:
    """Decode ``path`` fully with its EXIF orientation applied.

    Raises Pillow's errors (UnidentifiedImageError, DecompressionBombError, OSError,
    SyntaxError, ValueError) for a file that is not a readable image.
    """
    with Image.open(path) as img:
        img.load()
        if img.getexif().get(ExifTags.Base.Orientation) not in range(2, 9):
            return img  # upright already: no copy (a photo's pixels can be gigabytes)
        return ImageOps.exif_transpose(img)


def read_rgb(path: Path | str) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, upright; errors as :func:`open_upright`."""
    return to_rgb_array(open_upright(path))


# Pillow's decompression-bomb limit is one global: reads that change it take turns.
_PIXEL_LIMIT_LOCK = threading.Lock()


@contextmanager
def pixel_limit(max_pixels: float | None) -> Iterator[None]:
    """Within the block, Pillow opens images up to ``max_pixels`` pixels without its
    DecompressionBombWarning and refuses larger ones with DecompressionBombError (its
    ``MAX_IMAGE_PIXELS`` is half its refusal threshold); None leaves Pillow's limit."""
    if max_pixels is None:
        yield
        return
    with _PIXEL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        before = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels / 2
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def _check_readable(path: Path) -> None:
    """DgfError naming ``path`` and what to install when its suffix is a photo format
    this installation cannot read (HEIC without pillow-heif, WebP or AVIF without
    Pillow's support)."""
    fmt = PHOTO_SUFFIXES.get(path.suffix.lower())
    reason = format_missing(fmt) if fmt else None
    if reason:
        raise DgfError(f"cannot read {path}: {reason}")


def photo_size(path: Path | str) -> tuple[int, int]:
    """(width, height) of an image file as stored, from its header, without decoding
    its pixels (an EXIF orientation may swap them), whatever its size: Pillow's
    decompression-bomb limit is off for it, so that the caller bounds the size.
    Raises Pillow's errors as :func:`open_upright`, and DgfError for a format this
    installation cannot read (:func:`format_missing`)."""
    path = Path(path)
    _check_readable(path)
    with pixel_limit(float("inf")), Image.open(path) as img:
        return img.size


def read_image(path: Path | str, *, max_pixels: int | None = None) -> LoadedImage:
    """An image file upright as RGB, with its alpha and the metadata to carry over.

    ``max_pixels``: :func:`pixel_limit` for this read (check :func:`photo_size` first).
    Errors as :func:`open_upright`, ValueError for a 32-bit float image, and DgfError
    for a format this installation cannot read (:func:`format_missing`).
    """
    path = Path(path)
    _check_readable(path)
    with pixel_limit(max_pixels):
        upright = open_upright(path)
    metadata: dict[str, Any] = {}
    exif = upright.getexif()
    if exif:
        exif.pop(ExifTags.Base.Orientation, None)
        metadata["exif"] = exif
    if upright.mode in ("RGB", "RGBA") and upright.info.get("icc_profile"):
        metadata["icc_profile"] = upright.info["icc_profile"]
    return LoadedImage(to_rgb_array(upright), alpha_channel(upright), metadata)


# --- reading pairs (build-hdf5) ----------------------------------------------
def open_image(path: Path) -> Image.Image:
    """Open lazily (header only); every failure is a BadImageError, and so is a
    decompression-bomb warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except UnidentifiedImageError:
            empty = path.is_file() and path.stat().st_size == 0
            reason = "empty file (0 bytes)" if empty else "not an image Pillow can read"
            raise BadImageError(path, reason) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            # Pillow's message ends with a full stop; callers add their own.
            raise BadImageError(
                path, f"decompression bomb refused: {str(exc).rstrip('.')}"
            ) from None
        except OSError as exc:
            if exc.errno is not None:  # the file system, not the image data
                raise BadImageError(path, f"cannot read: {exc.strerror}") from None
            raise BadImageError(path, f"corrupt or truncated image: {exc}") from None
        except DECODE_ERRORS as exc:
            raise BadImageError(path, f"corrupt or truncated image: {exc}") from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    with open_image(path) as im:
        return im.size


def load_rgb_image(
    path: Path, draft_for: Callable[[int, int], tuple[int, int] | None] | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode ``path`` as an RGB Pillow image, pixels as stored (no EXIF rotation);
    return it with the size its header states.

    ``draft_for(width, height)`` may return the smallest size JPEG draft decoding
    has to keep, or None to decode at full size. Raises BadImageError.
    """
    im = open_image(path)
    header_size = im.size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if draft_for is not None:
                draft_size = draft_for(*header_size)
                if draft_size is not None:
                    im.draft("RGB", draft_size)
            im.load()
            return to_rgb_image(im), header_size
    except DECODE_ERRORS as exc:
        im.close()
        raise BadImageError(path, f"corrupt or truncated image: {exc}") from None


# --- writing -----------------------------------------------------------------
def _save_options(
    fmt: str, image: Image.Image, quality: int | None, metadata: dict[str, Any]
) -> tuple[Image.Image, dict[str, Any]]:
    options: dict[str, Any] = {}
    if fmt in _QUALITY_FORMATS and quality is not None:
        options["quality"] = quality
    if fmt not in ALPHA_FORMATS and image.mode == "RGBA":
        image = image.convert("RGB")
    if "icc_profile" in metadata:
        options["icc_profile"] = metadata["icc_profile"]
    if "exif" in metadata:
        try:
            options["exif"] = metadata["exif"].tobytes()
        except (ValueError, TypeError, OSError, KeyError):
            pass  # a malformed EXIF block is not worth losing the image over
    return image, options


def write_image(
    path: Path | str,
    image: np.ndarray | Image.Image,
    *,
    format: str | None = None,
    quality: int | None = None,
    metadata: dict[str, Any] | None = None,
    **options: Any,
) -> None:
    """Write ``image`` to ``path`` atomically (:func:`dgf.fileio.write_atomic`).

    Args:
        image: a Pillow image, or a uint8 array (H, W, 3) RGB, (H, W, 4) RGBA or
            (H, W) grey.
        format: Pillow format; by default the one of ``path``'s suffix
            (:data:`PHOTO_SUFFIXES`, DgfError for another suffix, or for a format this
            installation cannot write: :func:`format_missing`).
        quality: quality of the lossy formats (JPEG, WebP, AVIF, HEIF; ignored for
            PNG). JPEG drops an alpha channel.
        metadata: ``"exif"`` (a ``PIL.Image.Exif``) and ``"icc_profile"`` to embed,
            as in :attr:`LoadedImage.metadata`.
        options: further Pillow save options (e.g. ``subsampling=0``).

    A reader never sees a partial file under ``path``; an OSError becomes
    :class:`dgf.fileio.OutputError`.
    """
    fmt = format or image_format(path)
    reason = format_missing(fmt, writing=True)
    if reason:
        raise DgfError(f"cannot write {path}: {reason}")
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.ascontiguousarray(image))
    image, extra = _save_options(fmt, image, quality, metadata or {})
    extra.update(options)
    write_atomic(path, lambda tmp: image.save(tmp, format=fmt, **extra))


# --- the generator's value range ---------------------------------------------
def scale_to_unit(x: Any) -> Any:
    """float32 pixel values in [0, 255] -> [-1, 1] (``x / 127.5 - 1``): the one
    formula, for NumPy arrays and, inside a compiled step, tensors alike."""
    return x / np.float32(127.5) - np.float32(1.0)


def to_unit(x_uint8: Any) -> np.ndarray:
    """uint8 image(s), any shape -> float32 in [-1, 1] (:func:`scale_to_unit`)."""
    return scale_to_unit(np.asarray(x_uint8, dtype=np.float32))


def to_uint8(x: Any) -> np.ndarray:
    """Generator output -> the uint8 image a user would save.

    ``x``: any shape, float in [-1, 1] (NumPy array or tensor). Returns
    ``clip(rint((x + 1) * 127.5), 0, 255)`` as uint8; ``np.rint`` rounds halves to
    even, so -1 -> 0, 0 -> 128 (127.5 rounds to the even 128), 1 -> 255.
    """
    arr = np.asarray(x, dtype=np.float32)
    return np.clip(np.rint((arr + 1.0) * 127.5), 0, 255).astype(np.uint8)
