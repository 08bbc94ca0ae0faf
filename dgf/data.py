"""Stream (blurred, sharp) batches from the HDF5 file into ``tf.data``.

Batches leave the loader as uint8 (B, h, w, 3): the model step converts them to
[-1, 1] floats on the device, so the host moves a quarter of the bytes.

Everything random in an epoch (the order of the pairs, each pair's crop offset and its
flip / rotation) is drawn up front from ``(seed, epoch)`` alone into a small table of
records ``(index, y, x, transform)``. Batch ``k`` of an epoch therefore depends only on
``(seed, epoch, k)``: a resumed run rebuilds the same table and slices off the batches
it already trained on without reading them, and a sharded run cuts disjoint pieces
out of the same table (each pipeline its share of every step).

Reads are one pair at a time by plain index and crop window
(``ds[i, y:y + h, x:x + w, :]``, a hyperslab), never h5py fancy indexing, which is
hundreds of times slower. Each reader thread opens its own h5py handle lazily, inside
the pipeline.
"""
from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import h5py
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from dgf.checks import is_int, is_number
from dgf.errors import DgfError
from dgf.host import available_memory, cores
from dgf.schema import SplitInfo, blurred_name, check_split, open_pairs_file, sharp_name

__all__ = [
    "LoaderOptions",
    "make_dataset",
    "split_info",
    "steps_per_epoch",
    "epoch_records",
    "clear_cache",
]

# Transform codes: ``code % 4`` quarter turns counter-clockwise after a horizontal
# flip when ``code >= 4``. Codes 0, 2, 4, 6 keep the shape (identity, 180°, h-flip,
# v-flip); the odd codes swap height and width and are used only for square outputs.
_SHAPE_KEEPING = np.array([0, 2, 4, 6], dtype=np.int64)
_ALL_TRANSFORMS = np.arange(8, dtype=np.int64)

# Cached splits may take at most this share of the memory available when caching.
_CACHE_MEMORY_SHARE = 0.8


def split_info(h5_path: Path | str, split: str) -> SplitInfo:
    """Open ``h5_path``, validate ``split`` and return its pair count and image size.

    Raises DgfError for a missing file, a file that is not HDF5, or a split whose
    datasets are missing or have the wrong dtype or shape.
    """
    with open_pairs_file(h5_path) as f:
        return check_split(f, split, h5_path)


