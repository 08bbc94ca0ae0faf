"""Finding sharp/blurred pairs on disk and decoding them into uint8 RGB arrays.

Two layouts are understood, one per JPEG_DIR (``train``, ``test`` and, when present,
``val`` are its split folders), and lists of pairs (:func:`pairs_from_lists`):

``side-by-side`` (the seed's format)
    ``SPLIT/**/*.{jpg,jpeg,png}`` (recursive, any case of extension, hidden files and
    folders left out: :func:`dgf.images.find_images`). Each image holds
    both halves: by default the left half is sharp and the right half blurred
    (``order="sharp-blur"``); ``order="blur-sharp"`` flips this. An odd width loses
    its middle column.

``paired`` (two files per pair, matched by their path relative to the role folder)
    * GOPRO style: ``SPLIT/SCENE/sharp/x.png`` with ``SPLIT/SCENE/blur/x.png`` (any
      folder named ``sharp`` with a sibling named ``blur``, at any depth).
      ``blur_folder="blur_gamma"`` takes GOPRO's ``blur_gamma`` sibling instead; a
      scene whose ``sharp`` folder lacks the chosen sibling is skipped, with the reason.
    * pix2pix / DeblurGAN style: ``SPLIT/A/x.png`` (blurred) with ``SPLIT/B/x.png``
      (sharp).
    A file without its partner is skipped, and reported with the reason.

``pairs-list`` (RealBlur's ``*_list.txt``; :func:`pairs_from_lists`)
    One text file per split, one pair per line: two paths separated by whitespace,
    relative to the list file's folder; the sharp one first (``order="sharp-blur"``,
    RealBlur's gt then blur) or last (``"blur-sharp"``). Blank lines and lines
    starting with ``#`` are ignored. Pairs keep the list's order. A line naming a
    missing file is skipped, with its line number; a line without exactly two
    paths is an error.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from dgf.errors import DgfError
from dgf.fileio import os_reason
from dgf.images import DECODE_ERRORS, BadImageError, find_images, load_rgb_image

LAYOUTS = ("side-by-side", "paired")
LIST_LAYOUT = "pairs-list"  # the layout of a build from pairs lists (not a --layout choice)
ORDERS = ("sharp-blur", "blur-sharp")
BLUR_FOLDERS = ("blur", "blur_gamma")  # GOPRO's blurred folders beside SCENE/sharp
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
    uses_blur_folder: bool = False  # pairs came from SCENE/sharp + SCENE/<blur folder>


@dataclass
class SourcePlan:
    """All splits of a JPEG_DIR, in the order they are written."""

    jpeg_dir: Path
    layout: str
    splits: list[SplitSources]
    blur_folder: str | None = None  # the SCENE/<folder> read as blurred, when one was
    lists: dict[str, str] = field(default_factory=dict)  # split -> pairs list file


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (:func:`dgf.images.find_images`: recursive, no
    hidden files), sorted by relative POSIX path, the order pairs are stored in."""
    return sorted(find_images(folder), key=lambda p: p.relative_to(folder).as_posix())


def _sharp_folders(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.rglob("sharp") if p.is_dir())


def _role_folders(
    split_dir: Path, blur_folder: str = "blur"
) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(sharp folder, blurred folder) couples of a paired-layout split (A/B first),
    and the ``sharp`` folders that have no ``blur_folder`` sibling."""
    couples = []
    a, b = split_dir / "A", split_dir / "B"
    if a.is_dir() and b.is_dir():
        couples.append((b, a))
    lacking = []
    for sharp in _sharp_folders(split_dir):
        blurred = sharp.parent / blur_folder
        if blurred.is_dir():
            couples.append((sharp, blurred))
        else:
            lacking.append(sharp)
    return couples, lacking


def _has_paired_layout(split_dir: Path) -> bool:
    """A/B folders, or a ``sharp`` folder beside any of GOPRO's blurred folders."""
    if (split_dir / "A").is_dir() and (split_dir / "B").is_dir():
        return True
    return any(
        (sharp.parent / name).is_dir()
        for sharp in _sharp_folders(split_dir)
        for name in BLUR_FOLDERS
    )


