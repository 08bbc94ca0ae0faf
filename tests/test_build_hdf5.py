"""build-hdf5: layouts, pixel exactness, bad input, atomic output, determinism, CLI."""
from __future__ import annotations

import json
import re
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import noise_image, png_header_only, save_side_by_side
from dgf import host, schema, sources
from dgf.cli import build_hdf5_main
from dgf.errors import DgfError
from dgf.fileio import temp_path
from dgf.hdf5 import BuildOptions, build_hdf5


@dataclass(frozen=True)
class H5Description:
    """What a pairs file holds: its splits and, for files from ``build-hdf5``, attributes.

    ``attrs`` is empty for files written by the seed's script.
    """

    path: Path
    splits: dict[str, schema.SplitInfo]
    attrs: dict[str, object]

    @property
    def size(self) -> int | None:
        """N for resized files, None for native-resolution or seed files."""
        value = self.attrs.get(schema.ATTR_SIZE)
        return int(value) if isinstance(value, (int, np.integer)) else None


def describe(path: Path | str) -> H5Description:
    """Validate a pairs file and describe it with the package's schema checks; works
    for seed-written files too.

    Every split present (a ``{split}_data_full`` dataset) is checked with
    :func:`dgf.schema.check_split`; a file without train and test raises DgfError.
    """
    path = Path(path)
    with schema.open_pairs_file(path) as h5:
        present = [s for s in schema.SPLITS if schema.sharp_name(s) in h5]
        for required in sources.REQUIRED_SPLITS:
            if required not in present:
                schema.check_split(h5, required, path)  # raises, naming what is missing
        splits = {s: schema.check_split(h5, s, path) for s in present}
        attrs = {}
        for key, value in h5.attrs.items():
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            if isinstance(value, np.generic):
                value = value.item()
            attrs[key] = value
    for key in (schema.ATTR_SPLITS, schema.ATTR_SKIPPED, schema.ATTR_PAIRS_LISTS):
        if isinstance(attrs.get(key), str):
            attrs[key] = json.loads(attrs[key])
    return H5Description(path, splits, attrs)


REPO = Path(__file__).resolve().parents[1]
H, W = 12, 16  # one half of a side-by-side test image