def steps_per_epoch(
    count: int,
    batch_size: int,
    drop_remainder: bool = True,
    num_replicas_or_shards: int = 1,
) -> int:
    """Batches per epoch of ``count`` pairs at global batch ``batch_size``.

    The epoch is split into ``num_replicas_or_shards`` equal shares, each batched at
    ``batch_size // num_replicas_or_shards``; the result is the number of batches one
    share yields, which is also the number of training steps. It equals the
    ``cardinality()`` of :func:`make_dataset` without an input context (``n = 1``) or
    with one input pipeline per replica. With ``drop_remainder`` it is
    ``count // batch_size`` whatever ``n`` is; without, the largest share counts its
    partial last batch.
    """
    _check_positive_int("count", count)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("num_replicas_or_shards", num_replicas_or_shards)
    n = num_replicas_or_shards
    if batch_size % n:
        raise DgfError(
            f"batch_size {batch_size} does not split evenly over {n} replicas; "
            f"use a multiple of {n}."
        )
    if drop_remainder:
        return count // batch_size
    return math.ceil(math.ceil(count / n) / (batch_size // n))


def epoch_records(
    info: SplitInfo,
    crop: tuple[int, int],
    *,
    training: bool,
    seed: int,
    epoch: int,
    augment: bool = True,
    edge_crops: float = 0.0,
) -> np.ndarray:
    """The whole epoch's plan: one ``(index, y, x, transform)`` row per pair.

    ``crop`` is the (h, w) read from each image. Training rows come in a permutation
    drawn from ``(seed, epoch)`` with uniform crop offsets and, when ``augment``, a
    transform out of the eight flips/rotations for square crops or the four that keep
    the shape (identity, h-flip, v-flip, 180°) otherwise. Evaluation rows are in file
    order with the centre crop and no transform. Returns (count, 4) int64.

    ``edge_crops`` in [0, 1]: along each axis independently, this share of training
    crops snaps to the first or the last position, so that the crop's edge is the
    image's edge. Uniform offsets almost never do that (1 in 161 for 96 of 256), yet
    whole-image inference always has image edges, where blur with zero padding
    darkens the picture; flips and rotations keep a snapped edge on an edge. The
    extra draws come after the others, so 0 leaves every plan as it was.
    """
    h, w = crop
    if not training:
        rows = np.zeros((info.count, 4), dtype=np.int64)
        rows[:, 0] = np.arange(info.count)
        rows[:, 1] = (info.height - h) // 2
        rows[:, 2] = (info.width - w) // 2
        return rows
    rng = np.random.default_rng([seed, epoch])
    # Draw every column whatever the options, so that switching augmentation off
    # leaves the order and the crops of an epoch unchanged.
    order = rng.permutation(info.count)
    ys = rng.integers(0, info.height - h, size=info.count, endpoint=True)
    xs = rng.integers(0, info.width - w, size=info.count, endpoint=True)
    choices = _ALL_TRANSFORMS if h == w else _SHAPE_KEEPING
    codes = rng.choice(choices, size=info.count)
    if not augment:
        codes[:] = 0
    if edge_crops > 0:
        for offsets, last in ((ys, info.height - h), (xs, info.width - w)):
            snap = rng.random(info.count) < edge_crops
            far = rng.random(info.count) < 0.5
            offsets[snap] = np.where(far[snap], last, 0)
    return np.stack([order, ys, xs, codes], axis=1).astype(np.int64)


# One RGB pixel as a single 3-byte item: flipping or turning an image then moves whole
# pixels, which numpy copies about 2.5x faster than the same strides over bytes.
_PIXEL = np.dtype((np.void, 3))


def _pixels(image: np.ndarray) -> np.ndarray:
    """View (..., 3) uint8 images as (...) pixels; no copy."""
    return image.view(_PIXEL)[..., 0]


def _transform(pixels: np.ndarray, code: int) -> np.ndarray:
    """Apply transform ``code`` (see ``epoch_records``) to (h, w) pixels; a view."""
    if code >= 4:
        pixels = pixels[:, ::-1]
    turns = code % 4
    return np.rot90(pixels, turns) if turns else pixels


class _FileReader:
    """Reads crop windows of one split; one h5py handle per calling thread.

    Each tf.data worker thread opens its own handle on first use (a handle must not
    be shared between threads mid-read, nor cross a fork); handles close when the
    reader, and so the pipeline holding it, is garbage-collected. Reads go through
    h5py's low-level API straight into the caller's buffer (or, for a transformed
    pair, a per-thread scratch pair): no array is allocated per read.
    """

    def __init__(self, path: Path, split: str) -> None:
        self._path = path
        self._names = (blurred_name(split), sharp_name(split))
        self._local = threading.local()

    def _state(self, h: int, w: int) -> tuple:
        state = getattr(self._local, "state", None)
        if state is None or state[0] != (h, w):
            handle = getattr(self._local, "handle", None)
            if handle is None:
                handle = self._local.handle = h5py.File(self._path, "r")
            ids = tuple(handle[name].id for name in self._names)
            spaces = tuple(dataset_id.get_space() for dataset_id in ids)
            memory = h5py.h5s.create_simple((h, w, 3))
            # Transformed windows land here first, then turn while copied out.
            scratch = np.empty((2, h, w, 3), dtype=np.uint8)
            state = self._local.state = ((h, w), ids, spaces, memory, scratch)
        return state

    def read_into(
        self, index: int, y: int, x: int, code: int, blurred: np.ndarray, sharp: np.ndarray
    ) -> None:
        """Copy the window at (y, x) of pair ``index``, turned by transform ``code``,
        into C-contiguous (h, w, 3) uint8 arrays ``blurred`` and ``sharp``."""
        h, w = blurred.shape[:2]
        if code % 2:
            h, w = w, h
        _, ids, spaces, memory, scratch = self._state(h, w)
        targets = (scratch[0], scratch[1]) if code else (blurred, sharp)
        for dataset_id, space, out in zip(ids, spaces, targets):
            space.select_hyperslab((index, y, x, 0), (1, h, w, 3))
            dataset_id.read(memory, space, out)
        if code:
            _pixels(blurred)[...] = _transform(_pixels(scratch[0]), code)
            _pixels(sharp)[...] = _transform(_pixels(scratch[1]), code)


class _ArrayReader:
    """Reads crop windows from a split held in memory (``cache=True``)."""

    def __init__(self, blurred: np.ndarray, sharp: np.ndarray) -> None:
        self._blurred = _pixels(blurred)
        self._sharp = _pixels(sharp)

    def read_into(
        self, index: int, y: int, x: int, code: int, blurred: np.ndarray, sharp: np.ndarray
    ) -> None:
        """Copy the window at (y, x) of pair ``index``, turned by transform ``code``,
        into (h, w, 3) uint8 arrays ``blurred`` and ``sharp``."""
        h, w = blurred.shape[:2]
        if code % 2:
            h, w = w, h
        window = np.s_[index, y : y + h, x : x + w]
        _pixels(blurred)[...] = _transform(self._blurred[window], code)
        _pixels(sharp)[...] = _transform(self._sharp[window], code)


# Splits loaded by ``cache=True``, kept across calls so that a trainer rebuilding the
# pipeline every epoch reads the file once. Keyed by file identity and modification
# time so that a rebuilt file is read afresh.
_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget every split held in memory by ``LoaderOptions(cache=True)``."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _cached_split(path: Path, split: str, info: SplitInfo) -> _ArrayReader:
    stat = path.stat()
    key = (str(path.resolve()), split, stat.st_mtime_ns, stat.st_size)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _ArrayReader(*_CACHE[key])
        for stale in [k for k in _CACHE if k[:2] == key[:2]]:
            del _CACHE[stale]
        pair_bytes = 2 * info.height * info.width * 3
        needed = info.count * pair_bytes
        available = available_memory()
        if available is not None and needed > _CACHE_MEMORY_SHARE * available:
            raise DgfError(
                f"{path}: caching split '{split}' ({info.count} pairs of "
                f"{info.height}x{info.width}) needs {needed / 2**30:.2f} GiB but only "
                f"{available / 2**30:.2f} GiB of memory is available; stream from the "
                f"file instead (cache=False) or free memory."
            )
        blurred = np.empty((info.count, info.height, info.width, 3), dtype=np.uint8)
        sharp = np.empty_like(blurred)
        # Contiguous blocks of about 64 MiB: large sequential reads, steady progress.
        block = max(1, (64 << 20) // pair_bytes)
        with h5py.File(path, "r") as f, tqdm(
            total=info.count, unit="pair", desc=f"caching {split}", disable=None
        ) as bar:
            for start in range(0, info.count, block):
                stop = min(start + block, info.count)
                f[blurred_name(split)].read_direct(
                    blurred, np.s_[start:stop], np.s_[start:stop]
                )
                f[sharp_name(split)].read_direct(sharp, np.s_[start:stop], np.s_[start:stop])
                bar.update(stop - start)
        _CACHE[key] = (blurred, sharp)
        return _ArrayReader(blurred, sharp)


class _Lease:
    """One use of a pooled buffer, as an object numpy can wrap.

    Every array onto the buffer, however derived, ends its chain of ``base``
    references here (numpy collapses views to the first non-array base), so this
    object dies only when no array uses the memory any more.
    """

    def __init__(self, raw: np.ndarray, start: int, shape: tuple[int, ...]) -> None:
        self.raw = raw
        self.__array_interface__ = {
            "version": 3,
            "shape": shape,
            "typestr": "|u1",
            "data": (raw.ctypes.data + start, False),
        }


class _BufferPool:
    """Batch arrays that TensorFlow can adopt, recycled once it lets go of them.

    TensorFlow takes a returned array's memory without copying it only when the data
    is aligned to 64 bytes (numpy guarantees 16), and keeps a reference to the array
    for as long as the tensor lives. Buffers go back to the pool when the last array
    onto them dies, sparing the page faults of touching newly mapped memory on every
    batch.
    """

    ALIGNMENT = 64

    def __init__(self) -> None:
        self._free: dict[tuple[int, ...], list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialised, 64-byte-aligned uint8 array of ``shape``."""
        with self._lock:
            free = self._free.setdefault(shape, [])
            raw = free.pop() if free else None
        if raw is None:
            raw = np.empty(int(np.prod(shape)) + self.ALIGNMENT, dtype=np.uint8)
        lease = _Lease(raw, -raw.ctypes.data % self.ALIGNMENT, shape)
        weakref.finalize(lease, self._give_back, shape, raw)
        return np.asarray(lease)

    def _give_back(self, shape: tuple[int, ...], raw: np.ndarray) -> None:
        with self._lock:
            self._free[shape].append(raw)


def _batch_reader(
    reader: _FileReader | _ArrayReader,
    records: np.ndarray,
    batch_size: int,
    crop: tuple[int, int],
) -> Callable[[np.int64], tuple[np.ndarray, np.ndarray]]:
    """A function from a batch number to its (blurred, sharp) uint8 arrays."""
    h, w = crop
    pool = _BufferPool()

    def read_batch(batch: np.int64) -> tuple[np.ndarray, np.ndarray]:
        rows = records[int(batch) * batch_size : (int(batch) + 1) * batch_size]
        blurred = pool.take((len(rows), h, w, 3))
        sharp = pool.take((len(rows), h, w, 3))
        for j, (index, y, x, code) in enumerate(rows.tolist()):
            reader.read_into(index, y, x, code, blurred[j], sharp[j])
        return blurred, sharp

    return read_batch


#: Hosts with at most this many cores read with one thread and a fixed prefetch.
#: There, tf.data's tuned reader threads take cores from the training step's own
#: thread pool (measured on 2 cores: the loop ran at about half the bare step's
#: speed); reading one batch costs milliseconds, so one reader keeps up.
SMALL_HOST_CORES = 4


def _check_positive_int(name: str, value: object) -> None:
    if not is_int(value) or value < 1:
        raise DgfError(f"{name} must be a positive integer, got {value!r}.")


def _crop_shape(crop: object) -> tuple[int, int] | None:
    """``crop`` as (h, w) (None stays None); DgfError for anything else."""
    if crop is None:
        return None
    if is_int(crop):
        size = (crop, crop)
    elif isinstance(crop, (tuple, list, np.ndarray)):
        size = tuple(crop)
    else:
        size = ()
    if len(size) != 2 or any(not is_int(v) or v < 1 for v in size):
        raise DgfError(
            f"crop must be a positive int or a (height, width) pair of them, got {crop!r}."
        )
    return int(size[0]), int(size[1])


@dataclass(frozen=True)
class LoaderOptions:
    """How :func:`make_dataset` reads a split: the same for every epoch of a run.
    Checked when made: a bad value is a DgfError naming it.

    Attributes:
        crop: (h, w) or one int for a square, kept as (h, w); None reads whole
            images. Training takes a random window per pair, evaluation the centre
            one. The same window and transform apply to both images of a pair.
        training: shuffled order, random crops and (with ``augment``) random flips and
            rotations, all drawn from ``(seed, epoch)``; False: file order, centre
            crops, no transform.
        seed: with the epoch, fixes everything random in the epoch.
        cache: hold the raw split in memory (kept across calls, so a dataset rebuilt
            for every epoch reads the file once); crops and transforms stay fresh each
            epoch. :func:`make_dataset` raises DgfError if the split does not fit in
            available memory.
        drop_remainder: drop the last partial batch; None: drop it when training,
            keep it for evaluation. With it, the batch dimension is static.
        augment: allow flips and rotations when training. Quarter turns are used only
            when the output is square (square crop, or square images and no crop);
            other shapes get identity, horizontal flip, vertical flip or 180°.
        prefetch: batches to prefetch; None lets tf.data tune it (none on a host of at
            most ``SMALL_HOST_CORES`` cores), 0 turns it off.
        read_workers: batches read concurrently; None lets tf.data tune it (on a
            small host: one at a time in the caller's thread, the pipeline with a
            private one-thread pool), 1 reads them one after the other.
        edge_crops: share in [0, 1] of training crops snapped to the image's edge
            along each axis (see ``epoch_records``).
    """

    crop: int | tuple[int, int] | None = None
    training: bool = True
    seed: int = 0
    cache: bool = False
    drop_remainder: bool | None = None
    augment: bool = True
    prefetch: int | None = None
    read_workers: int | None = None
    edge_crops: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop", _crop_shape(self.crop))
        if not is_int(self.seed) or self.seed < 0:
            raise DgfError(f"seed must be a non-negative integer, got {self.seed!r}.")
        for name, value in (("prefetch", self.prefetch), ("read_workers", self.read_workers)):
            if value is not None and (not is_int(value) or value < 0):
                raise DgfError(f"{name} must be None or a non-negative integer, got {value!r}.")
        if self.read_workers == 0:
            raise DgfError("read_workers must be at least 1 (or None to let tf.data choose).")
        if not is_number(self.edge_crops) or not 0.0 <= self.edge_crops <= 1.0:
            raise DgfError(f"edge_crops must be a number in [0, 1], got {self.edge_crops!r}.")

    @property
    def drops_remainder(self) -> bool:
        """Whether the last partial batch is dropped (``drop_remainder`` resolved)."""
        return self.training if self.drop_remainder is None else bool(self.drop_remainder)


def _check_crop(
    crop: tuple[int, int] | None, info: SplitInfo, path: Path, split: str
) -> tuple[int, int]:
    """The (h, w) read from each image: ``crop``, or the whole image when None;
    DgfError for a crop larger than the images."""
    if crop is None:
        return info.height, info.width
    h, w = crop
    if h > info.height or w > info.width:
        raise DgfError(
            f"crop {h}x{w} is larger than the {info.height}x{info.width} images of "
            f"split '{split}' in {path}; use a crop of at most "
            f"{info.height}x{info.width}."
        )
    return h, w


def make_dataset(
    h5_path: Path | str,
    split: str,
    batch_size: int,
    options: LoaderOptions = LoaderOptions(),
    *,
    epoch: int = 0,
    skip_batches: int = 0,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """One epoch of ``(blurred, sharp)`` batches, each uint8 (B, h, w, 3) in [0, 255].

    Args:
        h5_path: HDF5 file with ``{split}_data_blur`` and ``{split}_data_full``.
        split: "train", "test", ...
        batch_size: global batch size. With ``input_context`` the dataset yields
            per-replica batches of ``input_context.get_per_replica_batch_size(
            batch_size)``, as ``distribute_datasets_from_function`` expects.
        options: how the split is read (:class:`LoaderOptions`: crop, training,
            seed, cache, drop_remainder, augment, prefetch, read_workers,
            edge_crops), e.g. ``LoaderOptions(crop=128, seed=1)``.
        epoch: with ``options.seed``, fixes everything random in the epoch; a
            different epoch gives a different order, crops and transforms.
        skip_batches: batches of this dataset to leave out at the start, without
            reading them. ``make_dataset(..., epoch=e, skip_batches=k)`` yields exactly
            batches k, k + 1, ... of the uninterrupted epoch ``e``.
        input_context: shard the epoch over ``num_input_pipelines``; pipeline
            ``input_pipeline_id`` takes its own disjoint piece of the epoch's order:
            its share of every global step, so step k trains on the same pairs
            whether one process or several workers run it.

    Without ``input_context``, ``cardinality()`` is
    ``steps_per_epoch(count, batch_size, drop_remainder) - skip_batches``.
    Raises DgfError for a bad file, a crop larger than the images, or a batch
    larger than the split (or shard) when the remainder is dropped.
    """
    path = Path(h5_path)
    info = split_info(path, split)
    _check_positive_int("batch_size", batch_size)
    hw = _check_crop(options.crop, info, path, split)
    for name, value in (("epoch", epoch), ("skip_batches", skip_batches)):
        if not is_int(value) or value < 0:
            raise DgfError(f"{name} must be a non-negative integer, got {value!r}.")
    drop_remainder = options.drops_remainder
    shards = _Shards.of(input_context, batch_size)
    records = epoch_records(
        info, hw, training=options.training, seed=options.seed, epoch=epoch,
        augment=options.augment, edge_crops=options.edge_crops,
    )
    records = _shard_records(records, shards, info, drop_remainder, batch_size, split, path)
    records = _skip_batches(records, shards.per_batch, skip_batches)
    reader = _cached_split(path, split, info) if options.cache else _FileReader(path, split)
    read_batch = _batch_reader(reader, records, shards.per_batch, hw)
    static_batch = shards.per_batch if drop_remainder else None
    n_batches = math.ceil(len(records) / shards.per_batch)
    return _pipeline(read_batch, n_batches, (static_batch, hw[0], hw[1], 3),
                     options.prefetch, options.read_workers)


class _Shards(NamedTuple):
    """How an epoch is cut over input pipelines and batched per replica."""

    count: int  # input pipelines
    index: int  # this pipeline
    local_replicas: int  # replicas this pipeline feeds
    per_batch: int  # the batch size this pipeline yields

    @classmethod
    def of(cls, input_context: tf.distribute.InputContext | None, batch_size: int) -> _Shards:
        """The sharding of ``input_context`` (one pipeline, global batches, if None)."""
        if input_context is None:
            return cls(1, 0, 1, batch_size)
        count = input_context.num_input_pipelines
        try:
            per_batch = input_context.get_per_replica_batch_size(batch_size)
        except ValueError as exc:
            raise DgfError(
                f"batch_size {batch_size} does not split evenly over "
                f"{input_context.num_replicas_in_sync} replicas; use a multiple of "
                f"{input_context.num_replicas_in_sync}."
            ) from exc
        return cls(
            count,
            input_context.input_pipeline_id,
            max(1, input_context.num_replicas_in_sync // count),
            per_batch,
        )


def _shard_records(
    records: np.ndarray,
    shards: _Shards,
    info: SplitInfo,
    drop_remainder: bool,
    batch_size: int,
    split: str,
    path: Path,
) -> np.ndarray:
    """This pipeline's piece of the epoch's records: its share of every global step.

    Global step k is rows [k * B, (k + 1) * B) of the epoch's plan whatever the
    topology: pipeline p takes the p-th share of every step (its replicas'
    batches), so one process and several workers train on the same batches.
    """
    group = shards.local_replicas * shards.per_batch
    if not drop_remainder:
        chunks = [records[i : i + group] for i in range(0, len(records), group)]
        mine = chunks[shards.index :: shards.count]
        return np.concatenate(mine) if mine else records[:0]
    # Every pipeline must yield the same number of batches, a whole number of
    # global steps, or the replicas would fall out of step at the end.
    steps = info.count // (group * shards.count)
    if steps == 0:
        where = f" over {shards.count} input pipelines" if shards.count > 1 else ""
        raise DgfError(
            f"batch_size {batch_size} is larger than the {info.count} pairs of "
            f"split '{split}' in {path}{where}; lower the batch size or pass "
            f"drop_remainder=False."
        )
    records = records[: steps * shards.count * group].reshape(steps, shards.count, group, 4)
    return records[:, shards.index].reshape(-1, 4)


def _skip_batches(records: np.ndarray, per_batch: int, skip_batches: int) -> np.ndarray:
    """``records`` without its first ``skip_batches`` batches (never read)."""
    n_batches = math.ceil(len(records) / per_batch)
    if skip_batches > n_batches:
        raise DgfError(
            f"skip_batches {skip_batches} is more than the {n_batches} batches of "
            f"this epoch."
        )
    return records[skip_batches * per_batch :]


def _pipeline(
    read_batch: Callable[[np.int64], tuple[np.ndarray, np.ndarray]],
    n_batches: int,
    shape: tuple[int | None, int, int, int],
    prefetch: int | None,
    read_workers: int | None,
) -> tf.data.Dataset:
    """The tf.data pipeline over batch numbers ``0 .. n_batches - 1``; each is read by
    ``read_batch`` into (blurred, sharp) uint8 tensors of ``shape``."""

    def load(batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        blurred, sharp = tf.numpy_function(
            read_batch, [batch], (tf.uint8, tf.uint8), stateful=False, name="read_pairs"
        )
        blurred.set_shape(shape)
        sharp.set_shape(shape)
        return blurred, sharp

    small_host = cores() <= SMALL_HOST_CORES
    if read_workers is None:
        read_workers = 0 if small_host else tf.data.AUTOTUNE
    if prefetch is None:
        prefetch = 0 if small_host else tf.data.AUTOTUNE
    if read_workers == 0:  # read in the caller's thread, when the batch is asked for
        dataset = tf.data.Dataset.range(n_batches).map(load)
    else:
        dataset = tf.data.Dataset.range(n_batches).map(
            load, num_parallel_calls=read_workers, deterministic=True
        )
    if prefetch > 0 or prefetch == tf.data.AUTOTUNE:
        dataset = dataset.prefetch(prefetch)
    if small_host:
        options = tf.data.Options()
        options.threading.private_threadpool_size = 1
        options.autotune.enabled = False
        dataset = dataset.with_options(options)
    return dataset
