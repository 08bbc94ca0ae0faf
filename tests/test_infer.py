"""dgf-deblur: tiled inference, file handling, per-file errors, the CLI."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import dgf.tiling
from conftest import plain, png_header_only, smooth_photo
from dgf import host
from dgf.cli import deblur_main
from dgf.errors import DgfError, install_hint
from dgf.runtime import load_generator
from dgf.tiling import TILE_STEP, _axis_window, tile_shape, tile_starts

# Receptive-field radius of the DGF generator (head 1 + dense dilations 14 + tail 2).
RADIUS = 17


# dgf-deblur on TensorFlow's plain graph unless a test names the path: what these
# tests check does not depend on it, and the default (auto) calibrates XLA, ONNX
# Runtime and OpenVINO on every new shape (tests/test_calibration.py, test_jit_cli.py
# and test_engines.py test it). Predictors in these tests run there too (conftest.plain).
FIXED_FLAGS = ["--engine", "tensorflow", "--jit", "off"]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    argv = [str(a) for a in argv]
    fixed = [] if "--engine" in argv or "--jit" in argv else FIXED_FLAGS
    status = deblur_main(argv + ["--quiet", *fixed])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# --- tiling ------------------------------------------------------------------
@pytest.mark.parametrize("length,tile,overlap", [(230, 128, 60), (129, 128, 60),
                                                 (4032, 512, 64), (50, 128, 60)])
def test_tile_starts_cover_with_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    for a, b in zip(starts, starts[1:]):
        assert b > a and a + size - b >= overlap  # neighbours overlap enough


@pytest.mark.parametrize("height,width,tile,overlap", [
    (1196, 1596, 864, 216), (3024, 4032, 864, 216), (800, 2000, 864, 216),
    (500, 3000, 512, 64), (900, 900, 864, 216), (130, 4000, 128, 24), (300, 200, 512, 64)])
def test_tile_shape_covers_within_the_budget_with_fewer_pixels(height, width, tile, overlap):
    th, tw = tile_shape(height, width, tile, overlap)
    assert th * tw <= tile * tile and th <= height and tw <= width
    for side, length in ((th, height), (tw, width)):
        assert side == length or side % TILE_STEP == 0  # the whole side, or on the grid
        assert side == length or side > 2 * overlap
        starts = tile_starts(length, side, overlap)
        assert starts[0] == 0 and starts[-1] + side == length
        assert all(a + side - b >= overlap for a, b in zip(starts, starts[1:]))
    count = len(tile_starts(height, th, overlap)) * len(tile_starts(width, tw, overlap))
    squares = len(tile_starts(height, tile, overlap)) * len(tile_starts(width, tile, overlap))
    assert count * th * tw <= squares * min(tile, height) * min(tile, width)
    if (height, width) == (1196, 1596):  # the 12 MP phone photo at auto scale 0.395
        assert count * th * tw < 0.65 * squares * tile * tile  # 2.8 MP instead of 4.5
    if (height, width) == (300, 200):
        assert (th, tw) == (300, 200)  # within the tile: one call


def test_tile_shape_keeps_square_tiles_when_no_grid_side_fits_two_overlaps():
    # 2 x 216 + 1 rounds up to 448 on the 64 px grid, over a 440 px tile.
    assert tile_shape(500, 472, 440, 216) == (440, 440)


def test_window_flat_inside_one_at_image_border_ramped_at_cuts():
    first = _axis_window(0, 128, 300, 60)  # left edge on the image border
    assert first[0] == 1.0 and first[60] == 1.0
    assert first[-1] < 1e-3 and first[-20] < 1e-3  # outer third of the overlap
    middle = _axis_window(100, 128, 300, 60)
    assert middle[0] < 1e-3 and middle[-1] < 1e-3 and middle[64] == 1.0
    assert np.all(np.diff(middle[:64]) >= 0) and np.all(middle > 0)
    assert np.all(_axis_window(0, 128, 128, 60) == 1.0)  # a lone tile is flat


@pytest.mark.slow
def test_tiled_equals_untiled_and_small_overlap_shows_seams(generator):
    image = smooth_photo(150, 230)
    whole = plain(generator, tile=0).deblur_image(image)
    assert whole.shape == image.shape and whole.dtype == np.uint8
    assert whole.std() > 5  # a varied output, so agreement below means something
    tiled = plain(generator, tile=128, overlap=60, batch=4).deblur_image(image)
    # overlap 60 gives a 20 px margin > the 17 px radius: exact up to float
    # round-off, which can flip a rounding by one level.
    diff = np.abs(tiled.astype(int) - whole.astype(int))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.01
    seams = plain(generator, tile=128, overlap=0, batch=3).deblur_image(image)
    assert np.abs(seams.astype(int) - whole.astype(int)).max() > 2


def _sharpener():
    """A stand-in for a predictor (what deblur_image uses of one) whose "generator"
    sharpens with NumPy: a varied correction at every pixel, in no time."""
    from types import SimpleNamespace

    def call(x):
        blurred = (np.roll(x, 1, axis=1) + np.roll(x, -1, axis=2) + 2 * x) / 4
        return np.clip(x + 1.5 * (x - blurred), -1, 1)

    return SimpleNamespace(tiling=lambda: (0, 0), spec=SimpleNamespace(batch=1),
                           call=lambda calls_ahead=None: call, generator=None)


@pytest.mark.parametrize("scale", [0.3, 0.5, 1.0])
def test_banded_full_size_steps_equal_the_whole_image(monkeypatch, scale):
    """Shrinking, enlarging the correction, adding it and rounding, a few rows at a
    time (29 bands of 7 rows on this odd-sized photo), give what one band gives."""
    image = smooth_photo(203, 157, seed=6)
    monkeypatch.setattr(dgf.tiling, "BAND_ROWS", 10**6)
    whole = dgf.tiling.deblur_image(_sharpener(), image, scale=scale)
    assert np.abs(whole.astype(int) - image).max() > 10  # a correction to carry
    monkeypatch.setattr(dgf.tiling, "BAND_ROWS", 7)
    banded = dgf.tiling.deblur_image(_sharpener(), image, scale=scale)
    diff = np.abs(banded.astype(int) - whole.astype(int))
    assert diff.max() <= 1  # float round-off can flip a rounding
    assert (diff > 0).mean() < 0.001


def test_bad_arguments_raise(generator):
    image = smooth_photo(20, 20)
    with pytest.raises(DgfError, match="overlap 64 is too large for tile 100"):
        plain(generator, tile=100, overlap=64).deblur_image(image)
    with pytest.raises(DgfError, match="uint8"):
        plain(generator, tile=0).deblur_image(image.astype(np.float32))
    with pytest.raises(DgfError, match="batch size"):
        plain(generator, batch=0).deblur_image(image)


def test_load_generator_errors(tmp_path):
    with pytest.raises(DgfError, match="missing.keras does not exist"):
        load_generator(tmp_path / "missing.keras")
    with pytest.raises(DgfError, match="is a folder, not a file"):
        load_generator(tmp_path)
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip archive")
    with pytest.raises(DgfError, match="junk.keras is not a valid .keras file"):
        load_generator(junk)


# --- files and CLI -----------------------------------------------------------
@pytest.mark.slow  # runs the whole command end to end
def test_sizes_formats_alpha_exif_and_tree(tmp_path, model_file, generator, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    jpg = smooth_photo(37, 53, seed=1)
    Image.fromarray(jpg).save(src / "a.jpg", quality=95)
    png = smooth_photo(301, 97, seed=2)
    alpha = np.tile(np.arange(97, dtype=np.uint8)[None, :], (301, 1))
    Image.fromarray(np.dstack([png, alpha]), "RGBA").save(src / "sub" / "b.png")
    rotated = Image.fromarray(smooth_photo(24, 40, seed=3))  # stored 40 wide, 24 high
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated by 90 degrees
    rotated.save(src / "sub" / "c.JPG", exif=exif)

    out = tmp_path / "out"
    # fp32: the default (auto) is bf16 on a CPU with native bf16. One path (TensorFlow
    # without XLA), so the file can be compared with deblur_image's output exactly:
    # the paths auto chooses from agree within a level, not to the bit.
    status, stdout, err = _run([src, "-o", out, "--model", model_file, "--precision", "fp32",
                                "--engine", "tensorflow", "--jit", "off"], capsys)
    assert status == 0, err
    assert "deblurred 3 image(s)" in stdout
    with Image.open(out / "a.jpg") as im:
        assert im.format == "JPEG" and im.size == (53, 37) and im.mode == "RGB"
    with Image.open(out / "sub" / "b.png") as im:
        assert im.format == "PNG" and im.size == (97, 301) and im.mode == "RGBA"
        written = np.asarray(im)
    assert np.array_equal(written[..., 3], alpha)
    # The PNG path is lossless: the file holds exactly what deblur_image returns.
    assert np.array_equal(written[..., :3], plain(generator).deblur_image(png))
    with Image.open(out / "sub" / "c.JPG") as im:
        assert im.size == (24, 40)  # transposed: upright
        assert im.getexif().get(0x0112) is None
    assert not list(out.rglob(".*"))  # no temporary files left behind


@pytest.mark.slow  # runs the whole command end to end
def test_per_file_errors_and_overwrite(tmp_path, model_file, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(smooth_photo(30, 40)).save(src / "good.jpg")
    (src / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    (src / "notes.png").write_text("these are notes, not an image\n")
    bmp = tmp_path / "extra.bmp"
    Image.fromarray(smooth_photo(8, 8)).save(bmp)
    out = tmp_path / "out"

    status, stdout, err = _run([src, bmp, "-o", out, "--model", model_file], capsys)
    assert status == 1
    assert (out / "good.jpg").is_file()
    assert not (out / "corrupt.jpg").exists() and not (out / "notes.png").exists()
    assert "corrupt.jpg" in err and "notes.png" in err
    assert "extra.bmp" in err and "unsupported file type '.bmp'" in err
    assert "3 failed" in stdout

    before = (out / "good.jpg").read_bytes()
    status, _, err = _run([src / "good.jpg", "-o", out, "--model", model_file,
                           "--quality", "50"], capsys)
    assert status == 1
    assert "good.jpg already exists; pass --overwrite" in err
    assert (out / "good.jpg").read_bytes() == before

    status, _, err = _run([src / "good.jpg", "-o", out, "--model", model_file,
                           "--quality", "50", "--overwrite"], capsys)
    assert status == 0, err
    assert (out / "good.jpg").read_bytes() != before  # rewritten at quality 50


@pytest.mark.slow  # runs the whole command end to end
def test_run_level_errors_exit_2(tmp_path, model_file, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(smooth_photo(16, 16)).save(src / "x.png")
    out = tmp_path / "out"

    status, _, err = _run([src, "-o", out, "--model", tmp_path / "nope.keras"], capsys)
    assert status == 2 and "nope.keras does not exist" in err
    assert not out.exists()  # nothing processed before the model was checked

    empty = tmp_path / "empty"
    (empty / "deeper").mkdir(parents=True)
    (empty / "deeper" / "readme.txt").write_text("no images here")
    status, _, err = _run([empty, "-o", out, "--model", model_file], capsys)
    assert status == 2
    assert "contains no .jpg, .jpeg, .png, .webp, .avif, .heic or .heif images" in err

    status, _, err = _run([tmp_path / "ghost.jpg", "-o", out, "--model", model_file],
                          capsys)
    assert status == 2 and "ghost.jpg does not exist" in err

    status, _, err = _run([src, "-o", src, "--model", model_file], capsys)
    assert status == 2 and "would replace its input" in err

    # OUT inside the input folder: earlier outputs are not taken as new inputs.
    inner = src / "deblurred"
    status, stdout, err = _run([src, "-o", inner, "--model", model_file], capsys)
    assert status == 0 and "deblurred 1 image(s)" in stdout, err
    status, stdout, err = _run([src, "-o", inner, "--model", model_file,
                                "--overwrite"], capsys)
    assert status == 0 and "deblurred 1 image(s)" in stdout, err
    assert not (inner / "deblurred").exists()

    status, _, err = _run([src, "-o", out, "--model", model_file, "--tile", "64",
                           "--overlap", "40"], capsys)
    assert status == 2 and "--overlap" in err


@pytest.mark.slow  # runs the whole command end to end
def test_photo_size_and_memory_are_checked_on_the_header_before_decoding(
        tmp_path, model_file, monkeypatch, capsys):
    import dgf.images
    import dgf.infer

    src = tmp_path / "in"
    src.mkdir()
    png_header_only(src / "huge.png", 20_000, 15_000)  # 300 MP, no pixel data
    Image.fromarray(smooth_photo(30, 40)).save(src / "small.png")  # 1200 pixels
    (src / "iphone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    decoded = []
    real_read = dgf.infer.read_image
    monkeypatch.setattr(dgf.infer, "read_image",
                        lambda path, **kw: decoded.append(path.name) or real_read(path, **kw))
    monkeypatch.setattr(dgf.images, "pillow_heif", None)
    monkeypatch.setattr(host, "available_memory", lambda: 1000)
    out = tmp_path / "out"

    status, stdout, err = _run([src, "-o", out, "--model", model_file], capsys)
    assert status == 1 and "3 failed" in stdout
    assert ("huge.png: 20000x15000 is 300.0 megapixels, over the limit of 250 "
            "(--max-megapixels); pass --max-megapixels 300 or more") in err
    assert "small.png: 40x30 (0.0 megapixels) needs about" in err
    assert "of memory to deblur and 1000 bytes is available" in err
    assert "iphone.heic: HEIC/HEIF needs pillow-heif, which is not installed" in err
    assert install_hint("heif") in err
    assert decoded == []  # every refusal came from the header
    assert not [p for p in out.rglob("*") if p.is_file()]

    # Memory enough: a --max-megapixels below the photo refuses it, still undecoded.
    monkeypatch.setattr(host, "available_memory", lambda: 10**12)
    status, _, err = _run([src / "small.png", "-o", out, "--model", model_file,
                           "--max-megapixels", "0.001"], capsys)
    assert status == 1 and ("40x30 is 0.0 megapixels, over the limit of 0.001 "
                            "(--max-megapixels); pass --max-megapixels 1 or more") in err
    assert decoded == []


@pytest.mark.slow  # runs the whole command end to end
def test_no_bomb_warning_under_the_limit_and_phone_formats_keep_theirs(
        tmp_path, model_file, monkeypatch, capfd):
    """A photo above Pillow's bomb threshold (lowered here to 500 pixels) but under
    --max-megapixels deblurs without a word from Pillow; WebP and HEIC come out in
    their own format, upright, with their EXIF and ICC profile."""
    from PIL import ImageCms

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    src = tmp_path / "in"
    src.mkdir()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40 wide, 24 high: upright 24 wide, 40 high
    exif[0x010F] = "dgf camera"
    suffixes = [".png", ".webp"] + ([".heic"] if _heif_installed() else [])
    for suffix in suffixes:
        Image.fromarray(smooth_photo(24, 40, seed=7)).save(
            src / f"shot{suffix}", exif=exif.tobytes(), icc_profile=icc, quality=95)
    out = tmp_path / "out"
    status = deblur_main([str(src), "-o", str(out), "--model", str(model_file), "--quiet",
                          *FIXED_FLAGS])
    err = capfd.readouterr().err
    assert status == 0, err
    assert "ecompression" not in err
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # this test's own reading
    for suffix in suffixes:
        with Image.open(out / f"shot{suffix}") as im:
            assert im.format == {".png": "PNG", ".webp": "WEBP", ".heic": "HEIF"}[suffix]
            assert im.size == (24, 40)
            assert im.info["icc_profile"] == icc
            assert im.getexif().get(0x010F) == "dgf camera"
            assert im.getexif().get(0x0112) in (None, 1)


def _heif_installed() -> bool:
    import dgf.images

    return dgf.images.pillow_heif is not None


@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
def test_compare_side_by_side(tmp_path, model_file, capsys):
    src = tmp_path / "in"
    src.mkdir()
    image = smooth_photo(33, 45, seed=4)
    Image.fromarray(image).save(src / "shot.png")
    out = tmp_path / "out"
    status, _, err = _run([src, "-o", out, "--model", model_file, "--compare"], capsys)
    assert status == 0, err
    with Image.open(out / "compare" / "shot_compare.png") as im:
        side = np.asarray(im)
    with Image.open(out / "shot.png") as im:
        deblurred = np.asarray(im)
    assert side.shape == (33, 90, 3)
    assert np.array_equal(side[:, :45], image) and np.array_equal(side[:, 45:], deblurred)


@pytest.mark.slow  # runs dgf-deblur's work end to end
def test_the_python_api_of_docs_inference_md(model_file, tmp_path, monkeypatch):
    """docs/inference.md's "From Python" block, run as written (in a folder holding the
    model and a photo folder)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "inference.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, re.S)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "generator.keras").write_bytes(model_file.read_bytes())
    (tmp_path / "photos").mkdir()
    rgb = smooth_photo(48, 64, seed=5)
    Image.fromarray(rgb).save(tmp_path / "photos" / "a.png")
    scope = {"rgb": rgb}
    exec(compile(block, "docs/inference.md", "exec"), scope)
    assert scope["report"].processed == [Path("out") / "a.png"] and not scope["report"].failed
    assert (tmp_path / "out" / "compare" / "a_compare.png").is_file()
    written = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    np.testing.assert_array_equal(written, scope["deblurred"])
