"""Finding sharp/blurred pairs on disk and decoding them into uint8 RGB arrays.

Two layouts are understood, one per JPEG_DIR (``train``, ``test`` and, when present,
``val`` are its split folders):

``side-by-side`` (the seed's format)
    ``SPLIT/**/*.{jpg,jpeg,png}`` (recursive, any case of extension, hidden files and
    folders left out: :func:`dgf.images.find_images`). Each image holds
    both halves: by default the left half is sharp and the right half blurred
    (``order="sharp-blur"``); ``order="blur-sharp"`` flips this. An odd width loses
    its middle column.

``paired`` (two files per pair, matched by their path relative to the role folder)
    * GOPRO style: ``SPLIT/SCENE/sharp/x.png`` with ``SPLIT/SCENE/blur/x.png`` (any
      folder named ``sharp`` with a sibling named ``blur``, at any depth; GOPRO's
      ``blur_gamma`` folders are not used).
    * pix2pix / DeblurGAN style: ``SPLIT/A/x.png`` (blurred) with ``SPLIT/B/x.png``
      (sharp).
    A file without its partner is skipped, and reported with the reason.

Decoding (:func:`dgf.images.load_rgb_image`) converts every input mode to 8-bit RGB:
grayscale, palette, CMYK and alpha modes through Pillow (alpha is dropped, not
composited), 16-bit grayscale scaled (not clipped) to 8 bits; pixels are used as
stored, without EXIF rotation. A file that cannot be decoded raises
:class:`~dgf.images.BadImageError`, which names the file and says why.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import signal
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from dgf.errors import DgfError
from dgf.images import DECODE_ERRORS, BadImageError, find_images, load_rgb_image

LAYOUTS = ("side-by-side", "paired")
ORDERS = ("sharp-blur", "blur-sharp")
REQUIRED_SPLITS = ("train", "test")
OPTIONAL_SPLITS = ("val",)

# DCT scaling works on 16-pixel MCUs (8x8 blocks, 2x chroma subsampling); only when
# the seam between the halves falls on an MCU edge does draft decoding keep the
# sharp and blurred halves from bleeding into each other.
_MCU = 16

@dataclass(frozen=True)
class PairSource:
    """Where one pair comes from.

    For ``side-by-side`` both paths are the same file. ``sharp_rel`` and
    ``blurred_rel`` are POSIX paths relative to JPEG_DIR, used in reports and in
    the ``{split}_source`` dataset.
    """

    sharp: Path
    blurred: Path
    sharp_rel: str
    blurred_rel: str

    @property
    def side_by_side(self) -> bool:
        return self.sharp == self.blurred


@dataclass
class SplitSources:
    """The pairs found for one split, sorted by relative path, and what was left out."""

    split: str
    pairs: list[PairSource]
    skipped: list[tuple[str, str]]


@dataclass
class SourcePlan:
    """All splits of a JPEG_DIR, in the order they are written."""

    jpeg_dir: Path
    layout: str
    splits: list[SplitSources]


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (:func:`dgf.images.find_images`: recursive, no
    hidden files), sorted by relative POSIX path, the order pairs are stored in."""
    return sorted(find_images(folder), key=lambda p: p.relative_to(folder).as_posix())


def _role_folders(split_dir: Path) -> list[tuple[Path, Path]]:
    """(sharp folder, blurred folder) couples of a paired-layout split."""
    couples = []
    a, b = split_dir / "A", split_dir / "B"
    if a.is_dir() and b.is_dir():
        couples.append((b, a))
    for sharp in sorted(p for p in split_dir.rglob("sharp") if p.is_dir()):
        blurred = sharp.parent / "blur"
        if blurred.is_dir():
            couples.append((sharp, blurred))
    return couples


def _has_paired_layout(split_dir: Path) -> bool:
    return bool(_role_folders(split_dir))


def _side_by_side_split(split_dir: Path, root: Path) -> SplitSources:
    pairs = []
    for path in _image_files(split_dir):
        rel = _rel(path, root)
        pairs.append(PairSource(path, path, rel, rel))
    return SplitSources(split_dir.name, pairs, [])


