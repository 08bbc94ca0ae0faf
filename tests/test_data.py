"""The HDF5 → tf.data loader: alignment, order, resume, sharding, cache, bad files."""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import tensorflow as tf

from conftest import indexed_images, make_indexed_h5, write_pairs_h5
from dgf import data
from dgf.data import LoaderOptions
from dgf.errors import DgfError
from dgf.schema import SplitInfo, sharp_name


COUNT, HEIGHT, WIDTH = 20, 12, 16


@pytest.fixture
def h5(tmp_path: Path) -> Path:
    return make_indexed_h5(tmp_path / "pairs.h5", COUNT, HEIGHT, WIDTH)


def _batches(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(b.numpy(), s.numpy()) for b, s in dataset]


def _indices(batches) -> list[int]:
    return [int(s[0, 0, 2]) for _, sharp in batches for s in sharp]


def _dihedral(window: np.ndarray) -> list[np.ndarray]:
    """The eight flips/rotations of an (h, w, 3) window, written independently."""
    out = []
    for image in (window, np.fliplr(window)):
        out.extend(np.rot90(image, k) for k in range(4))
    return out


def _match(sample: np.ndarray, source: np.ndarray) -> int:
    """Which of ``_dihedral``'s transforms of a source window ``sample`` is."""
    i = int(sample[0, 0, 2])
    y0, x0 = int(sample[..., 0].min()), int(sample[..., 1].min())
    for k in range(8):
        rows, cols = sample.shape[:2] if k % 2 == 0 else sample.shape[1::-1]
        window = source[i, y0 : y0 + rows, x0 : x0 + cols]
        if window.shape[:2] == (rows, cols) and np.array_equal(_dihedral(window)[k], sample):
            return k
    raise AssertionError(f"sample of pair {i} is no flip/rotation of any source window")


# --- content -----------------------------------------------------------------
@pytest.mark.parametrize("crop", [8, (6, 10)])
def test_training_crops_stay_aligned_and_come_from_the_source(h5: Path, crop) -> None:
    source = indexed_images(COUNT, HEIGHT, WIDTH)
    h, w = (crop, crop) if isinstance(crop, int) else crop
    seen = set()
    for epoch in range(3):
        dataset = data.make_dataset(h5, "train", 4, LoaderOptions(crop=crop), epoch=epoch)
        batches = _batches(dataset)
        for blurred, sharp in batches:
            assert blurred.dtype == np.uint8 and sharp.dtype == np.uint8
            assert blurred.shape == sharp.shape == (4, h, w, 3)
            np.testing.assert_array_equal(blurred, 255 - sharp)
            seen.update(_match(s, source) for s in sharp)
    if h == w:
        assert seen == set(range(8))  # all flips and quarter turns occur
    else:
        assert seen == {0, 2, 4, 6}  # identity, 180°, the two mirror flips
    offsets = {
        (int(s[..., 0].min()), int(s[..., 1].min()))
        for _, sharp in _batches(data.make_dataset(h5, "train", 4, LoaderOptions(crop=crop)))
        for s in sharp
    }
    assert len(offsets) > 3  # crops move around


def test_no_augment_gives_plain_windows_with_the_same_order_and_crops(h5: Path) -> None:
    source = indexed_images(COUNT, HEIGHT, WIDTH)
    plain = _batches(data.make_dataset(h5, "train", 5,
                                       LoaderOptions(crop=8, augment=False, seed=3)))
    augmented = _batches(data.make_dataset(h5, "train", 5,
                                           LoaderOptions(crop=8, augment=True, seed=3)))
    assert {_match(s, source) for _, sharp in plain for s in sharp} == {0}
    assert _indices(plain) == _indices(augmented)
    for (_, p), (_, a) in zip(plain, augmented):
        assert [int(s[..., 0].min()) for s in p] == [int(s[..., 0].min()) for s in a]


def test_edge_crops_snap_that_share_of_windows_to_the_image_edges() -> None:
    info = SplitInfo(count=4000, height=256, width=200)
    plain = data.epoch_records(info, (96, 64), training=True, seed=1, epoch=2)
    snapped = data.epoch_records(info, (96, 64), training=True, seed=1, epoch=2,
                                 edge_crops=0.4)
    # Order and transforms are the same plan; only offsets move, and only to an edge.
    np.testing.assert_array_equal(plain[:, [0, 3]], snapped[:, [0, 3]])
    for column, last in ((1, 256 - 96), (2, 200 - 64)):
        moved = plain[:, column] != snapped[:, column]
        assert set(np.unique(snapped[moved, column])) <= {0, last}
        at_edge = np.isin(snapped[:, column], (0, last)).mean()
        assert 0.35 < at_edge < 0.45, at_edge  # 40% snapped (+ the rare uniform hit)
        assert 0.02 > np.isin(plain[:, column], (0, last)).mean()


