"""dgf.images: decoding to RGB, finding image files, atomic image writes, [-1, 1]."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, features

import dgf.images
from conftest import png_header_only
from dgf.errors import DgfError, install_hint
from dgf.fileio import OutputError, temp_path
from dgf.images import (
    PHOTO_SUFFIXES,
    BadImageError,
    find_images,
    load_rgb_image,
    photo_size,
    read_image,
    read_rgb,
    to_rgb_array,
    to_uint8,
    to_unit,
    write_image,
)

ORIENTATION = 0x0112
MAKE = 0x010F


def _pattern(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- decoding ------------------------------------------------------------------
def test_exif_orientation_is_applied_and_dropped_from_the_metadata(tmp_path):
    stored = _pattern(20, 30)
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored sideways: viewers turn it 90 degrees clockwise
    exif[MAKE] = "dgf camera"
    Image.fromarray(stored).save(tmp_path / "rot.png", exif=exif)
    upright = np.rot90(stored, k=-1)
    np.testing.assert_array_equal(read_rgb(tmp_path / "rot.png"), upright)
    loaded = read_image(tmp_path / "rot.png")
    np.testing.assert_array_equal(loaded.rgb, upright)
    assert loaded.metadata["exif"].get(ORIENTATION) is None
    assert loaded.metadata["exif"].get(MAKE) == "dgf camera"  # the rest is kept


def test_pairs_are_read_as_stored_without_rotation(tmp_path):
    stored = _pattern(20, 30)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(stored).save(tmp_path / "rot.png", exif=exif)
    im, size = load_rgb_image(tmp_path / "rot.png")
    assert size == (30, 20)
    np.testing.assert_array_equal(np.asarray(im), stored)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    wide = np.array([[0, 128, 129, 257, 1000, 32896, 65534, 65535]], np.uint16)
    expected = np.array([0, 0, 1, 1, 4, 128, 255, 255], np.uint8)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    with Image.open(tmp_path / "wide.png") as im:
        assert im.mode.startswith("I")  # a 16-bit file, not silently 8-bit
        np.testing.assert_array_equal(to_rgb_array(im)[0], np.repeat(expected[:, None], 3, 1))
    for got in (read_rgb(tmp_path / "wide.png"), read_image(tmp_path / "wide.png").rgb,
                np.asarray(load_rgb_image(tmp_path / "wide.png")[0])):
        assert got.dtype == np.uint8 and got.shape == (1, 8, 3)
        np.testing.assert_array_equal(got[0, :, 0], expected)


def test_float_images_are_refused():
    with pytest.raises(ValueError, match="no fixed range"):
        to_rgb_array(Image.fromarray(np.zeros((2, 2), np.float32)))


def test_alpha_is_returned_apart_and_dropped_from_the_rgb(tmp_path):
    rgb = _pattern(6, 7, seed=1)
    alpha = np.arange(42, dtype=np.uint8).reshape(6, 7) * 6
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "a.png")
    loaded = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(loaded.rgb, rgb)  # not composited onto a background
    np.testing.assert_array_equal(loaded.alpha, alpha)
    np.testing.assert_array_equal(read_rgb(tmp_path / "a.png"), rgb)

    grey = rgb[..., 0]
    Image.fromarray(np.dstack([grey, alpha]), "LA").save(tmp_path / "la.png")
    loaded = read_image(tmp_path / "la.png")
    np.testing.assert_array_equal(loaded.rgb, np.repeat(grey[..., None], 3, 2))
    np.testing.assert_array_equal(loaded.alpha, alpha)

    Image.fromarray(rgb).save(tmp_path / "opaque.png")
    assert read_image(tmp_path / "opaque.png").alpha is None


def test_palette_transparency_becomes_alpha(tmp_path):
    indices = np.array([[0, 1], [1, 2]], np.uint8)
    im = Image.fromarray(indices, "P")
    im.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * (256 * 3 - 9))
    im.save(tmp_path / "p.png", transparency=1)
    loaded = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(loaded.alpha, [[255, 0], [0, 255]])
    np.testing.assert_array_equal(loaded.rgb[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(loaded.rgb[1, 1], [70, 80, 90])


def test_unreadable_pair_files_are_bad_image_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_bytes(b"not an image")
    with pytest.raises(BadImageError, match=r"empty\.png: empty file \(0 bytes\)"):
        load_rgb_image(tmp_path / "empty.png")
    with pytest.raises(BadImageError, match=r"text\.jpg: not an image Pillow can read"):
        load_rgb_image(tmp_path / "text.jpg")


# --- finding -------------------------------------------------------------------
def test_finder_is_recursive_sorted_and_skips_hidden_and_other_files(tmp_path):
    root = tmp_path / ".photos"  # the searched folder itself may be hidden
    names = ["b.png", "B.JPG", "a.jpeg", "sub/c.Png", "sub/deeper/d.jpg",
             ".hidden.png", ".cache/e.png", "sub/.f.tmp123.png", "notes.txt", "g.bmp"]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    (root / "folder.png").mkdir()  # an image suffix on a folder
    found = find_images(root)
    assert found == [root / n for n in ["B.JPG", "a.jpeg", "b.png", "sub/c.Png",
                                        "sub/deeper/d.jpg"]]


def test_finder_never_reads_a_half_written_output(tmp_path):
    (tmp_path / "done.png").write_bytes(b"x")
    leftover = temp_path(tmp_path / "next.png", pid=4242)  # a killed write's temp file
    leftover.write_bytes(b"partial")
    assert find_images(tmp_path) == [tmp_path / "done.png"]


def test_finder_leaves_out_the_excluded_folder(tmp_path):
    for name in ("a.png", "out/b.png", "outer/c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert find_images(tmp_path, exclude=tmp_path / "out") == [
        tmp_path / "a.png", tmp_path / "outer" / "c.png"]


# --- phone photos: formats and sizes -------------------------------------------
def _blocks(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Solid 16 px blocks of random colours: lossy codecs keep them within a few
    levels, so a wrong rotation or a lost pixel shows."""
    coarse = _pattern(-(-h // 16), -(-w // 16), seed)
    return np.repeat(np.repeat(coarse, 16, axis=0), 16, axis=1)[:h, :w]


def _can(fmt: str) -> bool:
    if fmt == "HEIF":
        return dgf.images.pillow_heif is not None
    return features.check(fmt.lower())


@pytest.mark.parametrize("suffix", [".webp", ".avif", ".heic"])
def test_phone_formats_round_trip_upright_with_exif_and_icc(tmp_path, suffix):
    fmt = PHOTO_SUFFIXES[suffix]
    if not _can(fmt):
        pytest.skip(f"this installation cannot read {fmt}")  # pillow-heif: extra heif
    stored = _blocks(48, 80)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored sideways: viewers turn it 90 degrees clockwise
    exif[MAKE] = "dgf camera"
    source = tmp_path / f"phone{suffix}"
    Image.fromarray(stored).save(source, format=fmt, exif=exif.tobytes(), icc_profile=icc,
                                 quality=95)

    loaded = read_image(source)
    upright = np.rot90(stored, k=-1).astype(int)
    assert loaded.rgb.shape == (80, 48, 3)
    assert np.abs(loaded.rgb - upright).mean() < 4  # codec error, not a wrong turn
    assert loaded.metadata["exif"].get(ORIENTATION) is None
    assert loaded.metadata["exif"].get(MAKE) == "dgf camera"
    assert loaded.metadata["icc_profile"] == icc

    out = tmp_path / f"out{suffix}"
    write_image(out, loaded.rgb, quality=95, metadata=loaded.metadata)
    with Image.open(out) as im:
        assert im.format == fmt and im.size == (48, 80)
        assert im.info["icc_profile"] == icc
        assert im.getexif().get(MAKE) == "dgf camera"
        assert im.getexif().get(ORIENTATION) in (None, 1)  # no second turn
    again = read_image(out)
    assert np.abs(again.rgb.astype(int) - loaded.rgb).mean() < 4


def test_heic_without_pillow_heif_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setattr(dgf.images, "pillow_heif", None)
    photo = tmp_path / "IMG_0001.HEIC"
    photo.write_bytes(b"\x00\x00\x00\x18ftypheic")  # never opened
    for call in (lambda: read_image(photo), lambda: photo_size(photo),
                 lambda: write_image(tmp_path / "out.heic", _pattern(4, 4))):
        with pytest.raises(DgfError, match="HEIC/HEIF needs pillow-heif") as caught:
            call()
        assert install_hint("heif") in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["IMG_0001.HEIC"]


def test_photo_size_reads_the_header_of_any_size_without_decoding(tmp_path):
    png_header_only(tmp_path / "huge.png", 30_000, 20_000)  # 600 MP, no pixel data
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        assert photo_size(tmp_path / "huge.png") == (30_000, 20_000)
    with pytest.raises(Image.DecompressionBombError, match="exceeds limit"):  # decoding's
        read_image(tmp_path / "huge.png", max_pixels=100_000_000)


def test_a_photo_under_the_limit_reads_without_pillows_bomb_warning(tmp_path, monkeypatch,
                                                                      capfd):
    # Pillow's own threshold, lowered: it warns above 500 pixels and refuses above 1000.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    rgb = _pattern(30, 40)  # 1200 pixels
    Image.fromarray(rgb).save(tmp_path / "big.png")
    with pytest.raises(Image.DecompressionBombError, match="exceeds limit"):  # as before
        read_image(tmp_path / "big.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = read_image(tmp_path / "big.png", max_pixels=1200)
    np.testing.assert_array_equal(loaded.rgb, rgb)
    assert Image.MAX_IMAGE_PIXELS == 500  # Pillow's limit is left as it was
    with pytest.raises(Image.DecompressionBombError, match="exceeds limit"):  # 1 px over
        read_image(tmp_path / "big.png", max_pixels=1199)
    assert "ecompression" not in capfd.readouterr().err


# --- writing -------------------------------------------------------------------
def test_write_image_round_trips_and_picks_the_format_by_suffix(tmp_path):
    rgb = _pattern(8, 9, seed=2)
    write_image(tmp_path / "x.png", rgb)
    np.testing.assert_array_equal(read_rgb(tmp_path / "x.png"), rgb)
    rgba = np.dstack([rgb, np.full((8, 9), 7, np.uint8)])
    write_image(tmp_path / "y.JPEG", rgba, quality=100)  # JPEG drops the alpha
    with Image.open(tmp_path / "y.JPEG") as im:
        assert im.format == "JPEG" and im.mode == "RGB"
    with pytest.raises(DgfError, match=r"z\.bmp: suffix '\.bmp' is not \.jpg, \.jpeg, "
                                       r"\.png, \.webp, \.avif, \.heic or \.heif"):
        write_image(tmp_path / "z.bmp", rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png", "y.JPEG"]


@pytest.mark.parametrize("errno,message", [
    (5, r"cannot write .*new\.png: Input/output error"),
    (28, r"no space left on device writing .*new\.png"),
])
def test_failed_write_leaves_nothing_under_the_real_name(tmp_path, monkeypatch, errno, message):
    def half_then_fail(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"half an image")
        raise OSError(errno, os.strerror(errno))

    monkeypatch.setattr(Image.Image, "save", half_then_fail)
    with pytest.raises(OutputError, match=message):
        write_image(tmp_path / "new.png", _pattern(4, 4))
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "old.png").write_bytes(b"previous image")
    with pytest.raises(OutputError, match="old.png"):
        write_image(tmp_path / "old.png", _pattern(4, 4))
    assert list(tmp_path.iterdir()) == [tmp_path / "old.png"]
    assert (tmp_path / "old.png").read_bytes() == b"previous image"


def test_interrupted_write_leaves_nothing_under_the_real_name(tmp_path, monkeypatch):
    def interrupted(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"half")
        raise KeyboardInterrupt("interrupted mid-write")

    monkeypatch.setattr(Image.Image, "save", interrupted)
    with pytest.raises(KeyboardInterrupt, match="interrupted mid-write"):
        write_image(tmp_path / "new.jpg", _pattern(4, 4))
    assert list(tmp_path.iterdir()) == []


# --- the generator's range -----------------------------------------------------
def test_to_unit_values():
    got = to_unit(np.array([0, 1, 127, 128, 255], np.uint8))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [-1.0, 1 / 127.5 - 1, 127 / 127.5 - 1, 128 / 127.5 - 1, 1.0],
                               rtol=0, atol=1e-7)


def test_to_uint8_rounds_half_to_even_clips_and_inverts_to_unit():
    # 0 -> 127.5 rounds to the even 128; 0.5 / 127.5 - 1 -> 0.5 rounds to 0.
    x = np.array([-2.0, -1.0, 0.0, 1.0, 3.0, 0.5 / 127.5 - 1, 0.6 / 127.5 - 1], np.float32)
    np.testing.assert_array_equal(to_uint8(x), [0, 0, 128, 255, 255, 0, 1])
    assert to_uint8(x).dtype == np.uint8
    every = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(to_uint8(to_unit(every)), every)
