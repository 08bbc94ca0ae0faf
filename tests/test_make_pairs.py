"""dgf-make-pairs: camera-shake kernels, blurring, pair layout, splits and errors."""
from __future__ import annotations

import io
import json
import socket
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from conftest import read_halves, textured_photo, write_photos
from dgf import synth
from dgf.cli import make_pairs_main
from dgf.errors import DgfError
from dgf.images import read_rgb as load_photo
from dgf.kernels import blur, random_kernel
from dgf.synth import MakePairsOptions, make_pairs, sample_photos


def _spread(kernel: np.ndarray) -> float:
    """Root-mean-square distance of the kernel's mass from its centre of mass."""
    yy, xx = np.mgrid[: kernel.shape[0], : kernel.shape[1]]
    cy, cx = (kernel * yy).sum(), (kernel * xx).sum()
    return float(np.sqrt((kernel * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum()))


def _reference_blur(sharp: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Independent convolution (SciPy, edge-repeating mirror) rounded to uint8."""
    out = np.stack(
        [ndimage.convolve(sharp[..., c].astype(np.float64), kernel.astype(np.float64),
                          mode="reflect") for c in range(3)],
        axis=-1,
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --- kernels ------------------------------------------------------------------
def test_kernel_is_a_normalised_spread_out_psf_centred_on_the_canvas():
    rng = np.random.default_rng(1)
    for _ in range(20):
        k = random_kernel(rng, size=31)
        assert k.shape == (31, 31) and k.dtype == np.float32
        assert k.min() >= 0
        assert abs(float(k.sum(dtype=np.float64)) - 1.0) < 1e-5
        # Not a delta: the mass is shared by many pixels.
        assert k.max() < 0.5
        assert np.count_nonzero(k > 1e-3) >= 4
        yy, xx = np.mgrid[:31, :31]
        assert abs(float((k * yy).sum()) - 15) < 1e-3
        assert abs(float((k * xx).sum()) - 15) < 1e-3


def test_strength_changes_kernel_spread():
    weak = [_spread(random_kernel(np.random.default_rng(i), 31, 0.2)) for i in range(30)]
    strong = [_spread(random_kernel(np.random.default_rng(i), 31, 1.0)) for i in range(30)]
    assert np.mean(strong) > 2.5 * np.mean(weak)
    # Same randomness, stronger shake: spread grows for nearly every kernel.
    assert np.mean(np.array(strong) > np.array(weak)) >= 0.9


def test_kernel_is_reproducible_from_the_generator_state():
    a = random_kernel(np.random.default_rng(7), 15, 0.6)
    b = random_kernel(np.random.default_rng(7), 15, 0.6)
    c = random_kernel(np.random.default_rng(8), 15, 0.6)
    assert a.shape == (15, 15)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("size,strength,message", [
    (30, 0.5, "kernel size 30 is not allowed: use an odd size of at least 3"),
    (1, 0.5, "kernel size 1 is not allowed"),
    (31, 0.0, r"strength 0\.0 is outside \(0, 1\]"),
    (31, 1.5, r"strength 1\.5 is outside \(0, 1\]"),
])
def test_kernel_rejects_bad_arguments(size, strength, message):
    with pytest.raises(DgfError, match=message):
        random_kernel(np.random.default_rng(0), size, strength)


# --- blurring -------------------------------------------------------------------
def test_blur_matches_an_independent_convolution():
    rng = np.random.default_rng(2)
    image = textured_photo(rng, 40, 56)
    kernel = random_kernel(rng, 15, 1.0)
    ours = blur(image, kernel)
    assert ours.shape == image.shape and ours.dtype == np.uint8
    diff = np.abs(ours.astype(int) - _reference_blur(image, kernel).astype(int))
    assert diff.max() <= 1  # only float rounding at exact .5 may differ
    assert (diff == 0).mean() > 0.99
    assert np.abs(ours.astype(int) - image.astype(int)).mean() > 5  # it did blur


def test_blur_orientation_and_identity():
    image = textured_photo(np.random.default_rng(3), 20, 24)
    delta = np.zeros((5, 5), np.float32)
    delta[2, 2] = 1
    np.testing.assert_array_equal(blur(image, delta), image)
    # A true convolution with mass one pixel right of centre moves content right.
    shift = np.zeros((5, 5), np.float32)
    shift[2, 3] = 1
    np.testing.assert_array_equal(blur(image, shift)[:, 1:], image[:, :-1])


def test_blur_rejects_bad_inputs():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(DgfError, match="uint8"):
        blur(image.astype(np.float32), np.ones((3, 3)) / 9)
    with pytest.raises(DgfError, match="odd"):
        blur(image, np.ones((4, 4)) / 16)


# --- make_pairs -----------------------------------------------------------------
def test_pairs_layout_split_and_blur_reconstruct_from_saved_files(tmp_path):
    # Photos 0-2 are exactly the crop size (crop = photo, borders mirrored); photo 3
    # is larger (real context around the crop); photo 4 is smaller (upscaled).
    write_photos(tmp_path / "src", [(48, 48), (48, 48), (48, 48), (70, 90), (30, 40)])
    out = tmp_path / "out"
    report = make_pairs(tmp_path / "src", out,
                        MakePairsOptions(per_image=3, size=48, kernel_size=11, strength=1.0,
                                         test_fraction=0.4, seed=5, fmt="png"), progress=False)
    train = sorted((out / "train").glob("*.png"))
    test = sorted((out / "test").glob("*.png"))
    assert report.train_pairs == len(train) and report.test_pairs == len(test)
    assert len(train) + len(test) == 5 * 3
    assert report.test_photos == 2 and report.train_photos == 3
    assert report.upscaled == ["photo4.png"]
    # Whole photos per split: the photo number never appears on both sides.
    train_ids = {p.name.split("_")[0] for p in train}
    test_ids = {p.name.split("_")[0] for p in test}
    assert not train_ids & test_ids and len(train_ids | test_ids) == 5
    manifest = json.loads((out / synth.MANIFEST_NAME).read_text())
    by_split: dict[str, set[str]] = {"train": set(), "test": set()}
    for rec in manifest["pairs"]:
        by_split[rec["file"].split("/")[0]].add(rec["source"])
    assert not by_split["train"] & by_split["test"]

    for path in train + test:
        sharp, blurred = read_halves(path)
        assert sharp.shape == (48, 48, 3) and blurred.shape == (48, 48, 3)
        kernel = np.load(path.with_name(path.stem + synth.KERNEL_SUFFIX))
        assert kernel.dtype == np.float32 and kernel.shape == (11, 11)
        assert abs(float(kernel.sum(dtype=np.float64)) - 1) < 1e-5
        expected = _reference_blur(sharp, kernel)
        photo = int(path.name.split("_")[0])
        # Pixels whose kernel footprint stays inside the crop match everywhere;
        # crops of the exact-size photos match on the mirrored border too.
        inner = slice(5, -5) if photo >= 3 else slice(None)
        diff = np.abs(blurred[inner, inner].astype(int) - expected[inner, inner].astype(int))
        assert diff.max() <= 1, path.name
        assert not np.array_equal(sharp, blurred)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    write_photos(tmp_path / "src", [(60, 60), (50, 70), (64, 64)])
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        options = MakePairsOptions(per_image=2, size=32, kernel_size=9, seed=seed)
        make_pairs(tmp_path / "src", tmp_path / name, options, progress=False)

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes()
                for p in sorted(root.rglob("*")) if p.is_file()}

    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert len([n for n in a if n.endswith(".jpg")]) == 6
    assert a == b
    pairs = [n for n in a if n.endswith((".jpg", ".npy"))]
    assert any(a[n] != c.get(n) for n in pairs)


def test_jpeg_output_photo_formats_and_recursion(tmp_path):
    src = tmp_path / "src"
    (src / "deep" / "er").mkdir(parents=True)
    rng = np.random.default_rng(4)
    Image.fromarray(textured_photo(rng, 40, 50)).save(src / "deep" / "er" / "A.JPG")
    Image.fromarray(textured_photo(rng, 40, 40)[..., 0]).save(src / "gray.png")
    Image.fromarray(textured_photo(rng, 40, 40)).convert("RGBA").save(src / "alpha.PNG")
    Image.fromarray(textured_photo(rng, 40, 40)).save(src / "ignored.bmp")
    report = make_pairs(src, tmp_path / "out",
                        MakePairsOptions(per_image=2, size=32, kernel_size=7, test_fraction=0.0),
                        progress=False)
    files = sorted((tmp_path / "out" / "train").glob("*.jpg"))
    assert report.train_pairs == 6 and report.test_pairs == 0 and len(files) == 6
    assert not list((tmp_path / "out" / "test").iterdir())
    for path in files:
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (64, 32)
    sources = {r["source"] for r in json.loads(
        (tmp_path / "out" / synth.MANIFEST_NAME).read_text())["pairs"]}
    assert sources == {str(Path("deep/er/A.JPG")), "alpha.PNG", "gray.png"}


def test_exif_orientation_is_applied(tmp_path):
    image = textured_photo(np.random.default_rng(5), 20, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate it 90 degrees clockwise
    Image.fromarray(image).save(tmp_path / "rot.jpg", exif=exif, quality=100)
    assert load_photo(tmp_path / "rot.jpg").shape == (30, 20, 3)


def test_noise_option_adds_gaussian_noise_to_the_blurred_half_only(tmp_path):
    write_photos(tmp_path / "src", [(64, 64)])
    clean = MakePairsOptions(per_image=1, size=64, kernel_size=9, fmt="png", seed=3,
                             test_fraction=0)
    make_pairs(tmp_path / "src", tmp_path / "clean", clean, progress=False)
    make_pairs(tmp_path / "src", tmp_path / "noisy", replace(clean, noise=4.0), progress=False)
    sharp0, blurred0 = read_halves(tmp_path / "clean" / "train" / "0000_00.png")
    sharp1, blurred1 = read_halves(tmp_path / "noisy" / "train" / "0000_00.png")
    np.testing.assert_array_equal(sharp0, sharp1)
    residual = blurred1.astype(float) - blurred0.astype(float)
    assert 3.5 < residual.std() < 4.5 and abs(residual.mean()) < 0.5


def test_unreadable_files_are_skipped_and_listed(tmp_path, capsys):
    write_photos(tmp_path / "src", [(40, 40), (40, 40)])
    (tmp_path / "src" / "broken.jpg").write_bytes(b"not a jpeg at all")
    report = make_pairs(tmp_path / "src", tmp_path / "out",
                        MakePairsOptions(per_image=1, size=32, kernel_size=5), progress=False)
    assert [name for name, _ in report.skipped] == ["broken.jpg"]
    assert "broken.jpg" in capsys.readouterr().err
    assert report.train_pairs + report.test_pairs == 2
    assert "broken.jpg" in report.summary()


def test_a_single_photo_with_a_test_split_is_an_error_before_any_write(tmp_path):
    write_photos(tmp_path / "src", [(40, 40)])
    with pytest.raises(DgfError, match="found 1 photo .*--test-fraction 0"):
        make_pairs(tmp_path / "src", tmp_path / "out",
                   MakePairsOptions(per_image=2, size=32, kernel_size=5, test_fraction=0.5),
                   progress=False)
    assert not (tmp_path / "out").exists()
    report = make_pairs(tmp_path / "src", tmp_path / "out",
                        MakePairsOptions(per_image=2, size=32, kernel_size=5, test_fraction=0),
                        progress=False)
    assert (report.train_pairs, report.test_pairs) == (2, 0)


def _unreadable_split(tmp_path, split):
    """A photo folder whose photos drawn for ``split`` are all unreadable."""
    write_photos(tmp_path / "probe", [(40, 40)] * 6)
    probe = make_pairs(tmp_path / "probe", tmp_path / "probe_out",
                       MakePairsOptions(per_image=1, size=32, kernel_size=5, test_fraction=0.34),
                       progress=False)
    drawn = {Path(r["source"]).name for r in json.loads(
        (tmp_path / "probe_out" / synth.MANIFEST_NAME).read_text())["pairs"]
        if r["file"].startswith(split)}
    assert probe.test_pairs == 2 and len(drawn) == (2 if split == "test" else 4)
    for name in drawn:
        (tmp_path / "probe" / name).write_bytes(b"not a photo")
    return tmp_path / "probe"


@pytest.mark.parametrize("split,other", [("test", "train"), ("train", "test")])
def test_splits_are_decided_from_the_photos_that_could_be_read(tmp_path, split, other):
    src = _unreadable_split(tmp_path, split)
    out = tmp_path / "out"
    report = make_pairs(src, out,
                        MakePairsOptions(per_image=1, size=32, kernel_size=5, test_fraction=0.34),
                        progress=False)
    assert report.train_pairs >= 1 and report.test_pairs >= 1
    assert len(list((out / "train").glob("*.jpg"))) == report.train_pairs
    assert len(list((out / "test").glob("*.jpg"))) == report.test_pairs
    assert len(list((out / "test").glob("*.kernel.npy"))) == report.test_pairs
    assert any(f"to {split}" in note for note in report.notes)
    records = json.loads((out / synth.MANIFEST_NAME).read_text())["pairs"]
    assert all((out / r["file"]).is_file() and (out / r["kernel"]).is_file()
               for r in records)


def test_one_readable_photo_of_many_is_an_error_and_leaves_no_pairs(tmp_path):
    write_photos(tmp_path / "src", [(40, 40)] * 3)
    photos = sorted((tmp_path / "src").iterdir())
    for path in photos[1:]:
        path.write_bytes(b"broken")
    with pytest.raises(DgfError, match="only 1 of 3 photos could be read"):
        make_pairs(tmp_path / "src", tmp_path / "out",
                   MakePairsOptions(per_image=2, size=32, kernel_size=5, test_fraction=0.5),
                   progress=False)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


# --- camera realism -----------------------------------------------------------------
def _realism_pairs(tmp_path, name, **kwargs):
    write_photos(tmp_path / "src", [(48, 48), (48, 48)])
    out = tmp_path / name
    options = MakePairsOptions(per_image=2, size=40, kernel_size=9, fmt="png",
                               test_fraction=0, seed=3, **kwargs)
    make_pairs(tmp_path / "src", out, options, progress=False, overwrite=True)
    pairs = {p.name: read_halves(p) for p in sorted((out / "train").glob("*.png"))}
    return pairs, json.loads((out / synth.MANIFEST_NAME).read_text())


def _srgb_decode(codes):
    c = codes / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _srgb_encode(light):
    light = np.clip(light, 0, 1)
    return 255 * np.where(light <= 0.0031308, 12.92 * light,
                          1.055 * light ** (1 / 2.4) - 0.055)


def test_linear_light_blurs_the_decoded_light_and_keeps_crops_and_kernels(tmp_path):
    plain, _ = _realism_pairs(tmp_path, "plain")
    linear, manifest = _realism_pairs(tmp_path, "linear", linear_light=True)
    assert manifest["settings"]["linear_light"] is True
    for name, (sharp, blurred) in linear.items():
        np.testing.assert_array_equal(sharp, plain[name][0])
        kernel = np.load(tmp_path / "linear" / "train" / name.replace(".png", synth.KERNEL_SUFFIX))
        np.testing.assert_array_equal(
            kernel, np.load(tmp_path / "plain" / "train" / name.replace(".png", synth.KERNEL_SUFFIX)))
        # Independent reference on the crop's interior (no border light needed there).
        r = kernel.shape[0] // 2
        light = np.stack([ndimage.convolve(_srgb_decode(sharp[..., c].astype(float)),
                                           kernel.astype(float), mode="reflect")
                          for c in range(3)], axis=-1)
        expected = np.clip(np.rint(_srgb_encode(light)), 0, 255)
        inner = (slice(r, -r), slice(r, -r))
        assert np.abs(blurred[inner].astype(float) - expected[inner]).max() <= 1
        # Blurring light is not blurring codes: an edge comes out brighter.
        assert blurred[inner].astype(float).mean() > plain[name][1][inner].astype(float).mean()


def test_highlight_gain_saturates_the_streaks_of_bright_lights(tmp_path):
    photo = np.full((48, 48, 3), 40, np.uint8)
    photo[20:24, 20:24] = 255
    (tmp_path / "src").mkdir()
    for i in range(2):
        Image.fromarray(photo).save(tmp_path / "src" / f"{i}.png")
    runs = {}
    for name, gain in (("flat", 1.0), ("bright", 8.0)):
        make_pairs(tmp_path / "src", tmp_path / name,
                   MakePairsOptions(per_image=1, size=48, kernel_size=9, fmt="png",
                                    test_fraction=0, seed=1, linear_light=True,
                                    highlight_gain=gain), progress=False)
        runs[name] = read_halves(tmp_path / name / "train" / "0000_00.png")[1]
        records = json.loads((tmp_path / name / synth.MANIFEST_NAME).read_text())["pairs"]
    assert 1.0 <= records[0]["highlight_gain"] <= 8.0
    flat, bright = runs["flat"].astype(int), runs["bright"].astype(int)
    assert (bright == 255).sum() > (flat == 255).sum()
    assert (bright >= flat).all()
    # The dark background far from the light is untouched by the gain.
    np.testing.assert_array_equal(bright[:8, :8], flat[:8, :8])


def test_jpeg_quality_range_recompresses_the_blurred_half_only(tmp_path):
    plain, _ = _realism_pairs(tmp_path, "plain")
    jpeg, manifest = _realism_pairs(tmp_path, "jpeg", jpeg_quality_range=(20, 30))
    assert manifest["settings"]["jpeg_quality_range"] == [20, 30]
    qualities = {Path(r["file"]).name: r["jpeg_quality"] for r in manifest["pairs"]}
    assert all(20 <= q <= 30 for q in qualities.values())
    for name, (sharp, blurred) in jpeg.items():
        np.testing.assert_array_equal(sharp, plain[name][0])
        buffer = io.BytesIO()
        Image.fromarray(plain[name][1]).save(buffer, format="JPEG", quality=qualities[name])
        expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        np.testing.assert_array_equal(blurred, expected)
        assert not np.array_equal(blurred, plain[name][1])


@pytest.mark.parametrize("kwargs,message", [
    ({"highlight_gain": 0.5, "linear_light": True}, "highlight gain 0.5 must be a number >= 1"),
    ({"highlight_gain": 4.0}, "needs --linear-light"),
    ({"jpeg_quality_range": (90, 70)}, r"JPEG quality range \(90, 70\)"),
    ({"jpeg_quality_range": (0, 70)}, "1 <= LO <= HI <= 100"),
])
def test_bad_realism_values_are_rejected_when_the_options_are_made(kwargs, message):
    with pytest.raises(DgfError, match=message):
        MakePairsOptions(**kwargs)


# --- errors -----------------------------------------------------------------------
def test_missing_empty_and_unreadable_inputs_are_clear_errors(tmp_path):
    with pytest.raises(DgfError, match="nope is not a folder"):
        make_pairs(tmp_path / "nope", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    with pytest.raises(DgfError, match="no .jpg, .jpeg or .png photos"):
        make_pairs(tmp_path / "empty", tmp_path / "out", progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DgfError, match="could be read"):
        make_pairs(tmp_path / "bad", tmp_path / "out", MakePairsOptions(test_fraction=0),
                   progress=False)


def test_sharp_dir_and_sample_photos_are_exclusive(tmp_path):
    with pytest.raises(DgfError, match="not both"):
        make_pairs(tmp_path, tmp_path / "out", MakePairsOptions(sample_photos=True))
    with pytest.raises(DgfError, match="SHARP_DIR"):
        make_pairs(None, tmp_path / "out")


@pytest.mark.parametrize("kwargs,message", [
    ({"per_image": 0}, "per-image 0 must be a whole number >= 1"),
    ({"size": 4}, "size 4 must be a whole number >= 8"),
    ({"test_fraction": 1.0}, r"test-fraction 1\.0 must be in \[0, 1\)"),
    ({"seed": -1}, "seed -1 must be a whole number >= 0"),
    ({"kernel_size": 8}, "kernel size 8 is not allowed"),
    ({"kernel_size": 33, "size": 32}, "kernel size 33 is larger than the crop size 32"),
    ({"strength": 2.0}, r"strength 2\.0 is outside \(0, 1\]"),
    ({"noise": -1.0}, r"noise -1\.0 must be >= 0"),
    ({"quality": 0}, "JPEG quality 0 must be between 1 and 100"),
    ({"fmt": "gif"}, "format 'gif' is not one of jpg, png"),
])
def test_bad_option_values_are_rejected_when_the_options_are_made(kwargs, message):
    with pytest.raises(DgfError, match=message):
        MakePairsOptions(**kwargs)


def test_options_are_frozen_and_keep_the_quality_range_as_a_tuple():
    options = MakePairsOptions(jpeg_quality_range=[70, 95])
    assert options.jpeg_quality_range == (70, 95)
    assert options.realism.jpeg_quality_range == (70, 95)
    with pytest.raises(FrozenInstanceError, match="cannot assign to field 'size'"):
        options.size = 8
    # A copy with one value changed is checked again.
    with pytest.raises(DgfError, match="size 4 must be"):
        replace(options, size=4)


def test_existing_output_needs_overwrite_and_is_left_untouched(tmp_path):
    write_photos(tmp_path / "src", [(40, 40), (40, 40), (40, 40)])
    out = tmp_path / "out"
    make_pairs(tmp_path / "src", out,
               MakePairsOptions(per_image=2, size=32, kernel_size=5, seed=0), progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(DgfError, match="--overwrite"):
        make_pairs(tmp_path / "src", out,
                   MakePairsOptions(per_image=1, size=32, kernel_size=5, seed=1), progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # With --overwrite, stale pairs from the earlier, larger run are gone.
    report = make_pairs(tmp_path / "src", out,
                        MakePairsOptions(per_image=1, size=32, kernel_size=5, seed=1),
                        progress=False, overwrite=True)
    written = sorted(out.rglob("*.jpg"))
    assert len(written) == report.train_pairs + report.test_pairs == 3
    assert len(sorted(out.rglob("*.kernel.npy"))) == 3


def test_output_inside_the_photo_folder_is_not_read_back(tmp_path):
    write_photos(tmp_path / "src", [(40, 40), (40, 40)])
    out = tmp_path / "src" / "pairs"
    first = make_pairs(tmp_path / "src", out,
                       MakePairsOptions(per_image=1, size=32, kernel_size=5), progress=False)
    again = make_pairs(tmp_path / "src", out,
                       MakePairsOptions(per_image=1, size=32, kernel_size=5), progress=False,
                       overwrite=True)
    assert again.train_pairs + again.test_pairs == first.train_pairs + first.test_pairs == 2


# --- bundled sample photos ----------------------------------------------------------
def test_sample_photos_load_offline_and_make_pairs(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    photos = sample_photos()
    assert len(photos) >= 8
    assert len({name for name, _ in photos}) == len(photos)
    for name, image in photos:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
        assert min(image.shape[:2]) >= 256, name
    report = make_pairs(None, tmp_path / "out",
                        MakePairsOptions(sample_photos=True, per_image=1, size=64, kernel_size=9),
                        progress=False)
    assert report.train_pairs + report.test_pairs == len(photos)
    assert report.test_photos >= 1 and report.train_photos >= 1
    assert len(list((tmp_path / "out").rglob("*.jpg"))) == len(photos)


# --- command line ---------------------------------------------------------------------
def test_cli_writes_pairs_and_prints_a_summary(tmp_path, capsys):
    write_photos(tmp_path / "src", [(50, 50), (60, 40), (40, 40), (48, 64)])
    out = tmp_path / "out"
    status = make_pairs_main([str(tmp_path / "src"), str(out), "--per-image", "2",
                              "--size", "32", "--kernel-size", "7", "--strength", "0.9",
                              "--test-fraction", "0.25", "--seed", "4", "--format", "png",
                              "--no-progress"])
    assert status == 0
    assert len(list((out / "train").glob("*.png"))) == 6
    assert len(list((out / "test").glob("*.png"))) == 2
    printed = capsys.readouterr().out
    assert "wrote 6 train pairs" in printed and "wrote 2 test pairs" in printed
    settings = json.loads((out / synth.MANIFEST_NAME).read_text())["settings"]
    assert settings["strength"] == 0.9 and settings["seed"] == 4
    assert settings["linear_light"] is False and settings["jpeg_quality_range"] is None


def test_cli_camera_realism_flags_reach_the_pairs(tmp_path, capsys):
    write_photos(tmp_path / "src", [(50, 50), (60, 40)])
    out = tmp_path / "out"
    status = make_pairs_main([str(tmp_path / "src"), str(out), "--per-image", "1",
                              "--size", "32", "--kernel-size", "7", "--format", "png",
                              "--linear-light", "--highlight-gain", "3",
                              "--jpeg-quality-range", "60", "80", "--no-progress"])
    assert status == 0
    manifest = json.loads((out / synth.MANIFEST_NAME).read_text())
    assert manifest["settings"]["linear_light"] is True
    assert manifest["settings"]["highlight_gain"] == 3.0
    assert manifest["settings"]["jpeg_quality_range"] == [60, 80]
    assert all(60 <= r["jpeg_quality"] <= 80 and 1 <= r["highlight_gain"] <= 3
               for r in manifest["pairs"])
    assert make_pairs_main([str(tmp_path / "src"), str(tmp_path / "o2"), "--highlight-gain",
                            "2", "--no-progress"]) == 2
    assert "needs --linear-light" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--sample-photos", "a", "b"], "only OUT_DIR"),
    (["just_one"], "give SHARP_DIR and OUT_DIR"),
    (["missing_dir", "out"], "is not a folder"),
])
def test_cli_errors_exit_2_with_a_message(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert make_pairs_main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


@pytest.mark.slow  # three dgf-make-pairs runs and a build-hdf5, as the script runs them
def test_make_shake_mix_builds_the_fine_tunes_training_file(tmp_path):
    """tools/make_shake_mix.sh (the bundled model's fine-tune data): each train pair
    three times plus one shake pair per sharp train half and kernel size, and the test
    pairs unchanged."""
    import os
    import subprocess
    import sys

    import h5py

    from conftest import save_side_by_side, smooth_photo
    from dgf.schema import blurred_name, sharp_name

    repo = Path(__file__).resolve().parents[1]
    pairs = tmp_path / "pairs"
    for split, n in (("train", 2), ("test", 1)):
        for i in range(n):
            save_side_by_side(pairs / split / f"{i}.jpg", smooth_photo(40, 40, seed=i),
                              smooth_photo(40, 40, seed=10 + i))
    env = {**os.environ, "PY": sys.executable,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    done = subprocess.run([str(repo / "tools" / "make_shake_mix.sh"), str(pairs),
                           str(tmp_path / "work")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with h5py.File(tmp_path / "data" / "shake-mix.h5") as f:
        assert f[sharp_name("train")].shape[0] == 2 * 3 + 2 * 3  # 3 copies + 3 kernels
        assert f[blurred_name("train")].shape[1:] == (256, 256, 3)
        assert f[sharp_name("test")].shape[0] == 1
    names = sorted(p.name for p in (tmp_path / "work" / "mixed" / "train").iterdir())
    assert [n for n in names if n.startswith("ps_")] == [
        "ps_0_a.jpg", "ps_0_b.jpg", "ps_0_c.jpg", "ps_1_a.jpg", "ps_1_b.jpg", "ps_1_c.jpg"]
    assert len([n for n in names if n.startswith("k")]) == 6