def test_full_images_of_a_non_square_split_never_turn(h5: Path) -> None:
    source = indexed_images(COUNT, HEIGHT, WIDTH)
    batches = _batches(data.make_dataset(h5, "train", 10))
    assert all(b.shape == (10, HEIGHT, WIDTH, 3) for b, _ in batches)
    assert {_match(s, source) for _, sharp in batches for s in sharp} <= {0, 2, 4, 6}


def test_evaluation_is_file_order_centre_crop_and_keeps_the_last_batch(h5: Path) -> None:
    dataset = data.make_dataset(h5, "test", 6, LoaderOptions(crop=(4, 6), training=False))
    batches = _batches(dataset)
    assert [len(s) for _, s in batches] == [6, 6, 6, 2]
    assert int(dataset.cardinality()) == 4
    assert _indices(batches) == list(range(COUNT))
    source = indexed_images(COUNT, HEIGHT, WIDTH)
    for blurred, sharp in batches:
        np.testing.assert_array_equal(blurred, 255 - sharp)
        for s in sharp:
            np.testing.assert_array_equal(s, source[s[0, 0, 2], 4:8, 5:11])
    again = _batches(data.make_dataset(h5, "test", 6, LoaderOptions(crop=(4, 6), training=False),
                                       epoch=5))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(batches, again))


def test_seed_style_file_loads(tmp_path: Path) -> None:
    path = make_indexed_h5(tmp_path / "seed.h5", COUNT, HEIGHT, WIDTH, seed_style=True)
    batches = _batches(data.make_dataset(path, "train", 4, LoaderOptions(crop=8)))
    assert len(batches) == 5
    assert sorted(_indices(batches)) == list(range(COUNT))
    for blurred, sharp in batches:
        np.testing.assert_array_equal(blurred, 255 - sharp)
    assert data.split_info(path, "test") == SplitInfo(COUNT, HEIGHT, WIDTH)


# --- order, cardinality, resume ------------------------------------------------
def test_shuffle_is_seeded_differs_across_epochs_and_seeds_and_covers_the_split(
    h5: Path,
) -> None:
    def order(seed: int, epoch: int) -> list[int]:
        return _indices(_batches(data.make_dataset(h5, "train", 4, LoaderOptions(seed=seed),
                                                   epoch=epoch)))

    first = order(1, 0)
    assert first == order(1, 0)
    assert sorted(first) == list(range(COUNT))
    assert first != list(range(COUNT))
    assert first != order(1, 1)
    assert first != order(2, 0)


@pytest.mark.parametrize(
    "batch, drop, expected", [(3, True, 6), (3, False, 7), (4, True, 5), (20, True, 1)]
)
def test_cardinality_matches_the_batches(h5: Path, batch: int, drop: bool, expected: int) -> None:
    dataset = data.make_dataset(h5, "train", batch, LoaderOptions(drop_remainder=drop))
    assert int(dataset.cardinality()) == expected
    assert data.steps_per_epoch(COUNT, batch, drop) == expected
    batches = _batches(dataset)
    assert len(batches) == expected
    assert sum(len(s) for _, s in batches) == (expected * batch if drop else COUNT)
    if drop:
        assert dataset.element_spec[0].shape[0] == batch  # static batch size


def test_steps_per_epoch() -> None:
    assert data.steps_per_epoch(540, 16, True) == 33
    assert data.steps_per_epoch(540, 16, False) == 34
    assert data.steps_per_epoch(540, 16, True, 4) == 33
    assert data.steps_per_epoch(10, 4, False, 2) == 3  # shares of 5 in batches of 2
    with pytest.raises(DgfError, match="16 does not split evenly over 3"):
        data.steps_per_epoch(540, 16, True, 3)
    with pytest.raises(DgfError, match="batch_size must be a positive integer"):
        data.steps_per_epoch(540, 0, True)


@pytest.mark.parametrize("skip", [0, 1, 3, 5])
def test_skip_batches_resumes_exactly_where_the_epoch_left_off(h5: Path, skip: int) -> None:
    options = LoaderOptions(crop=(6, 8), seed=7)
    full = _batches(data.make_dataset(h5, "train", 4, options, epoch=2))
    resumed_ds = data.make_dataset(h5, "train", 4, options, epoch=2, skip_batches=skip)
    resumed = _batches(resumed_ds)
    assert int(resumed_ds.cardinality()) == len(full) - skip == len(resumed)
    for (fb, fs), (rb, rs) in zip(full[skip:], resumed):
        np.testing.assert_array_equal(fb, rb)
        np.testing.assert_array_equal(fs, rs)


