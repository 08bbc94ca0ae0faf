"""Pack sharp/blurred pairs into one HDF5 file (``build-hdf5``).

What :func:`build_hdf5` writes, per split (``train``, ``test`` and ``val`` if present):

* ``{split}_data_full`` (sharp) and ``{split}_data_blur`` (blurred): uint8
  (N, H, W, 3) RGB, one image per chunk ``(1, H, W, 3)``, resizable along N,
  compressed with ``none`` (default), ``lzf`` or ``gzip``.
* ``{split}_source``: variable-length UTF-8 strings, shape (N, 2). Row i holds the
  sharp and the blurred file of pair i as POSIX paths relative to JPEG_DIR (for a
  pairs list: as written in the list, relative to its folder); for side-by-side
  inputs both columns name the same file.

File attributes (names in :mod:`dgf.schema`): ``schema_version``, ``size`` (int N,
or the string ``"native"``), ``order``, ``layout``, ``compression``, ``splits``
(JSON list), ``{split}_count`` (int), ``dgf_version`` and ``skipped`` (JSON list of
``[relative path, reason]``); ``blur_folder`` (``"blur"`` or ``"blur_gamma"``) when
pairs came from GOPRO-style ``SCENE/sharp`` folders, and ``pairs_lists`` (JSON
object, split to list file) for a build from pairs lists. Pairs are stored sorted by
relative path (in list order for pairs lists), whatever the number of workers.

Files written by the seed's own script (same dataset names, no attributes, no
chunking) are accepted by :func:`dgf.schema.check_split`.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import h5py
import numpy as np
from tqdm import tqdm

import dgf
from dgf import decoders, host, schema, sources
from dgf.checks import is_int
from dgf.errors import DgfError
from dgf.fileio import check_output, nearest_existing, write_atomic
from dgf.host import size_text
from dgf.images import BadImageError, image_size

COMPRESSIONS = ("none", "lzf", "gzip")
ON_ERROR = ("skip", "fail")
GZIP_LEVEL = 4  # h5py's default; fast enough that decoding, not deflating, dominates
_COMPRESSION_OPTIONS = {
    "none": {},
    "lzf": {"compression": "lzf"},
    "gzip": {"compression": "gzip", "compression_opts": GZIP_LEVEL},
}



@dataclass
class BuildReport:
    """What :func:`build_hdf5` wrote.

    ``counts``: pairs per split, in writing order. ``skipped``: (relative path,
    reason) for every file left out. ``notes``: (relative path, note) for files
    used with a caveat, e.g. an odd width. ``size``: N, or None for native.
    """

    output: Path
    layout: str
    size: int | None
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    blur_folder: str | None = None  # GOPRO folder read as blurred, when one was

    def summary(self, max_notes: int = 10) -> str:
        """A human-readable end-of-run summary: pairs per split, every skipped file."""
        shape = "native resolution" if self.size is None else f"{self.size}x{self.size}"
        layout = self.layout
        if self.blur_folder is not None:
            layout += f", blurred from SCENE/{self.blur_folder}"
        lines = [f"wrote {self.output} in {self.seconds:.1f} s ({layout}, {shape})"]
        width = max(len(s) for s in self.counts) if self.counts else 0
        for split, count in self.counts.items():
            lines.append(f"  {split + ':':<{width + 1}} {count} pairs")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s):")
            lines += [f"  {path}: {reason}" for path, reason in self.skipped]
        else:
            lines.append("skipped no files")
        if self.notes:
            lines.append(f"notes on {len(self.notes)} file(s):")
            lines += [f"  {path}: {note}" for path, note in self.notes[:max_notes]]
            if len(self.notes) > max_notes:
                lines.append(f"  ... and {len(self.notes) - max_notes} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class BuildOptions:
    """How :func:`build_hdf5` reads its pairs and stores them: every setting of
    ``build-hdf5`` but JPEG_DIR, ``-o``, ``--overwrite`` and ``--no-progress``.
    Checked when made: a bad size, order, compression, worker count or on_error is
    a DgfError naming it (layout and blur_folder are checked against the input).

    Attributes:
        size: N resizes every sharp and blurred image to N x N (LANCZOS).
        native: keep native resolution instead (all pairs of a split must then
            share one size); ``size`` is then not used.
        layout: ``"auto"``, ``"side-by-side"`` or ``"paired"`` (see :mod:`dgf.sources`).
        order: which half of a side-by-side image is sharp, or which path of a
            pairs-list line (:data:`dgf.sources.ORDERS`).
        blur_folder: GOPRO's ``"blur"`` or ``"blur_gamma"`` folder as the blurred side.
        pairs_lists: ``{"train": FILE, "test": FILE}`` (``"val"`` optional): read the
            pairs from list files instead of JPEG_DIR.
        compression: ``"none"``, ``"lzf"`` or ``"gzip"`` (:data:`COMPRESSIONS`).
        workers: decoding processes (None: all cores; 1: in this process).
        on_error: ``"skip"`` leaves bad files out and reports them; ``"fail"`` stops
            at the first.
    """

    size: int = 256
    native: bool = False
    layout: str = "auto"
    order: str = "sharp-blur"
    blur_folder: str = "blur"
    pairs_lists: Mapping[str, Path | str] | None = None
    compression: str = "none"
    workers: int | None = None
    on_error: str = "skip"

    def __post_init__(self) -> None:
        size, order, compression = self.size, self.order, self.compression
        if not self.native and (not is_int(size) or size < 1):
            raise DgfError(f"size must be a positive integer (pixels per side); got {size!r}.")
        if order not in sources.ORDERS:
            raise DgfError(f"unknown order '{order}'; choose {' or '.join(sources.ORDERS)}.")
        if compression not in COMPRESSIONS:
            raise DgfError(
                f"unknown compression '{compression}'; choose {', '.join(COMPRESSIONS)}.")
        if self.on_error not in ON_ERROR:
            raise DgfError(
                f"unknown on_error '{self.on_error}'; choose {' or '.join(ON_ERROR)}.")
        if self.workers is not None and (not is_int(self.workers) or self.workers < 1):
            raise DgfError(f"workers must be 1 or more; got {self.workers!r}.")

    @property
    def worker_count(self) -> int:
        """Decoding processes asked for: ``workers``, or all cores when None."""
        return host.cores() if self.workers is None else self.workers


def _pair_sizes(
    split: sources.SplitSources, progress: bool
) -> list[tuple[str, tuple[int, int]]]:
    """(relative path, (height, width)) of each pair of a split whose header can be
    read (side-by-side: one half), from the file headers alone; the others are
    reported with their reason when decoding."""
    found: list[tuple[str, tuple[int, int]]] = []
    bar = tqdm(
        split.pairs, desc=f"{split.split} sizes", unit="pair", disable=not progress, leave=False
    )
    for pair in bar:
        try:
            width, height = image_size(pair.sharp)
        except BadImageError:
            continue  # reported with its reason when decoding
        if pair.side_by_side:
            width //= 2
        found.append((pair.sharp_rel, (height, width)))
    return found


def _native_shape(
    split: str, found: Sequence[tuple[str, tuple[int, int]]]
) -> tuple[int, int] | None:
    """(height, width) shared by a split's pairs (``found``: :func:`_pair_sizes`);
    DgfError names the first odd file."""
    if not found:
        return None
    counts = Counter(shape for _, shape in found)
    (common, n_common), = counts.most_common(1)
    for rel, shape in found:
        if shape != common:
            h, w = shape
            raise DgfError(
                f"{rel}: its images are {w}x{h} but {n_common} of {len(found)} pairs in "
                f"'{split}' are {common[1]}x{common[0]}; --native needs one size per "
                f"split. Resize or remove the odd files, or use --size N."
            )
    return common


# A pair resized by more than this factor on either side (down or up) gets a warning.
_RESIZE_WARN_FACTOR = 2


def _far_from_size(shape: tuple[int, int], size: int) -> bool:
    """Whether an image of ``shape`` (height, width) has a side more than
    _RESIZE_WARN_FACTOR times larger or smaller than ``size``."""
    return any(
        side > _RESIZE_WARN_FACTOR * size or side * _RESIZE_WARN_FACTOR < size for side in shape
    )


def _resize_warning(
    found: Mapping[str, Sequence[tuple[str, tuple[int, int]]]], size: int
) -> str | None:
    """The one ``warning:`` line of a resizing build whose pairs (``found``: split to
    :func:`_pair_sizes`) are far from ``size`` (:func:`_far_from_size`), or None."""
    pairs = [x for split in found.values() for x in split]
    far = [(rel, shape) for rel, shape in pairs if _far_from_size(shape, size)]
    if not far:
        return None
    rel, (h, w) = far[0]
    return (
        f"warning: {len(far)} of {len(pairs)} pairs differ from the {size}x{size} target "
        f"by more than {_RESIZE_WARN_FACTOR}x (e.g. {rel} is {w}x{h}) and are resized to "
        f"{size}x{size}; use --native to keep native resolution (training takes random "
        f"crops) or --size N to choose the target"
    )


def _contiguous(chunk: np.ndarray | bytes) -> np.ndarray | bytes:
    return chunk if isinstance(chunk, bytes) else np.ascontiguousarray(chunk)


@dataclass
class _SplitWritten:
    """What writing one split stored: pairs written (in order), files left out and
    notes on the ones used."""

    used: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.used)

    def odd_width_warning(self, split: str) -> str | None:
        odd = [path for path, note in self.notes if note.startswith("odd width")]
        if not odd:
            return None
        return (
            f"{split}: {len(odd)} image(s) had an odd width; the middle column was "
            f"dropped (first: {odd[0]})"
        )


def _create_pair_datasets(
    h5: h5py.File, split: str, n: int, shape: tuple[int, int], compression: str
) -> tuple[h5py.Dataset, h5py.Dataset]:
    """The sharp and blurred datasets of a split: room for ``n`` pairs, one per chunk."""
    h, w = shape
    make = dict(
        shape=(n, h, w, 3),
        maxshape=(None, h, w, 3),
        chunks=(1, h, w, 3),
        dtype=schema.DTYPE,
        **_COMPRESSION_OPTIONS[compression],
    )
    return (
        h5.create_dataset(schema.sharp_name(split), **make),
        h5.create_dataset(schema.blurred_name(split), **make),
    )


def _store_pair(
    datasets: tuple[h5py.Dataset, h5py.Dataset], index: int, out: sources.Decoded,
    compression: str,
) -> None:
    sharp_ds, blurred_ds = datasets
    if compression == "lzf":
        sharp_ds[index] = out.sharp
        blurred_ds[index] = out.blurred
    else:
        # One image per chunk, already laid out (or deflated) by the worker: storing
        # it directly skips h5py's selection and filter machinery.
        at = (index, 0, 0, 0)
        sharp_ds.id.write_direct_chunk(at, _contiguous(out.sharp))
        blurred_ds.id.write_direct_chunk(at, _contiguous(out.blurred))


def _store_split(
    h5: h5py.File,
    split: sources.SplitSources,
    decoded: Iterator[sources.Decoded],
    shape: tuple[int, int] | None,
    compression: str,
    on_error: str,
    progress: bool,
) -> _SplitWritten:
    """Store a split's decoded pairs in order; bad files are left out (``on_error``
    "skip") or stop the build ("fail")."""
    result = _SplitWritten()
    datasets = None
    with tqdm(total=len(split.pairs), desc=split.split, unit="pair",
              disable=not progress) as bar:
        for pair, out in zip(split.pairs, decoded):
            bar.update(1)
            if out.reason is not None:
                if on_error == "fail":
                    raise DgfError(
                        f"{out.bad_path}: {out.reason}. Fix or remove the file, or pass "
                        f"--on-error skip to leave bad files out."
                    )
                result.skipped.append((out.bad_path, out.reason))
                continue
            got = out.shape
            if shape is None:
                shape = got
            if got != shape:
                raise DgfError(
                    f"{pair.sharp_rel}: its images are {got[1]}x{got[0]} but the split's "
                    f"pairs are {shape[1]}x{shape[0]}; --native needs one size per split."
                )
            if datasets is None:
                datasets = _create_pair_datasets(
                    h5, split.split, len(split.pairs), shape, compression
                )
            _store_pair(datasets, result.count, out, compression)
            result.used.append((pair.sharp_rel, pair.blurred_rel))
            result.notes += [(pair.sharp_rel, note) for note in out.notes]
    return result


def _finish_split(h5: h5py.File, split: str, n: int, result: _SplitWritten) -> None:
    """Trim the datasets to the pairs written and add the ``{split}_source`` list;
    DgfError when no pair of the split was usable."""
    written = result.count
    if written == 0:
        skipped = result.skipped
        listed = "; ".join(f"{p}: {r}" for p, r in skipped[:5])
        more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        raise DgfError(
            f"every file of split '{split}' is unusable ({len(skipped)} files): "
            f"{listed}{more}."
        )
    if written < n:
        h5[schema.sharp_name(split)].resize(written, axis=0)
        h5[schema.blurred_name(split)].resize(written, axis=0)
    h5.create_dataset(
        schema.source_name(split),
        data=np.array(result.used, dtype=object),
        dtype=h5py.string_dtype("utf-8"),
        maxshape=(None, 2),
        chunks=(min(written, 4096), 2),
    )


def _write_attrs(
    h5: h5py.File, plan: sources.SourcePlan, settings: _BuildSettings,
    counts: dict[str, int], skipped: list[tuple[str, str]],
) -> None:
    attrs = h5.attrs
    attrs[schema.ATTR_SCHEMA_VERSION] = schema.SCHEMA_VERSION
    attrs[schema.ATTR_SIZE] = "native" if settings.size is None else int(settings.size)
    attrs[schema.ATTR_ORDER] = settings.order
    attrs[schema.ATTR_LAYOUT] = plan.layout
    attrs[schema.ATTR_COMPRESSION] = settings.compression
    attrs[schema.ATTR_SPLITS] = json.dumps(list(counts))
    for split, count in counts.items():
        attrs[schema.count_attr(split)] = int(count)
    attrs[schema.ATTR_DGF_VERSION] = dgf.__version__
    attrs[schema.ATTR_SKIPPED] = json.dumps([list(x) for x in skipped])
    if plan.blur_folder is not None:
        attrs[schema.ATTR_BLUR_FOLDER] = plan.blur_folder
    if plan.lists:
        attrs[schema.ATTR_PAIRS_LISTS] = json.dumps(plan.lists)


@dataclass(frozen=True)
class _BuildSettings:
    """How one build decodes and stores its pairs."""

    size: int | None  # None: native resolution
    order: str
    compression: str
    on_error: str
    workers: int
    progress: bool

    @property
    def window(self) -> int:
        """Decoding tasks in flight at most."""
        return 2 * self.workers

    @property
    def deflate_level(self) -> int | None:
        return GZIP_LEVEL if self.compression == "gzip" else None


def _write_h5(
    tmp: Path,
    plan: sources.SourcePlan,
    shapes: dict[str, tuple[int, int] | None],
    tasks: dict[str, int],
    settings: _BuildSettings,
) -> dict[str, _SplitWritten]:
    """Decode every split of ``plan`` and write the whole file at ``tmp``."""
    results: dict[str, _SplitWritten] = {}
    pool_context = decoders.pool(settings.workers, plan.splits, shapes, tasks, settings.window)
    with pool_context as pool, h5py.File(tmp, "w") as h5:
        for s in plan.splits:
            decoded = decoders.decode_in_order(
                pool,
                s.pairs,
                settings.size,
                settings.order,
                settings.deflate_level,
                shapes[s.split] or (1, 1),
                tasks[s.split],
                settings.window,
            )
            result = _store_split(
                h5, s, decoded, shapes[s.split], settings.compression, settings.on_error,
                settings.progress,
            )
            _finish_split(h5, s.split, len(s.pairs), result)
            results[s.split] = result
        counts = {split: r.count for split, r in results.items()}
        _write_attrs(h5, plan, settings, counts, _all_skipped(plan, results))
    return results


def _all_skipped(
    plan: sources.SourcePlan, results: dict[str, _SplitWritten]
) -> list[tuple[str, str]]:
    """Unmatched files of every split, then the files that failed to decode."""
    unmatched = [x for s in plan.splits for x in s.skipped]
    return unmatched + [x for r in results.values() for x in r.skipped]


def _check_target(output: Path, overwrite: bool) -> None:
    if output.is_dir():
        raise DgfError(f"{output}: is a folder; give the path of the .h5 file to write.")
    if output.exists() and not overwrite:
        raise DgfError(
            f"{output} already exists; pass --overwrite to replace it (the old file "
            f"stays in place until the new one is complete)."
        )
    check_output(output)


def build_hdf5(
    jpeg_dir: Path | str | None,
    output: Path | str = Path("data/data.h5"),
    options: BuildOptions = BuildOptions(),
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Pack the pairs under ``jpeg_dir`` into one HDF5 file at ``output``.

    ``options`` (:class:`BuildOptions`, e.g. ``BuildOptions(size=128, workers=1)``)
    says how: ``size`` N resizes every sharp and blurred image to N x N (LANCZOS),
    ``native`` keeps native resolution. When resizing, pairs with a side more than 2x
    above or below N get one ``warning:`` line on stderr for the whole build (how
    many, an example, and the way out: ``--native`` or ``--size``), printed from the
    file headers before any decoding. With ``options.pairs_lists`` the pairs come
    from list files and ``jpeg_dir`` is None. The file is built beside ``output``
    under a hidden temporary name (:func:`dgf.fileio.write_atomic`) and moved into
    place only when complete; an existing ``output`` is replaced only with
    ``overwrite=True``. ``progress`` shows progress bars. Raises DgfError on bad
    input.
    """
    start = time.perf_counter()
    output = Path(output)
    _check_target(output, overwrite)
    plan = _plan(jpeg_dir, options)
    if plan.layout == "paired" and options.order != "sharp-blur":
        raise DgfError(
            f"{plan.jpeg_dir}: order '{options.order}' applies to side-by-side images only; "
            f"paired folders name their roles (sharp/blur, A = blurred, B = sharp)."
        )
    found = {s.split: _pair_sizes(s, progress) for s in plan.splits}
    if options.native:
        shapes = {split: _native_shape(split, sizes) for split, sizes in found.items()}
    else:
        shapes = {split: (options.size, options.size) for split in found}
        message = _resize_warning(found, options.size)
        if message is not None:
            # Printed here, by the one process that plans the build, before any decoding.
            print(message, file=sys.stderr, flush=True)
    total = sum(len(s.pairs) for s in plan.splits)
    settings = _BuildSettings(
        None if options.native else options.size, options.order, options.compression,
        options.on_error, min(options.worker_count, total), progress,
    )
    tasks = {}
    for s in plan.splits:
        h, w = shapes[s.split] or (1, 1)
        tasks[s.split] = decoders.task_pairs(h, w, len(s.pairs), settings.workers)
    _check_resources(plan.splits, shapes, tasks, settings.workers, settings.window,
                     options.compression, output)
    results = write_atomic(output, lambda tmp: _write_h5(tmp, plan, shapes, tasks, settings))
    for split, result in results.items():
        message = result.odd_width_warning(split)
        if message is not None:
            warnings.warn(message, stacklevel=2)
    return BuildReport(
        output=output,
        layout=plan.layout,
        size=settings.size,
        counts={split: r.count for split, r in results.items()},
        skipped=_all_skipped(plan, results),
        notes=[x for r in results.values() for x in r.notes],
        seconds=time.perf_counter() - start,
        blur_folder=plan.blur_folder,
    )