def _paired_split(split_dir: Path, root: Path) -> SplitSources:
    couples = _role_folders(split_dir)
    if not couples:
        raise DgfError(
            f"{split_dir}: no paired folders found. The paired layout needs "
            f"'{split_dir.name}/SCENE/sharp' with '{split_dir.name}/SCENE/blur' "
            f"(GOPRO style) or '{split_dir.name}/A' (blurred) with "
            f"'{split_dir.name}/B' (sharp)."
        )
    pairs: list[PairSource] = []
    skipped: list[tuple[str, str]] = []
    for sharp_dir, blurred_dir in couples:
        sharp_files = {p.relative_to(sharp_dir).as_posix(): p for p in _image_files(sharp_dir)}
        blurred_files = {
            p.relative_to(blurred_dir).as_posix(): p for p in _image_files(blurred_dir)
        }
        for name, sharp in sharp_files.items():
            blurred = blurred_files.get(name)
            if blurred is None:
                skipped.append(
                    (_rel(sharp, root), f"no blurred partner {_rel(blurred_dir / name, root)}")
                )
                continue
            pairs.append(PairSource(sharp, blurred, _rel(sharp, root), _rel(blurred, root)))
        for name, blurred in blurred_files.items():
            if name not in sharp_files:
                skipped.append(
                    (_rel(blurred, root), f"no sharp partner {_rel(sharp_dir / name, root)}")
                )
    pairs.sort(key=lambda p: p.sharp_rel)
    skipped.sort()
    return SplitSources(split_dir.name, pairs, skipped)


def find_pairs(jpeg_dir: Path | str, layout: str = "auto") -> SourcePlan:
    """Find every pair under ``jpeg_dir`` for the splits train, test and (if present) val.

    ``layout`` is ``"auto"`` (paired when the train split has A/B or sharp/blur
    folders, side-by-side otherwise), ``"side-by-side"`` or ``"paired"``.
    Raises DgfError when the folder, a required split or any split's pairs are
    missing.
    """
    root = Path(jpeg_dir)
    if layout not in ("auto", *LAYOUTS):
        raise DgfError(f"unknown layout '{layout}'; choose auto, {', '.join(LAYOUTS)}.")
    if not root.exists():
        raise DgfError(f"{root}: no such folder. Pass the folder that holds train/ and test/.")
    if not root.is_dir():
        raise DgfError(f"{root}: not a folder. Pass the folder that holds train/ and test/.")
    split_dirs = []
    for split in REQUIRED_SPLITS:
        if not (root / split).is_dir():
            present = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise DgfError(
                f"{root}: no '{split}' folder (found {present or 'no folders'}). "
                f"JPEG_DIR must hold {' and '.join(REQUIRED_SPLITS)} folders"
                f"{' and optionally ' + ', '.join(OPTIONAL_SPLITS) if OPTIONAL_SPLITS else ''}."
            )
        split_dirs.append(root / split)
    split_dirs += [root / s for s in OPTIONAL_SPLITS if (root / s).is_dir()]

    if layout == "auto":
        layout = "paired" if _has_paired_layout(root / "train") else "side-by-side"
    gather = _paired_split if layout == "paired" else _side_by_side_split
    splits = [gather(d, root) for d in split_dirs]
    for s in splits:
        if not s.pairs:
            what = (
                "*.jpg, *.jpeg or *.png images"
                if layout == "side-by-side"
                else "matching sharp/blurred files"
            )
            extra = f" ({len(s.skipped)} unmatched files)" if s.skipped else ""
            raise DgfError(f"{root / s.split}: empty split, no {what} found{extra}.")
    return SourcePlan(root, layout, splits)


def _fit(im: Image.Image, size: int | None) -> np.ndarray:
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