def test_skipping_does_not_read_the_skipped_batches(h5: Path, monkeypatch) -> None:
    reads = []
    original = data._FileReader.read_into

    def counting(self, index, *args):
        reads.append(index)
        return original(self, index, *args)

    monkeypatch.setattr(data._FileReader, "read_into", counting)
    _batches(data.make_dataset(h5, "train", 4, LoaderOptions(augment=False), skip_batches=3))
    assert len(reads) == 8


def test_skipping_past_the_epoch_is_an_error(h5: Path) -> None:
    with pytest.raises(DgfError, match="skip_batches 6 is more than the 5 batches"):
        data.make_dataset(h5, "train", 4, skip_batches=6)


# --- sharding ------------------------------------------------------------------
@pytest.mark.parametrize("drop", [True, False])
def test_sharding_splits_the_epoch_without_overlap(h5: Path, drop: bool) -> None:
    count = 0
    shards = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(2, pipeline, 2)
        dataset = data.make_dataset(h5, "train", 6, LoaderOptions(drop_remainder=drop, seed=4),
                                    input_context=context, epoch=1)
        batches = _batches(dataset)
        assert int(dataset.cardinality()) == len(batches)
        assert all(len(s) <= 3 for _, s in batches)  # per-replica batches
        if drop:
            assert len(batches) == data.steps_per_epoch(COUNT, 6, True, 2) == 3
        shards.append(_indices(batches))
        count += sum(len(s) for _, s in batches)
    assert not set(shards[0]) & set(shards[1])
    if drop:
        assert count == 18  # three global steps of 6
    else:
        assert sorted(shards[0] + shards[1]) == list(range(COUNT))
    whole = _indices(_batches(data.make_dataset(h5, "train", 1, LoaderOptions(seed=4), epoch=1)))
    # Each pipeline holds its replica's share of every global step, in order.
    merged = [i for k in range(0, len(shards[0]), 3) for s in shards for i in s[k:k + 3]]
    assert merged == whole[: len(merged)] and len(merged) == count


def test_one_pipeline_feeding_two_replicas_yields_whole_steps(h5: Path) -> None:
    context = tf.distribute.InputContext(1, 0, 2)
    dataset = data.make_dataset(h5, "train", 6, input_context=context)
    assert dataset.element_spec[0].shape[0] == 3
    assert int(dataset.cardinality()) == 2 * data.steps_per_epoch(COUNT, 6, True, 2) == 6


def test_uneven_global_batch_is_an_error(h5: Path) -> None:
    context = tf.distribute.InputContext(2, 0, 2)
    with pytest.raises(DgfError, match="batch_size 5 does not split evenly over 2"):
        data.make_dataset(h5, "train", 5, input_context=context)


# --- cache ---------------------------------------------------------------------
def test_cache_gives_the_same_batches_with_fresh_crops_each_epoch(tmp_path: Path) -> None:
    path = make_indexed_h5(tmp_path / "pairs.h5", COUNT, HEIGHT, WIDTH)
    data.clear_cache()
    try:
        epochs = []
        for epoch in range(2):
            streamed = _batches(data.make_dataset(path, "train", 4, LoaderOptions(crop=8),
                                                  epoch=epoch))
            cached = _batches(
                data.make_dataset(path, "train", 4, LoaderOptions(crop=8, cache=True), epoch=epoch)
            )
            assert len(streamed) == len(cached) == 5
            for (sb, ss), (cb, cs) in zip(streamed, cached):
                np.testing.assert_array_equal(sb, cb)
                np.testing.assert_array_equal(ss, cs)
            epochs.append(cached)
        assert not np.array_equal(epochs[0][0][1], epochs[1][0][1])

        # A rebuilt file is read afresh, not served from the stale copy.
        make_indexed_h5(path, COUNT, HEIGHT, WIDTH, offset=100)
        os.utime(path, ns=(0, path.stat().st_mtime_ns + 10**9))
        rebuilt = _batches(data.make_dataset(path, "test", 20,
                                             LoaderOptions(training=False, cache=True)))
        assert _indices(rebuilt) == list(range(100, 100 + COUNT))
    finally:
        data.clear_cache()


def test_cache_that_does_not_fit_is_an_error(h5: Path, tmp_path: Path, monkeypatch) -> None:
    from dgf import host

    data.clear_cache()
    # A container's cgroup limit, not the machine's free memory, is what counts.
    (tmp_path / "memory.max").write_text("30000\n")
    (tmp_path / "memory.current").write_text("20000\n")
    monkeypatch.setattr(host, "_CGROUP", tmp_path)
    with pytest.raises(DgfError, match=r"caching split 'train' \(20 pairs of 12x16\)"):
        data.make_dataset(h5, "train", 4, LoaderOptions(cache=True))