def _plan(jpeg_dir: Path | str | None, options: BuildOptions) -> sources.SourcePlan:
    """The pairs to build from: JPEG_DIR's layout, or the pairs lists."""
    layout, blur_folder = options.layout, options.blur_folder
    if not options.pairs_lists:
        if jpeg_dir is None:
            raise DgfError(
                "no input: give JPEG_DIR (the folder holding train/ and test/) or "
                "--pairs-list train=FILE --pairs-list test=FILE."
            )
        return sources.find_pairs(jpeg_dir, layout, blur_folder)
    if jpeg_dir is not None:
        raise DgfError(
            f"give JPEG_DIR ({jpeg_dir}) or --pairs-list, not both; a pairs list names "
            f"its files relative to its own folder."
        )
    if layout != "auto":
        raise DgfError(
            f"--layout {layout} applies to JPEG_DIR; a pairs list names every file."
        )
    if blur_folder != "blur":
        raise DgfError(
            f"--blur-folder {blur_folder} applies to GOPRO-style JPEG_DIR scenes; a pairs "
            f"list names every file."
        )
    return sources.pairs_from_lists(options.pairs_lists, options.order)


# Decoded pairs a decoding process holds besides the shared slots: the source image,
# its two halves and their resized copies.
_PAIRS_PER_DECODER = 3