def decode_pair(
    source: PairSource, size: int | None, order: str = "sharp-blur", *, draft: bool = True
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode one pair into ``(sharp, blurred, notes)``.

    ``size`` N resizes each image to N x N with LANCZOS; ``None`` keeps the native
    resolution. ``order`` applies to side-by-side files only. ``draft`` lets
    JPEG decoding downscale by 2, 4 or 8 in the DCT when the result still leaves
    at least N pixels per side (much faster for large inputs; LANCZOS still does
    the final resize). Returns two (H, W, 3) uint8 arrays in [0, 255] (possibly
    views into one decoded image) and notes
    for the report (e.g. a dropped middle column). Raises BadImageError.
    """
    if source.side_by_side:
        return _decode_side_by_side(source.sharp, size, order, draft)
    return _decode_two_files(source, size, draft)


def _decode_side_by_side(
    path: Path, size: int | None, order: str, draft: bool
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    draft_for = None
    if draft and size is not None:

        def draft_for(width: int, height: int) -> tuple[int, int] | None:
            if width % (2 * _MCU) == 0 and min(width // 2, height) >= 2 * size:
                return (2 * size, size)
            return None

    im, _ = load_rgb_image(path, draft_for)
    width, height = im.size
    half = width // 2
    if half < 1:
        raise BadImageError(path, f"{width}x{height} is too narrow to split into two halves")
    notes = []
    if width % 2:
        notes.append(f"odd width {width}: middle column dropped")
    if size is None or (half, height) == (size, size):
        # Nothing to resize: one copy of the whole image, halves as views of it.
        whole = np.asarray(im, dtype=np.uint8)
        left, right = whole[:, :half], whole[:, width - half :]
    else:
        try:
            left = _fit(im.crop((0, 0, half, height)), size)
            right = _fit(im.crop((width - half, 0, width, height)), size)
        except DECODE_ERRORS as exc:
            raise BadImageError(path, f"cannot resize: {exc}") from None
    sharp, blurred = (left, right) if order == "sharp-blur" else (right, left)
    return sharp, blurred, notes


def _decode_two_files(
    source: PairSource, size: int | None, draft: bool
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    draft_for = None
    if draft and size is not None:

        def draft_for(width: int, height: int) -> tuple[int, int] | None:
            return (size, size) if min(width, height) >= 2 * size else None

    sizes = {}
    arrays = []
    for path in (source.sharp, source.blurred):
        im, sizes[path] = load_rgb_image(path, draft_for)
        try:
            arrays.append(_fit(im, size))
        except DECODE_ERRORS as exc:
            raise BadImageError(path, f"cannot resize: {exc}") from None
    (ws, hs), (wb, hb) = sizes[source.sharp], sizes[source.blurred]
    if (ws, hs) != (wb, hb):
        raise BadImageError(
            source.blurred_rel,
            f"blurred is {wb}x{hb} but its sharp partner {source.sharp_rel} is {ws}x{hs}",
        )
    return arrays[0], arrays[1], []


@dataclass(frozen=True)
class Decoded:
    """What a worker hands back for one pair.

    On success ``shape`` is (H, W) and ``sharp`` / ``blurred`` are (H, W, 3) uint8
    arrays, or, when the batch was asked to deflate, the zlib-compressed bytes of
    those arrays (ready to be stored as one HDF5 gzip chunk). On failure they are
    None and ``bad_path`` / ``reason`` say which file and why.
    """

    shape: tuple[int, int] | None
    sharp: np.ndarray | bytes | None
    blurred: np.ndarray | bytes | None
    bad_path: str | None = None
    reason: str | None = None
    notes: tuple[str, ...] = ()


def decode_batch(
    sources: Sequence[PairSource],
    size: int | None,
    order: str,
    draft: bool = True,
    deflate_level: int | None = None,
) -> list[Decoded]:
    """Decode several pairs (one pool task); bad files come back as reasons, in order.

    ``deflate_level`` compresses each image here, so gzip compression runs in the
    decoding workers rather than serially in the writer.
    """
    out = []
    for source in sources:
        try:
            sharp, blurred, notes = decode_pair(source, size, order, draft=draft)
        except BadImageError as exc:
            out.append(Decoded(None, None, None, _relative_name(exc.path, source), exc.reason))
            continue
        shape = sharp.shape[:2]
        if deflate_level is not None:
            sharp = zlib.compress(np.ascontiguousarray(sharp), deflate_level)
            blurred = zlib.compress(np.ascontiguousarray(blurred), deflate_level)
        out.append(Decoded(shape, sharp, blurred, notes=tuple(notes)))
    return out


def _relative_name(path: str, source: PairSource) -> str:
    """Report a failing file by its path relative to JPEG_DIR."""
    if path == str(source.sharp):
        return source.sharp_rel
    if path == str(source.blurred):
        return source.blurred_rel
    return path


def init_worker() -> None:
    """Pool-worker initializer.

    Ctrl-C and SIGTERM are handled once, by the parent, which stops the pool (it
    kills the workers); a worker also dies with the parent, so none is left
    behind if the parent is killed outright (Linux). On glibc, image
    buffers (hundreds of KB each) are kept on the heap for reuse instead of being
    mapped and unmapped per image, which costs page faults on every decode (about
    a third of a worker's time on 512x256 JPEGs).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return  # not glibc: keep the allocator's defaults
    pr_set_pdeathsig = 1
    prctl = getattr(libc, "prctl", None)
    if prctl is not None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's upper limit for this setting
    mallopt(m_trim_threshold, 64 << 20)