def _lacking_reason(sharp_dir: Path, blur_folder: str) -> str:
    """Why a scene is left out: no ``blur_folder`` beside its ``sharp`` folder."""
    there = sorted(p.name for p in sharp_dir.parent.iterdir() if p.is_dir())
    n = len(_image_files(sharp_dir))
    return (
        f"no '{blur_folder}' folder beside its 'sharp' folder (it has: {', '.join(there)}); "
        f"its {n} sharp image(s) are left out"
    )


def _side_by_side_split(split_dir: Path, root: Path) -> SplitSources:
    pairs = []
    for path in _image_files(split_dir):
        rel = _rel(path, root)
        pairs.append(PairSource(path, path, rel, rel))
    return SplitSources(split_dir.name, pairs, [])


def _paired_split(split_dir: Path, root: Path, blur_folder: str = "blur") -> SplitSources:
    couples, lacking = _role_folders(split_dir, blur_folder)
    if not couples:
        if lacking:
            first = lacking[0].parent
            raise DgfError(
                f"{split_dir}: no scene has a '{blur_folder}' folder beside its 'sharp' "
                f"folder ({len(lacking)} scene(s) lack it; {_rel(first, root)}: "
                f"{_lacking_reason(lacking[0], blur_folder)}). Choose another "
                f"--blur-folder ({', '.join(BLUR_FOLDERS)})."
            )
        raise DgfError(
            f"{split_dir}: no paired folders found. The paired layout needs "
            f"'{split_dir.name}/SCENE/sharp' with '{split_dir.name}/SCENE/{blur_folder}' "
            f"(GOPRO style) or '{split_dir.name}/A' (blurred) with "
            f"'{split_dir.name}/B' (sharp)."
        )
    pairs: list[PairSource] = []
    skipped: list[tuple[str, str]] = [
        (_rel(sharp.parent, root), _lacking_reason(sharp, blur_folder)) for sharp in lacking
    ]
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
    uses = any(blurred.name == blur_folder and sharp.name == "sharp" for sharp, blurred in couples)
    return SplitSources(split_dir.name, pairs, skipped, uses)


def find_pairs(
    jpeg_dir: Path | str, layout: str = "auto", blur_folder: str = "blur"
) -> SourcePlan:
    """Find every pair under ``jpeg_dir`` for the splits train, test and (if present) val.

    ``layout`` is ``"auto"`` (paired when the train split has A/B folders or a
    ``sharp`` folder beside ``blur`` or ``blur_gamma``, side-by-side otherwise),
    ``"side-by-side"`` or ``"paired"``. ``blur_folder`` (``"blur"`` or
    ``"blur_gamma"``) is the GOPRO folder read as blurred; any other value than
    ``"blur"`` needs such scenes. Raises DgfError when the folder, a required split
    or any split's pairs are missing.
    """
    root = Path(jpeg_dir)
    if layout not in ("auto", *LAYOUTS):
        raise DgfError(f"unknown layout '{layout}'; choose auto, {', '.join(LAYOUTS)}.")
    if blur_folder not in BLUR_FOLDERS:
        raise DgfError(
            f"unknown blur folder '{blur_folder}'; choose {' or '.join(BLUR_FOLDERS)}."
        )
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
    if layout == "paired":
        splits = [_paired_split(d, root, blur_folder) for d in split_dirs]
    else:
        splits = [_side_by_side_split(d, root) for d in split_dirs]
    used_blur_folder = any(s.uses_blur_folder for s in splits)
    if blur_folder != "blur" and not used_blur_folder:
        raise DgfError(
            f"{root}: --blur-folder {blur_folder} applies to GOPRO-style scenes "
            f"(SPLIT/SCENE/sharp beside SPLIT/SCENE/{blur_folder}); this {layout} "
            f"folder has none."
        )
    for s in splits:
        if not s.pairs:
            what = (
                "*.jpg, *.jpeg or *.png images"
                if layout == "side-by-side"
                else "matching sharp/blurred files"
            )
            extra = ""
            if s.skipped:
                path, reason = s.skipped[0]
                extra = f" ({len(s.skipped)} left out; first: {path}: {reason})"
            raise DgfError(f"{root / s.split}: empty split, no {what} found{extra}.")
    return SourcePlan(root, layout, splits, blur_folder if used_blur_folder else None)