def _check_resources(
    splits: Sequence[sources.SplitSources],
    shapes: dict[str, tuple[int, int] | None],
    tasks: dict[str, int],
    workers: int,
    window: int,
    compression: str,
    output: Path,
) -> None:
    """Refuse a build that cannot fit in memory (or, uncompressed, on disk) before
    any work, with the numbers and a way out, instead of dying in mmap or at 90 %."""
    h, w = max((shapes[s.split] or (1, 1) for s in splits), key=math.prod)
    pair_bytes = 2 * h * w * 3
    decoders = workers if workers > 1 else 1
    in_flight = decoders * _PAIRS_PER_DECODER + 1  # + the pair being written
    if workers > 1:
        in_flight += (window + 1) * max(tasks.values())  # the shared slots
    need = in_flight * pair_bytes
    have = host.available_memory()
    if have is not None and need > have:
        alone = (_PAIRS_PER_DECODER + 1) * pair_bytes
        way_out = (
            f"use fewer --workers (--workers 1 needs about {size_text(alone)}) or a smaller --size"
            if workers > 1 and alone <= have
            else "use a smaller --size"
        )
        raise DgfError(
            f"pairs of {w}x{h} need about {size_text(need)} of memory ({in_flight} decoded "
            f"pairs of {size_text(pair_bytes)} in flight with {decoders} decoding "
            f"process(es)) but {size_text(have)} is available; {way_out}."
        )
    if compression == "none":
        total = sum(
            len(s.pairs) * 2 * math.prod(shapes[s.split] or (1, 1)) * 3 for s in splits
        )
        try:
            free = shutil.disk_usage(nearest_existing(output.parent)).free
        except OSError:
            return
        if total > free:
            raise DgfError(
                f"{output} would take about {size_text(total)} uncompressed but "
                f"{size_text(free)} is free there; use --compression lzf or gzip, a smaller "
                f"--size, or another -o."
            )