def _sbs_tree(root: Path, names: dict[str, list[str]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Side-by-side PNGs with random halves; returns {relative path: (left, right)}."""
    halves = {}
    for split, files in names.items():
        for name in files:
            rel = f"{split}/{name}"
            seed = zlib.crc32(rel.encode())
            left, right = noise_image(seed, H, W), noise_image(seed + 1, H, W)
            save_side_by_side(root / rel, left, right)
            halves[rel] = (left, right)
    return halves


def _read(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}


def _sources(data: dict, split: str) -> list[tuple[str, str]]:
    return [(a.decode(), b.decode()) for a, b in data[schema.source_name(split)]]


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp" in p.name]


# --- layouts and pixels -----------------------------------------------------
def test_side_by_side_native_png_is_exact_and_sorted(tmp_path):
    jpeg_dir = tmp_path / "pairs"
    halves = _sbs_tree(
        jpeg_dir, {"train": ["b.png", "a.PNG", "sub/c.png"], "test": ["z.png", "y.png"]}
    )
    (jpeg_dir / "train" / "notes.txt").write_text("not an image suffix, ignored")
    out = tmp_path / "out" / "data.h5"  # parent folder does not exist yet
    report = build_hdf5(jpeg_dir, out, BuildOptions(native=True, workers=1), progress=False)

    assert report.counts == {"train": 3, "test": 2}
    assert report.skipped == [] and report.layout == "side-by-side" and report.size is None
    data = _read(out)
    for split, order in (("train", ["a.PNG", "b.png", "sub/c.png"]), ("test", ["y.png", "z.png"])):
        rels = [f"{split}/{n}" for n in order]
        assert _sources(data, split) == [(r, r) for r in rels]
        sharp, blurred = data[schema.sharp_name(split)], data[schema.blurred_name(split)]
        assert sharp.dtype == np.uint8 and sharp.shape == (len(rels), H, W, 3)
        for i, rel in enumerate(rels):
            np.testing.assert_array_equal(sharp[i], halves[rel][0])
            np.testing.assert_array_equal(blurred[i], halves[rel][1])
    with h5py.File(out, "r") as f:
        ds = f["train_data_full"]
        assert ds.chunks == (1, H, W, 3) and ds.maxshape == (None, H, W, 3)
        assert ds.compression is None


def test_resize_is_lanczos_of_each_half(tmp_path):
    jpeg_dir = tmp_path / "pairs"
    halves = _sbs_tree(jpeg_dir, {"train": ["a.png"], "test": ["b.png"]})
    out = tmp_path / "data.h5"
    build_hdf5(jpeg_dir, out, BuildOptions(size=7, workers=1), progress=False)
    data = _read(out)
    left, right = halves["train/a.png"]
    lanczos = Image.Resampling.LANCZOS
    want = [np.asarray(Image.fromarray(x).resize((7, 7), lanczos)) for x in (left, right)]
    assert data["train_data_full"].shape == (1, 7, 7, 3)
    np.testing.assert_array_equal(data["train_data_full"][0], want[0])
    np.testing.assert_array_equal(data["train_data_blur"][0], want[1])


def test_blur_sharp_order_swaps_halves(tmp_path):
    jpeg_dir = tmp_path / "pairs"
    halves = _sbs_tree(jpeg_dir, {"train": ["a.png"], "test": ["b.png"]})
    out = tmp_path / "data.h5"
    build_hdf5(jpeg_dir, out, BuildOptions(native=True, order="blur-sharp", workers=1),
               progress=False)
    data = _read(out)
    left, right = halves["test/b.png"]
    np.testing.assert_array_equal(data["test_data_full"][0], right)
    np.testing.assert_array_equal(data["test_data_blur"][0], left)
    with h5py.File(out, "r") as f:
        assert f.attrs["order"] == "blur-sharp"


def test_odd_width_drops_middle_column_with_warning(tmp_path):
    jpeg_dir = tmp_path / "pairs"
    left, right = noise_image(1, H, W), noise_image(2, H, W)
    middle = np.full((H, 1, 3), 7, np.uint8)
    for split in ("train", "test"):
        path = jpeg_dir / split / "odd.png"
        path.parent.mkdir(parents=True)
        Image.fromarray(np.concatenate([left, middle, right], axis=1)).save(path)
    out = tmp_path / "data.h5"
    with pytest.warns(UserWarning, match="odd width"):
        report = build_hdf5(jpeg_dir, out, BuildOptions(native=True, workers=1), progress=False)
    data = _read(out)
    assert data["train_data_full"].shape == (1, H, W, 3)
    np.testing.assert_array_equal(data["train_data_full"][0], left)
    np.testing.assert_array_equal(data["train_data_blur"][0], right)
    assert ("train/odd.png", f"odd width {2 * W + 1}: middle column dropped") in report.notes


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_gopro_layout_pairs_by_name_and_reports_unmatched(tmp_path):
    root = tmp_path / "gopro"
    pixels = {}
    for split, scenes in (("train", ["S1", "S2"]), ("test", ["T1"])):
        for scene in scenes:
            for name in ("001.png", "002.png"):
                seed = len(pixels) * 2
                sharp, blurred = noise_image(seed, H, W), noise_image(seed + 1, H, W)
                _save(root / split / scene / "sharp" / name, sharp)
                _save(root / split / scene / "blur" / name, blurred)
                pixels[f"{split}/{scene}/{name}"] = (sharp, blurred)
    _save(root / "train/S1/sharp/lonely.png", noise_image(90, H, W))
    _save(root / "train/S2/blur/orphan.png", noise_image(91, H, W))
    _save(root / "train/S2/blur_gamma/001.png", noise_image(92, H, W))  # GOPRO extra, not used

    out = tmp_path / "data.h5"
    report = build_hdf5(root, out, BuildOptions(native=True, workers=1), progress=False)
    assert report.layout == "paired"
    assert report.counts == {"train": 4, "test": 2}
    assert sorted(report.skipped) == [
        ("train/S1/sharp/lonely.png", "no blurred partner train/S1/blur/lonely.png"),
        ("train/S2/blur/orphan.png", "no sharp partner train/S2/sharp/orphan.png"),
    ]
    data = _read(out)
    rows = _sources(data, "train")
    assert rows[0] == ("train/S1/sharp/001.png", "train/S1/blur/001.png")
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    for i, (sharp_rel, blur_rel) in enumerate(rows):
        scene, name = sharp_rel.split("/")[1], sharp_rel.split("/")[-1]
        sharp, blurred = pixels[f"train/{scene}/{name}"]
        np.testing.assert_array_equal(data["train_data_full"][i], sharp)
        np.testing.assert_array_equal(data["train_data_blur"][i], blurred)
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["skipped"]) == [list(x) for x in report.skipped]


def test_pix2pix_layout_a_is_blurred_b_is_sharp(tmp_path):
    root = tmp_path / "ab"
    sharp, blurred = noise_image(5, H, W), noise_image(6, H, W)
    for split in ("train", "test"):
        _save(root / split / "A" / "x.png", blurred)
        _save(root / split / "B" / "x.png", sharp)
    out = tmp_path / "data.h5"
    report = build_hdf5(root, out, BuildOptions(native=True, layout="paired", workers=1),
                        progress=False)
    data = _read(out)
    np.testing.assert_array_equal(data["test_data_full"][0], sharp)
    np.testing.assert_array_equal(data["test_data_blur"][0], blurred)
    assert _sources(data, "test") == [("test/B/x.png", "test/A/x.png")]
    assert report.layout == "paired"
    with pytest.raises(DgfError, match="side-by-side images only"):
        build_hdf5(root, tmp_path / "o.h5", BuildOptions(order="blur-sharp", workers=1),
                   progress=False)
    with pytest.raises(DgfError, match="no paired folders"):
        sbs = tmp_path / "sbs"
        _sbs_tree(sbs, {"train": ["a.png"], "test": ["b.png"]})
        build_hdf5(sbs, tmp_path / "p.h5", BuildOptions(layout="paired", workers=1),
                   progress=False)


def test_paired_size_mismatch_is_skipped_with_reason(tmp_path):
    root = tmp_path / "ab"
    for split in ("train", "test"):
        _save(root / split / "A" / "ok.png", noise_image(1, H, W))
        _save(root / split / "B" / "ok.png", noise_image(2, H, W))
    _save(root / "train/A/bad.png", noise_image(3, 8, 8))
    _save(root / "train/B/bad.png", noise_image(4, H, W))
    report = build_hdf5(root, tmp_path / "d.h5", BuildOptions(size=8, workers=1), progress=False)
    assert report.counts["train"] == 1
    assert report.skipped == [
        ("train/A/bad.png", f"blurred is 8x8 but its sharp partner train/B/bad.png is {W}x{H}")
    ]


def test_val_split_is_written_when_present(tmp_path):
    jpeg_dir = tmp_path / "pairs"
    _sbs_tree(jpeg_dir, {"train": ["a.png"], "test": ["b.png"], "val": ["c.png", "d.png"]})
    out = tmp_path / "data.h5"
    report = build_hdf5(jpeg_dir, out, BuildOptions(size=8, workers=1), progress=False)
    assert report.counts == {"train": 1, "test": 1, "val": 2}
    desc = describe(out)
    assert desc.splits["val"] == schema.SplitInfo(2, 8, 8)
    assert desc.attrs["val_count"] == 2 and desc.attrs["splits"] == ["train", "test", "val"]


def test_draft_decoding_keeps_halves_apart(tmp_path):
    # A large JPEG whose halves are flat, very different colours: draft scaling must
    # neither swap nor blend them, and must stay close to the full decode.
    left = np.zeros((256, 512, 3), np.uint8) + np.array([200, 30, 30], np.uint8)
    right = np.zeros((256, 512, 3), np.uint8) + np.array([20, 40, 220], np.uint8)
    path = tmp_path / "big.jpg"
    save_side_by_side(path, left, right, quality=95)
    pair = sources.PairSource(path, path, "big.jpg", "big.jpg")
    fast = sources.decode_pair(pair, 32, draft=True)
    full = sources.decode_pair(pair, 32, draft=False)
    assert fast[0].shape == fast[1].shape == (32, 32, 3)
    assert np.abs(fast[0].astype(int) - [200, 30, 30]).max() <= 4
    assert np.abs(fast[1].astype(int) - [20, 40, 220]).max() <= 4
    assert np.abs(fast[0].astype(int) - full[0]).mean() < 2
    assert np.abs(fast[1].astype(int) - full[1]).mean() < 2


# --- bad input ----------------------------------------------------------------
def _corrupt(path: Path) -> None:
    junk = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)
    path.write_bytes(b"\xff\xd8\xff\xe0" + junk.tobytes())


def _truncated(path: Path) -> None:
    save_side_by_side(path, noise_image(1, 64, 64), noise_image(2, 64, 64), quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_FILES = {
    "corrupt.jpg": (_corrupt, "corrupt or truncated image"),
    "truncated.jpg": (_truncated, "corrupt or truncated image"),
    "empty.jpg": (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    "text.png": (lambda p: p.write_text("hello, not a picture"), "not an image"),
    "bomb.png": (lambda p: png_header_only(p, 20_000, 20_000), "decompression bomb"),
    "bomb_warning.png": (lambda p: png_header_only(p, 10_000, 10_000), "decompression bomb"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_is_skipped_with_reason_or_fails(tmp_path, name):
    make, reason = BAD_FILES[name]
    jpeg_dir = tmp_path / "pairs"
    _sbs_tree(jpeg_dir, {"train": ["a.png", "c.png"], "test": ["t.png"]})
    make(jpeg_dir / "train" / name)
    out = tmp_path / "data.h5"
    report = build_hdf5(jpeg_dir, out, BuildOptions(size=8, workers=1), progress=False)
    assert report.counts == {"train": 2, "test": 1}
    assert len(report.skipped) == 1
    path, why = report.skipped[0]
    assert path == f"train/{name}" and reason in why
    data = _read(out)
    assert data["train_data_full"].shape == (2, 8, 8, 3)  # shrunk from 3 candidates
    assert _sources(data, "train") == [("train/a.png",) * 2, ("train/c.png",) * 2]
    assert f"train/{name}" in report.summary() and reason in report.summary()

    with pytest.raises(DgfError, match=re.escape(f"train/{name}: {reason}") + ".*--on-error skip"):
        build_hdf5(jpeg_dir, tmp_path / "f.h5", BuildOptions(size=8, on_error="fail", workers=1),
                   progress=False)
    assert not (tmp_path / "f.h5").exists() and _no_temp_files(tmp_path)


def test_every_file_bad_is_an_error(tmp_path):
    jpeg_dir = tmp_path / "pairs"
    _sbs_tree(jpeg_dir, {"train": ["a.png"]})
    (jpeg_dir / "test").mkdir()
    (jpeg_dir / "test" / "x.jpg").write_bytes(b"")
    with pytest.raises(DgfError, match=r"every file of split 'test' is unusable.*test/x.jpg"):
        build_hdf5(jpeg_dir, tmp_path / "d.h5", BuildOptions(size=8, workers=1), progress=False)
    assert not (tmp_path / "d.h5").exists() and _no_temp_files(tmp_path)


def _mode_case(mode: str) -> tuple[Image.Image, np.ndarray]:
    """An image in ``mode`` and the RGB pixels it must become."""
    g = np.random.default_rng(3).integers(0, 256, (H, 2 * W), dtype=np.uint8)
    if mode == "L":
        return Image.fromarray(g), np.repeat(g[..., None], 3, axis=2)
    if mode == "LA":
        im = Image.merge("LA", [Image.fromarray(g), Image.fromarray(255 - g)])
        return im, np.repeat(g[..., None], 3, axis=2)
    if mode == "RGBA":
        rgba = np.random.default_rng(4).integers(0, 256, (H, 2 * W, 4), dtype=np.uint8)
        return Image.fromarray(rgba), rgba[..., :3]  # alpha dropped, colour kept
    if mode == "P":
        palette = np.random.default_rng(5).integers(0, 256, (256, 3), dtype=np.uint8)
        im = Image.fromarray(g, mode="L").convert("P")  # make a P image, then set pixels
        im.putpalette(palette.tobytes())
        im.frombytes(g.tobytes())
        return im, palette[g]
    if mode == "I;16":
        wide = np.random.default_rng(6).integers(0, 65536, (H, 2 * W), dtype=np.uint16)
        wide[0, :4] = [0, 65535, 1000, 32896]
        want = np.round(wide.astype(np.float64) * 255 / 65535).astype(np.uint8)
        return Image.fromarray(wide), np.repeat(want[..., None], 3, axis=2)
    raise ValueError(mode)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16"])
def test_modes_convert_to_rgb(tmp_path, mode):
    im, want = _mode_case(mode)
    jpeg_dir = tmp_path / "pairs"
    for split in ("train", "test"):
        (jpeg_dir / split).mkdir(parents=True)
        im.save(jpeg_dir / split / "m.png")
    assert Image.open(jpeg_dir / "train" / "m.png").mode == mode
    out = tmp_path / "data.h5"
    build_hdf5(jpeg_dir, out, BuildOptions(native=True, workers=1), progress=False)
    data = _read(out)
    np.testing.assert_array_equal(data["train_data_full"][0], want[:, :W])
    np.testing.assert_array_equal(data["train_data_blur"][0], want[:, W:])
    if mode == "I;16":  # scaled, not clipped: 1000 -> 4, not 255
        assert list(data["train_data_full"][0, 0, :4, 0]) == [0, 255, 4, 128]


def test_cmyk_jpeg_converts_to_rgb(tmp_path):
    jpeg_dir = tmp_path / "pairs"
    cmyk = np.zeros((16, 32, 4), np.uint8)
    cmyk[:, :16] = [0, 255, 255, 0]  # red
    cmyk[:, 16:] = [255, 0, 0, 0]  # cyan
    for split in ("train", "test"):
        (jpeg_dir / split).mkdir(parents=True)
        Image.fromarray(cmyk, mode="CMYK").save(jpeg_dir / split / "c.jpg", quality=100)
    out = tmp_path / "data.h5"
    build_hdf5(jpeg_dir, out, BuildOptions(native=True, workers=1), progress=False)
    data = _read(out)
    assert np.abs(data["train_data_full"][0].astype(int) - [255, 0, 0]).max() <= 3
    assert np.abs(data["train_data_blur"][0].astype(int) - [0, 255, 255]).max() <= 3


def test_missing_dir_split_and_empty_split_are_errors(tmp_path):
    # The output's folder does not exist yet: a build creates it, so a failed check
    # that still left it behind would show here.
    fresh = tmp_path / "out" / "d.h5"
    with pytest.raises(DgfError, match="no such folder"):
        build_hdf5(tmp_path / "nope", fresh, progress=False)
    root = tmp_path / "pairs"
    _sbs_tree(root, {"train": ["a.png"]})
    with pytest.raises(DgfError, match="no 'test' folder"):
        build_hdf5(root, fresh, progress=False)
    (root / "test").mkdir()
    with pytest.raises(DgfError, match="test: empty split"):
        build_hdf5(root, fresh, progress=False)
    assert not (tmp_path / "out").exists()
    # An old output about to be replaced stays as it was.
    old = tmp_path / "d.h5"
    old.write_bytes(b"old output")
    with pytest.raises(DgfError, match="test: empty split"):
        build_hdf5(root, old, overwrite=True, progress=False)
    assert old.read_bytes() == b"old output" and _no_temp_files(tmp_path)


@pytest.mark.parametrize("kwargs,message", [
    ({"size": 0}, "size must be a positive integer .*got 0"),
    ({"size": 2.5}, "size must be a positive integer .*got 2.5"),
    ({"order": "up-down"}, "unknown order 'up-down'; choose sharp-blur or blur-sharp"),
    ({"compression": "zip"}, "unknown compression 'zip'; choose none, lzf, gzip"),
    ({"on_error": "ignore"}, "unknown on_error 'ignore'; choose skip or fail"),
    ({"workers": 0}, "workers must be 1 or more; got 0"),
])
def test_bad_build_options_are_rejected_when_made(kwargs, message):
    with pytest.raises(DgfError, match=message):
        BuildOptions(**kwargs)


def test_build_options_size_is_not_checked_for_native_builds_and_workers_default_to_cores():
    assert BuildOptions(size=0, native=True).native
    assert BuildOptions(workers=3).worker_count == 3
    assert BuildOptions().worker_count == host.cores()


def test_native_size_mismatch_names_the_file_and_size(tmp_path):
    root = tmp_path / "pairs"
    _sbs_tree(root, {"train": ["a.png", "b.png", "d.png"], "test": ["t.png"]})
    save_side_by_side(root / "train" / "c.png", noise_image(1, 10, 9), noise_image(2, 10, 9))
    odd = rf"train/c\.png: its images are 9x10 but 3 of 4 pairs .* {W}x{H}"
    with pytest.raises(DgfError, match=odd):
        build_hdf5(root, tmp_path / "d.h5", BuildOptions(native=True, workers=1), progress=False)
    assert not (tmp_path / "d.h5").exists() and _no_temp_files(tmp_path)


def test_existing_output_needs_overwrite_and_is_left_untouched(tmp_path):
    root = tmp_path / "pairs"
    _sbs_tree(root, {"train": ["a.png"], "test": ["b.png"]})
    out = tmp_path / "data.h5"
    out.write_bytes(b"precious old file")
    with pytest.raises(DgfError, match="already exists; pass --overwrite"):
        build_hdf5(root, out, BuildOptions(size=8, workers=1), progress=False)
    assert out.read_bytes() == b"precious old file"
    build_hdf5(root, out, BuildOptions(size=8, workers=1), overwrite=True, progress=False)
    assert describe(out).splits["train"].count == 1


# --- never lose data ------------------------------------------------------------
def test_interrupt_mid_build_keeps_old_output(tmp_path, monkeypatch):
    root = tmp_path / "pairs"
    _sbs_tree(root, {"train": [f"{i}.png" for i in range(6)], "test": ["t.png"]})
    out = tmp_path / "data.h5"
    build_hdf5(root, out, BuildOptions(size=8, workers=1), progress=False)
    old = out.read_bytes()

    real = sources.decode_pair
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("interrupted while decoding the third pair")
        return real(*args, **kwargs)

    monkeypatch.setattr(sources, "decode_pair", flaky)
    with pytest.raises(KeyboardInterrupt, match="interrupted while decoding the third pair"):
        build_hdf5(root, out, BuildOptions(size=16, workers=1), overwrite=True, progress=False)
    assert len(calls) == 3
    assert out.read_bytes() == old
    assert _no_temp_files(tmp_path)


@pytest.mark.slow
def test_sigkill_mid_build_keeps_old_output(tmp_path):
    root = tmp_path / "pairs"
    big = tmp_path / "big.jpg"
    save_side_by_side(big, noise_image(1, 768, 1024), noise_image(2, 768, 1024), quality=90)
    for split, n in (("train", 300), ("test", 2)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            os.link(big, root / split / f"{i:04d}.jpg")
    out = tmp_path / "data.h5"
    out.write_bytes(b"old output")
    code = (
        "import sys; from dgf.cli import build_hdf5_main; "
        "sys.exit(build_hdf5_main(sys.argv[1:]))"
    )
    cmd = [sys.executable, "-c", code, str(root), "-o", str(out), "--native",
           "--workers", "1", "--overwrite", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while _no_temp_files(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # let it write a few pairs into the temporary file
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert out.read_bytes() == b"old output"
    left = [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert left == [temp_path(out, proc.pid).name]  # only ever under the temporary name


# --- determinism, compression, attributes, compatibility -------------------------
@pytest.fixture
def jpeg_tree(tmp_path) -> Path:
    root = tmp_path / "pairs"
    for split, n in (("train", 13), ("test", 5)):
        for i in range(n):
            sharp, blurred = noise_image(i, 24, 32), noise_image(i + 50, 24, 32)
            save_side_by_side(root / split / f"{i}.jpg", sharp, blurred, quality=92)
    (root / "train" / "9.jpg").write_bytes(b"broken")
    return root


@pytest.mark.parametrize("shape", [{"size": 16}, {"native": True}])
def test_workers_do_not_change_the_result(jpeg_tree, tmp_path, shape):
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    r1 = build_hdf5(jpeg_tree, one, BuildOptions(workers=1, **shape), progress=False)
    r2 = build_hdf5(jpeg_tree, two, BuildOptions(workers=2, **shape), progress=False)
    assert r1.counts == r2.counts == {"train": 12, "test": 5}
    assert r1.skipped == r2.skipped == [("train/9.jpg", "not an image Pillow can read")]
    a, b = _read(one), _read(two)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compression_stores_the_same_pixels(jpeg_tree, tmp_path, compression):
    plain, packed = tmp_path / "plain.h5", tmp_path / f"{compression}.h5"
    build_hdf5(jpeg_tree, plain, BuildOptions(size=16, workers=1), progress=False)
    build_hdf5(jpeg_tree, packed, BuildOptions(size=16, compression=compression, workers=2),
               progress=False)
    a, b = _read(plain), _read(packed)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    with h5py.File(packed, "r") as f:
        assert f["train_data_full"].compression == compression
        assert f.attrs["compression"] == compression


def test_attributes_describe_the_build(jpeg_tree, tmp_path):
    out = tmp_path / "data.h5"
    build_hdf5(jpeg_tree, out, BuildOptions(size=16, workers=1), progress=False)
    desc = describe(out)
    import dgf

    assert desc.attrs["schema_version"] == schema.SCHEMA_VERSION
    assert desc.size == 16 and desc.attrs["size"] == 16
    assert desc.attrs["layout"] == "side-by-side" and desc.attrs["order"] == "sharp-blur"
    assert desc.attrs["train_count"] == 12 and desc.attrs["test_count"] == 5
    assert desc.attrs["splits"] == ["train", "test"]
    assert desc.attrs["dgf_version"] == dgf.__version__
    assert desc.attrs["skipped"] == [["train/9.jpg", "not an image Pillow can read"]]
    info = schema.SplitInfo
    assert desc.splits == {"train": info(12, 16, 16), "test": info(5, 16, 16)}

    native = tmp_path / "native.h5"
    build_hdf5(jpeg_tree, native, BuildOptions(native=True, workers=1), progress=False)
    assert describe(native).attrs["size"] == "native" and describe(native).size is None


def test_seed_style_file_is_readable(tmp_path):
    out = tmp_path / "seed.h5"
    rng = np.random.default_rng(0)
    with h5py.File(out, "w") as f:
        for split, n in (("train", 3), ("test", 2)):
            full = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(n)]
            blur = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(n)]
            f.create_dataset(f"{split}_data_full", data=np.array(full))
            f.create_dataset(f"{split}_data_blur", data=np.array(blur))
    with h5py.File(out, "r") as f:
        assert f["train_data_full"].chunks is None and not f.attrs
        assert schema.check_split(f, "train", out) == schema.SplitInfo(3, 8, 8)
    desc = describe(out)
    assert desc.splits == {"train": schema.SplitInfo(3, 8, 8), "test": schema.SplitInfo(2, 8, 8)}
    assert desc.attrs == {} and desc.size is None


def test_describe_rejects_non_hdf5(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_text("nope")
    with pytest.raises(DgfError, match=r"x\.h5: not an HDF5 file"):
        describe(bad)
    with pytest.raises(DgfError, match="no such file"):
        describe(tmp_path / "missing.h5")
    with pytest.raises(DgfError, match="is a directory"):
        describe(tmp_path)


@pytest.mark.slow
def test_real_pairs_build(pairs_small, tmp_path):
    out = tmp_path / "data.h5"
    report = build_hdf5(pairs_small, out, BuildOptions(workers=2), progress=False)
    assert report.counts == {"train": 540, "test": 64} and report.skipped == []
    with h5py.File(out, "r") as f:
        rel = f["train_source"][0, 0].decode()
        sharp, blurred = f["train_data_full"][0], f["train_data_blur"][0]
    im = np.asarray(Image.open(pairs_small / rel).convert("RGB"))
    assert im.shape == (256, 512, 3)  # halves are already 256x256: stored as decoded
    np.testing.assert_array_equal(sharp, im[:, :256])
    np.testing.assert_array_equal(blurred, im[:, 256:])


# --- CLI ------------------------------------------------------------------------
def test_cli_builds_and_prints_summary(jpeg_tree, tmp_path, capsys):
    out = tmp_path / "cli" / "data.h5"
    rc = build_hdf5_main(
        [str(jpeg_tree), "-o", str(out), "--size", "16", "--workers", "1", "--no-progress"]
    )
    printed = capsys.readouterr().out
    assert rc == 0
    assert "train: 12 pairs" in printed and "test:  5 pairs" in printed
    assert "train/9.jpg: not an image Pillow can read" in printed
    assert describe(out).splits["train"] == schema.SplitInfo(12, 16, 16)


def test_cli_reports_bad_input_with_status_2(tmp_path, capsys):
    rc = build_hdf5_main([str(tmp_path / "missing"), "-o", str(tmp_path / "d.h5")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "missing: no such folder" in err


# --- GOPRO's blur / blur_gamma folders and pairs lists ---------------------------
def _gopro_tree(root: Path, lacking_gamma: str = "train/S2") -> dict[str, dict[str, np.ndarray]]:
    """GOPRO_Large-like: SPLIT/SCENE/{sharp,blur,blur_gamma}/NNNNNN.png, each folder
    with its own pixels; the scene ``lacking_gamma`` has no blur_gamma folder.
    Returns {"SPLIT/SCENE/NAME": {folder: pixels}}."""
    pixels: dict[str, dict[str, np.ndarray]] = {}
    for split, scenes in (("train", ["S1", "S2"]), ("test", ["T1"])):
        for scene in scenes:
            for name in ("000001.png", "000002.png"):
                key = f"{split}/{scene}/{name}"
                pixels[key] = {}
                for k, folder in enumerate(("sharp", "blur", "blur_gamma")):
                    if folder == "blur_gamma" and f"{split}/{scene}" == lacking_gamma:
                        continue
                    image = noise_image(zlib.crc32(f"{key}/{folder}".encode()), H, W)
                    _save(root / split / scene / folder / name, image)
                    pixels[key][folder] = image
    return pixels


def _assert_blurred_from(out: Path, split: str, pixels: dict, folder: str) -> None:
    data = _read(out)
    for i, (sharp_rel, blur_rel) in enumerate(_sources(data, split)):
        parts = sharp_rel.split("/")
        key = f"{parts[0]}/{parts[1]}/{parts[-1]}"
        assert blur_rel == f"{parts[0]}/{parts[1]}/{folder}/{parts[-1]}"
        np.testing.assert_array_equal(data[schema.sharp_name(split)][i], pixels[key]["sharp"])
        np.testing.assert_array_equal(data[schema.blurred_name(split)][i], pixels[key][folder])


def test_gopro_blur_folder_chooses_the_blurred_side(tmp_path, capsys):
    root = tmp_path / "GOPRO_Large"
    pixels = _gopro_tree(root)
    plain = tmp_path / "blur.h5"
    report = build_hdf5(root, plain, BuildOptions(native=True, workers=1), progress=False)
    assert report.counts == {"train": 4, "test": 2} and report.skipped == []
    _assert_blurred_from(plain, "train", pixels, "blur")
    _assert_blurred_from(plain, "test", pixels, "blur")
    assert describe(plain).attrs["blur_folder"] == "blur"

    gamma = tmp_path / "gamma.h5"
    rc = build_hdf5_main([str(root), "-o", str(gamma), "--native", "--blur-folder",
                          "blur_gamma", "--workers", "1", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0
    reason = (
        "no 'blur_gamma' folder beside its 'sharp' folder (it has: blur, sharp); "
        "its 2 sharp image(s) are left out"
    )
    assert f"train/S2: {reason}" in printed and "blurred from SCENE/blur_gamma" in printed
    desc = describe(gamma)
    assert desc.attrs["blur_folder"] == "blur_gamma" and desc.attrs["layout"] == "paired"
    assert desc.attrs["train_count"] == 2 and desc.attrs["test_count"] == 2
    assert desc.attrs["skipped"] == [["train/S2", reason]]
    _assert_blurred_from(gamma, "train", pixels, "blur_gamma")
    _assert_blurred_from(gamma, "test", pixels, "blur_gamma")


def test_gopro_scene_without_blur_is_skipped_with_reason(tmp_path):
    root = tmp_path / "gopro"
    _gopro_tree(root, lacking_gamma="")
    shutil.rmtree(root / "train" / "S1" / "blur")
    report = build_hdf5(root, tmp_path / "d.h5", BuildOptions(size=8, workers=1), progress=False)
    assert report.counts == {"train": 2, "test": 2}
    assert report.skipped == [(
        "train/S1",
        "no 'blur' folder beside its 'sharp' folder (it has: blur_gamma, sharp); "
        "its 2 sharp image(s) are left out",
    )]


def test_blur_folder_bad_input(tmp_path):
    only_blur = tmp_path / "only_blur"
    _gopro_tree(only_blur, lacking_gamma="")
    for scene in ("train/S1", "train/S2", "test/T1"):
        shutil.rmtree(only_blur / scene / "blur_gamma")
    with pytest.raises(DgfError, match=r"train: no scene has a 'blur_gamma' folder beside "
                       r"its 'sharp' folder \(2 scene\(s\) lack it; train/S1: .*"
                       r"Choose another --blur-folder \(blur, blur_gamma\)"):
        build_hdf5(only_blur, tmp_path / "d.h5", BuildOptions(blur_folder="blur_gamma", workers=1),
                   progress=False)
    sbs = tmp_path / "sbs"
    _sbs_tree(sbs, {"train": ["a.png"], "test": ["b.png"]})
    with pytest.raises(DgfError, match="--blur-folder blur_gamma applies to GOPRO-style"):
        build_hdf5(sbs, tmp_path / "d.h5", BuildOptions(blur_folder="blur_gamma"), progress=False)
    with pytest.raises(DgfError, match="unknown blur folder 'gamma'"):
        build_hdf5(sbs, tmp_path / "d.h5", BuildOptions(blur_folder="gamma"), progress=False)
    build_hdf5(sbs, tmp_path / "s.h5", BuildOptions(size=8, workers=1), progress=False)
    assert "blur_folder" not in describe(tmp_path / "s.h5").attrs  # no GOPRO folders used
    assert not (tmp_path / "d.h5").exists()


# --- the GoPro trap: resizing far from the pairs' own size is said, once ------------
def _scene_tree(root: Path, height: int, width: int) -> None:
    """GOPRO_Large-like SPLIT/SCENE/{sharp,blur}/NNNNNN.png pairs of one size."""
    for split, scenes in (("train", ["S1", "S2"]), ("test", ["T1"])):
        for scene in scenes:
            for name in ("000001.png", "000002.png", "000003.png"):
                seed = zlib.crc32(f"{split}/{scene}/{name}".encode())
                for k, folder in enumerate(("sharp", "blur")):
                    _save(root / split / scene / folder / name,
                          noise_image(seed + k, height, width))


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


def test_resizing_far_from_the_pairs_size_warns_once(tmp_path, capsys):
    root = tmp_path / "GOPRO_Large"
    _scene_tree(root, 70, 100)  # 100 > 2 x 32: the 1280x720 -> 256x256 trap, shrunk
    out = tmp_path / "d.h5"
    rc = build_hdf5_main([str(root), "-o", str(out), "--size", "32", "--workers", "2",
                          "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert _warnings(captured.err) == [
        "warning: 9 of 9 pairs differ from the 32x32 target by more than 2x (e.g. "
        "train/S1/sharp/000001.png is 100x70) and are resized to 32x32; use --native to "
        "keep native resolution (training takes random crops) or --size N to choose the "
        "target"
    ]
    assert "warning" not in captured.out  # the summary is unchanged
    assert describe(out).splits["train"] == schema.SplitInfo(6, 32, 32)

    # Upscaling more than 2x is the same trap: one line, naming a pair too small.
    small = tmp_path / "small"
    _sbs_tree(small, {"train": ["a.png", "b.png"], "test": ["c.png"]})  # 16x12 halves
    rc = build_hdf5_main([str(small), "-o", str(tmp_path / "s.h5"), "--size", "32",
                          "--workers", "1", "--no-progress"])
    lines = _warnings(capsys.readouterr().err)
    assert rc == 0 and len(lines) == 1
    assert lines[0].startswith("warning: 3 of 3 pairs differ from the 32x32 target by more "
                               "than 2x (e.g. train/a.png is 16x12)")


def test_native_build_of_large_pairs_does_not_warn(tmp_path, capsys):
    root = tmp_path / "GOPRO_Large"
    _scene_tree(root, 70, 100)
    out = tmp_path / "d.h5"
    rc = build_hdf5_main([str(root), "-o", str(out), "--native", "--workers", "1",
                          "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0 and _warnings(captured.err) == [], captured.err
    assert describe(out).splits["train"] == schema.SplitInfo(6, 70, 100)


def test_resizing_within_2x_does_not_warn(tmp_path, capsys):
    root = tmp_path / "pairs"
    _scene_tree(root, 16, 64)  # exactly 2x wider and half as tall as 32: within 2x
    rc = build_hdf5_main([str(root), "-o", str(tmp_path / "d.h5"), "--size", "32",
                          "--workers", "1", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0 and _warnings(captured.err) == [], captured.err


def _realblur_tree(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """RealBlur-like: sceneN/{gt,blur}/ images and list files at the root, "gt blur"
    per line, test list not sorted. Returns {gt path: (gt pixels, blur pixels)}."""
    pixels = {}
    for n in (1, 2, 3):
        for i in (1, 2):
            gt, blur = f"scene{n}/gt/gt_{i}.png", f"scene{n}/blur/blur_{i}.png"
            seed = 10 * n + i
            pixels[gt] = (noise_image(seed, H, W), noise_image(seed + 100, H, W))
            _save(root / gt, pixels[gt][0])
            _save(root / blur, pixels[gt][1])
    (root / "RealBlur_J_train_list.txt").write_text(
        "scene1/gt/gt_1.png scene1/blur/blur_1.png\n"
        "scene1/gt/gt_2.png scene1/blur/blur_2.png\n"
        "\n"
        "scene2/gt/gt_1.png scene2/blur/blur_9.png\n"  # line 4: no such blurred file
        "scene2/gt/gt_2.png\tscene2/blur/blur_2.png\n"
    )
    (root / "RealBlur_J_test_list.txt").write_text(
        "scene3/gt/gt_2.png scene3/blur/blur_2.png\r\n"
        "scene3/gt/gt_1.png scene3/blur/blur_1.png\r\n"
    )
    return pixels


def test_pairs_list_reads_realblur_lists_in_their_order(tmp_path, capsys):
    root = tmp_path / "RealBlur"
    pixels = _realblur_tree(root)
    train, test = root / "RealBlur_J_train_list.txt", root / "RealBlur_J_test_list.txt"
    out = tmp_path / "realblur.h5"
    rc = build_hdf5_main(["--pairs-list", f"train={train}", "--pairs-list", f"test={test}",
                          "-o", str(out), "--native", "--workers", "1", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0, capsys.readouterr().err
    skipped = ("scene2/blur/blur_9.png",
               "no such file, named on line 4 of RealBlur_J_train_list.txt")
    assert f"{skipped[0]}: {skipped[1]}" in printed
    desc = describe(out)
    assert desc.attrs["layout"] == "pairs-list" and desc.attrs["order"] == "sharp-blur"
    assert desc.attrs["pairs_lists"] == {"train": str(train), "test": str(test)}
    assert desc.attrs["skipped"] == [list(skipped)] and "blur_folder" not in desc.attrs
    assert desc.splits["train"].count == 3 and desc.splits["test"].count == 2
    data = _read(out)
    assert _sources(data, "test") == [  # the list's order, not sorted
        ("scene3/gt/gt_2.png", "scene3/blur/blur_2.png"),
        ("scene3/gt/gt_1.png", "scene3/blur/blur_1.png"),
    ]
    assert [r[0] for r in _sources(data, "train")] == [
        "scene1/gt/gt_1.png", "scene1/gt/gt_2.png", "scene2/gt/gt_2.png"]
    for split in ("train", "test"):
        for i, (gt, _) in enumerate(_sources(data, split)):
            np.testing.assert_array_equal(data[schema.sharp_name(split)][i], pixels[gt][0])
            np.testing.assert_array_equal(data[schema.blurred_name(split)][i], pixels[gt][1])


def test_pairs_list_blur_sharp_order_and_relative_to_list_folder(tmp_path):
    root = tmp_path / "data"
    pixels = _realblur_tree(root)
    lists = tmp_path / "lists"
    lists.mkdir()
    for split, gts in (("train", ["scene1/gt/gt_1.png"]), ("test", ["scene3/gt/gt_2.png"])):
        lines = [f"../data/{gt.replace('gt', 'blur')} ../data/{gt}" for gt in gts]
        (lists / f"{split}.txt").write_text("# blurred then sharp\n" + "\n".join(lines))
    out = tmp_path / "d.h5"
    build_hdf5(None, out,
               BuildOptions(pairs_lists={"train": lists / "train.txt", "test": lists / "test.txt"},
                            order="blur-sharp", native=True, workers=1), progress=False)
    data = _read(out)
    assert _sources(data, "test") == [("../data/scene3/gt/gt_2.png",
                                       "../data/scene3/blur/blur_2.png")]
    np.testing.assert_array_equal(data["test_data_full"][0], pixels["scene3/gt/gt_2.png"][0])
    np.testing.assert_array_equal(data["test_data_blur"][0], pixels["scene3/gt/gt_2.png"][1])
    assert describe(out).attrs["order"] == "blur-sharp"


def test_pairs_list_bad_input(tmp_path, capsys):
    root = tmp_path / "RealBlur"
    _realblur_tree(root)
    train, test = root / "RealBlur_J_train_list.txt", root / "RealBlur_J_test_list.txt"
    out = str(tmp_path / "d.h5")

    def error(*args: str) -> str:
        rc = build_hdf5_main([*args, "-o", out, "--workers", "1", "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: "), err
        return err

    missing = tmp_path / "nope.txt"
    err = error("--pairs-list", f"train={train}", "--pairs-list", f"test={missing}")
    assert f"{missing}: no such pairs list for split 'test'" in err
    assert "one pair per line: two paths separated by whitespace, the sharp image then " \
           "the blurred one (--order sharp-blur), relative to the list file's folder" in err
    err = error("--pairs-list", f"train={train}", "--pairs-list", f"test={root}")
    assert f"{root}: is a folder, not a pairs list" in err

    one_path = root / "one.txt"
    one_path.write_text("scene3/gt/gt_1.png scene3/blur/blur_1.png\n\nscene3/gt/gt_2.png\n")
    err = error("--pairs-list", f"train={train}", "--pairs-list", f"test={one_path}",
                "--order", "blur-sharp")
    assert f"{one_path}, line 3: one path ('scene3/gt/gt_2.png'); expected two paths " \
           "separated by whitespace, the blurred image then the sharp one (--order " \
           "blur-sharp)" in err
    three = root / "three.txt"
    three.write_text("a.png b.png c.png\n")
    assert f"{three}, line 1: 3 fields; expected two paths" in error(
        "--pairs-list", f"train={train}", "--pairs-list", f"test={three}")

    assert "--pairs-list RealBlur_J_test_list.txt: expected SPLIT=FILE" in error(
        "--pairs-list", f"train={train}", "--pairs-list", "RealBlur_J_test_list.txt")
    assert "no pairs list for split 'test'" in error("--pairs-list", f"train={train}")
    assert "unknown split 'tset'" in error(
        "--pairs-list", f"train={train}", "--pairs-list", f"tset={test}")
    assert "split 'test' given twice" in error(
        "--pairs-list", f"train={train}", "--pairs-list", f"test={test}",
        "--pairs-list", f"test={test}")
    assert "give JPEG_DIR" in error(str(root), "--pairs-list", f"train={train}",
                                    "--pairs-list", f"test={test}")
    assert "no input: give JPEG_DIR" in error()
    assert "--blur-folder blur_gamma applies to GOPRO-style JPEG_DIR" in error(
        "--pairs-list", f"train={train}", "--pairs-list", f"test={test}",
        "--blur-folder", "blur_gamma")

    gone = root / "gone.txt"
    gone.write_text("x/gt.png x/blur.png\n")
    assert f"{gone}: none of its 1 pairs can be used (first: x/gt.png: no such file, " \
           "named on line 1 of gone.txt; nor is its partner x/blur.png (no such file))" in error(
        "--pairs-list", f"train={train}", "--pairs-list", f"test={gone}")
    empty = root / "empty.txt"
    empty.write_text("# nothing\n\n")
    assert f"{empty}: no pairs in this list" in error(
        "--pairs-list", f"train={train}", "--pairs-list", f"test={empty}")
    assert not Path(out).exists()