def _expected_line(order: str) -> str:
    first, second = ("sharp", "blurred") if order == "sharp-blur" else ("blurred", "sharp")
    return (
        f"two paths separated by whitespace, the {first} image then the {second} one "
        f"(--order {order}), relative to the list file's folder"
    )


def _read_list(split: str, list_file: Path | str, order: str) -> SplitSources:
    """The pairs of one pairs-list file, in its order; missing files are skipped."""
    path = Path(list_file)
    expected = _expected_line(order)
    if not path.exists():
        raise DgfError(
            f"{path}: no such pairs list for split '{split}'. It should be a text file "
            f"with one pair per line: {expected}."
        )
    if path.is_dir():
        raise DgfError(
            f"{path}: is a folder, not a pairs list for split '{split}'. Give a text "
            f"file with one pair per line: {expected}."
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DgfError(
            f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); a pairs "
            f"list holds one pair per line: {expected}."
        ) from None
    except OSError as exc:
        raise DgfError(f"{path}: cannot read the pairs list ({os_reason(exc)}).") from None
    base = path.parent
    pairs: list[PairSource] = []
    skipped: list[tuple[str, str]] = []
    lines = 0
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        lines += 1
        if len(fields) != 2:
            got = (
                f"one path ({fields[0]!r})" if len(fields) == 1 else f"{len(fields)} fields"
            )
            raise DgfError(f"{path}, line {number}: {got}; expected {expected}.")
        first, second = (Path(f).as_posix() for f in fields)
        sharp_rel, blurred_rel = (first, second) if order == "sharp-blur" else (second, first)
        sharp, blurred = base / sharp_rel, base / blurred_rel
        bad = [
            (rel, "a folder" if p.is_dir() else "no such file")
            for rel, p in ((sharp_rel, sharp), (blurred_rel, blurred))
            if not p.is_file()
        ]
        if bad:
            rel, why = bad[0]
            also = f"; nor is its partner {bad[1][0]} ({bad[1][1]})" if len(bad) > 1 else ""
            skipped.append((rel, f"{why}, named on line {number} of {path.name}{also}"))
            continue
        pairs.append(PairSource(sharp, blurred, sharp_rel, blurred_rel))
    if not lines:
        raise DgfError(f"{path}: no pairs in this list; expected lines of {expected}.")
    if not pairs:
        rel, reason = skipped[0]
        raise DgfError(
            f"{path}: none of its {lines} pairs can be used (first: {rel}: {reason}). "
            f"Paths are read relative to the list's folder, {base.resolve()}."
        )
    return SplitSources(split, pairs, skipped)


def pairs_from_lists(
    lists: Mapping[str, Path | str], order: str = "sharp-blur"
) -> SourcePlan:
    """The pairs named by one list file per split (``{"train": FILE, "test": FILE}``,
    ``"val"`` optional), RealBlur style; see the module's ``pairs-list`` layout.

    Raises DgfError for an unknown or missing split, a missing or unreadable list,
    and a line without exactly two paths (naming the file and line number).
    """
    if order not in ORDERS:
        raise DgfError(f"unknown order '{order}'; choose {' or '.join(ORDERS)}.")
    known = (*REQUIRED_SPLITS, *OPTIONAL_SPLITS)
    unknown = [s for s in lists if s not in known]
    if unknown:
        raise DgfError(
            f"pairs list for unknown split '{unknown[0]}'; name a split of "
            f"{', '.join(known)} (--pairs-list SPLIT=FILE)."
        )
    missing = [s for s in REQUIRED_SPLITS if s not in lists]
    if missing:
        raise DgfError(
            f"no pairs list for split '{missing[0]}'; give one per split: "
            f"--pairs-list train=FILE --pairs-list test=FILE (val optional)."
        )
    splits = [_read_list(s, lists[s], order) for s in known if s in lists]
    return SourcePlan(
        Path(lists["train"]).parent,
        LIST_LAYOUT,
        splits,
        lists={s: str(lists[s]) for s in known if s in lists},
    )


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