# --- bad input -----------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.h5"
    with pytest.raises(DgfError, match=r"nope\.h5: no such file.*build-hdf5 JPEG_DIR"):
        data.split_info(missing, "train")
    with pytest.raises(DgfError, match="no such file"):
        data.make_dataset(missing, "train", 4)


def test_not_an_hdf5_file(tmp_path: Path) -> None:
    path = tmp_path / "pairs.h5"
    path.write_text("sharp,blurred\n")
    with pytest.raises(DgfError, match=r"pairs\.h5: not an HDF5 file"):
        data.make_dataset(path, "train", 4)


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((4, 8, 8, 3), np.float32), "has dtype float32; expected uint8"),
        (np.zeros((4, 8, 8), np.uint8), r"has shape \(4, 8, 8\); expected \(N, H, W, 3\)"),
    ],
)
def test_wrong_dtype_or_shape(tmp_path: Path, images: np.ndarray, message: str) -> None:
    path = write_pairs_h5(tmp_path / "bad.h5", {"train": (images, images)}, chunked=False)
    with pytest.raises(DgfError, match=message):
        data.make_dataset(path, "train", 2)


def test_missing_dataset_names_what_was_expected(tmp_path: Path) -> None:
    path = tmp_path / "half.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(sharp_name("train"), data=np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(DgfError, match="no dataset 'train_data_blur'"):
        data.make_dataset(path, "train", 2)
    with pytest.raises(DgfError, match="no dataset 'val_data_full'"):
        data.split_info(path, "val")


@pytest.mark.parametrize(
    "crop, message",
    [
        (13, "crop 13x13 is larger than the 12x16 images"),
        ((8, 17), "crop 8x17 is larger than the 12x16 images"),
        (0, "crop must be a positive int"),
        ((4, 4, 4), "crop must be a positive int"),
    ],
)
def test_bad_crop(h5: Path, crop, message: str) -> None:
    with pytest.raises(DgfError, match=message):
        data.make_dataset(h5, "train", 2, LoaderOptions(crop=crop))


def test_batch_larger_than_the_split(h5: Path) -> None:
    with pytest.raises(DgfError, match="batch_size 21 is larger than the 20 pairs"):
        data.make_dataset(h5, "train", 21)
    dataset = data.make_dataset(h5, "train", 21, LoaderOptions(drop_remainder=False))
    assert [len(s) for _, s in _batches(dataset)] == [COUNT]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(seed=-1), "seed must be a non-negative integer, got -1"),
        (dict(read_workers=0), "read_workers must be at least 1"),
        (dict(prefetch=-2), "prefetch must be None or a non-negative integer, got -2"),
        (dict(edge_crops=1.5), r"edge_crops must be a number in \[0, 1\], got 1\.5"),
        (dict(crop=2.5), r"crop must be a positive int .*got 2\.5"),
    ],
)
def test_bad_options_are_rejected_when_made(kwargs, message: str) -> None:
    with pytest.raises(DgfError, match=message):
        LoaderOptions(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(epoch=-1), "epoch must be a non-negative integer, got -1"),
        (dict(skip_batches=1.0), r"skip_batches must be a non-negative integer, got 1\.0"),
    ],
)
def test_bad_epoch_position(h5: Path, kwargs, message: str) -> None:
    with pytest.raises(DgfError, match=message):
        data.make_dataset(h5, "train", 2, **kwargs)


def test_options_keep_the_crop_as_height_and_width_and_resolve_drop_remainder() -> None:
    assert LoaderOptions(crop=8).crop == (8, 8)
    assert LoaderOptions(crop=[6, np.int64(10)]).crop == (6, 10)
    assert LoaderOptions().crop is None
    assert LoaderOptions().drops_remainder is True
    assert LoaderOptions(training=False).drops_remainder is False
    assert LoaderOptions(training=False, drop_remainder=True).drops_remainder is True


def test_batch_buffers_are_reused_only_when_no_array_uses_them() -> None:
    import gc

    pool = data._BufferPool()
    first = pool.take((2, 4, 4, 3))
    assert first.ctypes.data % 64 == 0  # aligned, so TensorFlow can adopt it
    # Hold the memory under ``first`` ourselves: a buffer allocated afresh can then
    # never land at its address, so sharing memory with it means it was reused.
    memory = first.base.raw
    derived = first[1:, :, ::-1]
    del first
    gc.collect()
    second = pool.take((2, 4, 4, 3))
    assert not np.shares_memory(second, memory)  # ``derived`` still uses it
    assert np.shares_memory(derived, memory)
    del derived
    gc.collect()
    third = pool.take((2, 4, 4, 3))
    assert np.shares_memory(third, memory)  # the released buffer came back
    assert not np.shares_memory(third, second)
    assert third.ctypes.data % 64 == 0
