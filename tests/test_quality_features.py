"""Features for deblurring full-size photos and saying what a model is: the
space-to-depth generator, ``--scale`` and the training record inside ``.keras`` files.
"""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import make_h5, plain, smooth_photo
from dgf.errors import DgfError

# The generator runs on TensorFlow's plain graph (jit off; dgf-deblur's and the
# trainer's scoring's default engine is auto): tiling, scale and the model record do
# not depend on the path, and auto calibrates XLA, ONNX Runtime and OpenVINO on every
# new shape (tests/test_calibration.py, test_jit_cli.py and test_engines.py test it).
FIXED_FLAGS = ["--engine", "tensorflow", "--jit", "off"]


@pytest.fixture(autouse=True)
def seeded():
    """Every test here starts from one random state, so the weights each fresh
    generator draws (and every value computed from them) are the same on every run."""
    import keras

    keras.utils.set_random_seed(0)


# --- space-to-depth ------------------------------------------------------------------
@pytest.mark.parametrize("factor", [2, 4])
def test_space_to_depth_round_trips_any_size_and_matches_tf(factor):
    import tensorflow as tf

    from dgf.models import DepthToSpace, SpaceToDepth

    rng = np.random.default_rng(0)
    even = rng.uniform(-1, 1, (2, 8 * factor, 4 * factor, 3)).astype("float32")
    packed = SpaceToDepth(factor)(even).numpy()
    np.testing.assert_array_equal(packed, tf.nn.space_to_depth(even, factor).numpy())
    odd = rng.uniform(-1, 1, (1, 4 * factor + 1, 3 * factor + 3, 3)).astype("float32")
    packed = SpaceToDepth(factor)(odd)
    expected = (5, -(-(3 * factor + 3) // factor), 3 * factor * factor)
    assert tuple(packed.shape[1:]) == expected
    np.testing.assert_array_equal(DepthToSpace(factor)([packed, odd]).numpy(), odd)


@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
@pytest.mark.parametrize("factor", [1, 2, 4])
def test_space_to_depth_generator_is_identity_at_start_and_saves(factor, tmp_path):
    import keras

    from dgf.models import build_generator, generator_layout
    from dgf.runtime import load_generator

    g = build_generator(channel_rate=8, residual=True, batchnorm=False, dropout=0.0,
                        space_to_depth=factor)
    x = np.random.default_rng(1).uniform(-1, 1, (1, 37, 50, 3)).astype("float32")
    np.testing.assert_array_equal(g(x).numpy(), x)
    paper = build_generator(channel_rate=8, space_to_depth=factor)
    assert paper(x).shape == x.shape
    # The dense field runs at 1/s resolution: its heaviest convolution is s^2 cheaper.
    from dgf.tiling import conv_flops
    one = conv_flops(build_generator(channel_rate=8), 64, 64)
    ratio = one / conv_flops(paper, 64, 64)
    assert ratio > 0.6 * factor**2, ratio  # the head and last conv grow with s^2
    # Counted at the size it runs at: the head extends 61x50 to a multiple of s.
    padded = (-(-61 // factor) * factor, -(-50 // factor) * factor)
    assert conv_flops(paper, 61, 50) == conv_flops(paper, *padded)
    path = tmp_path / "g.keras"
    paper.save(path)
    loaded = load_generator(path)
    assert generator_layout(loaded)["space_to_depth"] == factor
    np.testing.assert_allclose(loaded(x, training=False).numpy(),
                               paper(x, training=False).numpy(), atol=1e-6)
    assert isinstance(loaded, keras.Model)


def test_space_to_depth_is_checked():
    from dgf.config import TrainConfig
    from dgf.models import build_generator

    with pytest.raises(ValueError, match="space_to_depth must be one of"):
        build_generator(channel_rate=8, space_to_depth=3)
    with pytest.raises(DgfError, match="space_to_depth must be 1, 2 or 4, got 3"):
        TrainConfig(space_to_depth=3)
    with pytest.raises(DgfError, match="crop 34 is not a multiple of space_to_depth 4"):
        TrainConfig(space_to_depth=4, crop=34, patch=2)


# --- --scale -------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25, 0.3, 0.125])
@pytest.mark.slow
def test_identity_generator_returns_input_at_every_scale(scale):
    from dgf.models import build_generator

    identity = build_generator(channel_rate=4, residual=True, batchnorm=False, dropout=0.0)
    photo = smooth_photo(203, 157, seed=2)  # odd sizes
    out = plain(identity, tile=96, overlap=24).deblur_image(photo, scale=scale)
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - photo).max() <= 1


@pytest.mark.slow
def test_scale_adds_the_enlarged_correction():
    """A generator that brightens by a constant brightens the full photo by about
    the same, at any scale: the correction is carried to full size."""
    from dgf.models import build_generator

    g = build_generator(channel_rate=4, residual=True, batchnorm=False, dropout=0.0)
    g.get_layer("residual").bias.assign(np.full(3, 0.1, np.float32))  # +12.75 levels
    photo = smooth_photo(120, 90, seed=4) // 2
    for scale in (1.0, 0.5, 0.25):
        out = plain(g).deblur_image(photo, scale=scale)
        assert out.shape == photo.shape
        diff = out.astype(float) - photo
        assert abs(diff.mean() - 12.75) < 0.6, (scale, diff.mean())


def test_scale_errors_name_the_value():
    from dgf.models import build_generator
    from dgf.tiling import auto_scale, check_scale

    g = build_generator(channel_rate=4, residual=True, batchnorm=False)
    photo = smooth_photo(64, 48)
    for bad in (0, -0.5, 1.5):
        with pytest.raises(DgfError, match=f"scale {bad!r} is outside"):
            check_scale(bad)
    with pytest.raises(DgfError, match="scale 0.1 leaves a 48x64 image 5 px"):
        plain(g).deblur_image(photo, scale=0.1)
    with pytest.raises(DgfError, match="'big'"):
        check_scale("big")
    assert auto_scale(3000, 4000, 256) == pytest.approx(256 / 3000)
    assert auto_scale(200, 300, 256) == 1.0 and auto_scale(3000, 4000, None) == 1.0


@pytest.mark.slow
def test_deblur_cli_scale_auto_reads_the_model_record(tmp_path, capsys):
    from PIL import Image

    from dgf.cli import deblur_main
    from dgf.metadata import write_metadata
    from dgf.models import build_generator

    g = build_generator(channel_rate=4, residual=True, batchnorm=False, dropout=0.0)
    plain, recorded = tmp_path / "plain.keras", tmp_path / "recorded.keras"
    g.save(plain)
    g.save(recorded)
    write_metadata(recorded, {"data": {"image_height": 64, "image_width": 64}})
    photos = tmp_path / "in"
    photos.mkdir()
    Image.fromarray(smooth_photo(257, 191, seed=5)).save(photos / "p.png")
    assert deblur_main([str(photos), "-o", str(tmp_path / "a"), "--model", str(recorded),
                        "--scale", "auto", "--quiet", *FIXED_FLAGS]) == 0
    out = np.asarray(Image.open(tmp_path / "a" / "p.png"))
    assert out.shape == (257, 191, 3)
    assert np.abs(out.astype(int) - np.asarray(Image.open(photos / "p.png"))).max() <= 1
    # A record without its training blur or training file: the size rule, said once.
    assert (f"note: --scale auto: {recorded} does not record its training blur and names "
            f"no training file; each photo runs at the model's training image side over "
            f"its shorter side") in capsys.readouterr().out
    assert deblur_main([str(photos), "-o", str(tmp_path / "b"), "--model", str(plain),
                        "--scale", "auto", "--quiet", *FIXED_FLAGS]) == 0
    assert "does not record its training images" in capsys.readouterr().out
    assert deblur_main([str(photos), "-o", str(tmp_path / "c"), "--model", str(plain),
                        "--scale", "2"]) == 2
    assert "scale '2' is outside (0, 1]" in capsys.readouterr().err
    assert deblur_main([str(photos), "-o", str(tmp_path / "d"), "--model", str(plain),
                        "--scale", "0.01", "--quiet", *FIXED_FLAGS]) == 1  # this photo: too small
    assert "scale 0.01 leaves a 191x257 image" in capsys.readouterr().err


@pytest.mark.slow  # a whole dgf-deblur run; tests/test_blur.py covers the parts quickly
def test_scale_auto_prints_each_photos_streak_and_notes_a_flat_one(tmp_path, capsys):
    """With the model's training blur recorded, each photo's streak is measured and
    mapped onto it; a flat photo runs at scale 1 with a note saying why."""
    from PIL import Image

    from dgf.blur import ESTIMATOR, shake_kernel
    from dgf.infer import deblur_paths
    from dgf.kernels import blur
    from dgf.metadata import write_metadata
    from dgf.models import build_generator
    from dgf.spec import InferenceSpec

    model = tmp_path / "m.keras"
    build_generator(channel_rate=4, residual=True, batchnorm=False, dropout=0.0).save(model)
    write_metadata(model, {"data": {"image_height": 64, "image_width": 64},
                           "training_blur": {"estimator": ESTIMATOR, "streak_px": 10.0}})
    photos = tmp_path / "in"
    photos.mkdir()
    sharp = np.kron(np.random.default_rng(0).integers(30, 220, (48, 64, 1)),
                    np.ones((8, 8, 1))).astype(np.uint8).repeat(3, axis=2)  # 384x512 blocks
    Image.fromarray(blur(sharp, shake_kernel(0, 18.0))).save(photos / "shaken.png")
    Image.fromarray(np.full((120, 160, 3), 77, np.uint8)).save(photos / "wall.png")
    spec = InferenceSpec(engine="tensorflow", jit="off", scale="auto")
    report = deblur_paths(model, [photos], tmp_path / "out", spec, progress=False)
    assert len(report.processed) == 2 and not report.failed
    lines = capsys.readouterr().out.splitlines()
    shaken = next(line for line in lines if line.startswith(f"{photos / 'shaken.png'}: "))
    streak, scale = (float(v) for v in re.fullmatch(
        r".*: streaks about (\d+) px, the model learned 10\.0 px: scale ([\d.]+)", shaken).groups())
    assert 9 < streak < 27 and scale == pytest.approx(10.0 / streak, rel=0.05)
    assert (f"note: {photos / 'wall.png'}: too flat to measure its blur (edges of 0.00 levels "
            f"per pixel, under 1); running at scale 1") in lines


# --- the training record -------------------------------------------------------------
@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
def test_metadata_round_trip_and_old_files(tmp_path):
    import keras

    from dgf.metadata import describe, read_metadata, training_side, write_metadata
    from dgf.models import build_generator
    from dgf.runtime import load_generator

    g = build_generator(channel_rate=4)
    old = tmp_path / "old.keras"
    g.save(old)
    assert read_metadata(old) is None
    assert "no training metadata" in describe(None)
    new = tmp_path / "new.keras"
    g.save(new)
    record = {"data": {"h5": "d.h5", "image_height": 256, "image_width": 320,
                       "train_pairs": 5}, "crop": 96, "epoch": 3,
              "best": {"psnr": 25.5, "ssim": 0.7, "crop_border": 8, "epoch": 2}}
    write_metadata(new, record)
    back = read_metadata(new)
    assert back["best"] == record["best"] and back["dgf_version"]
    assert training_side(back) == 256
    assert "crop border 8" in describe(back) and "25.50 dB" in describe(back)
    # Keras still loads it, in safe mode, with the same weights.
    loaded = keras.models.load_model(new, safe_mode=True)
    for a, b in zip(loaded.get_weights(), load_generator(old).get_weights()):
        np.testing.assert_array_equal(a, b)
    assert read_metadata(tmp_path / "missing.keras") is None
    (tmp_path / "text.keras").write_text("not a zip")
    assert read_metadata(tmp_path / "text.keras") is None


@pytest.mark.slow
def test_training_writes_its_record_into_every_model_file(tmp_path):
    from dgf.config import TrainConfig
    from dgf.metadata import read_metadata
    from dgf.session import train

    h5 = make_h5(tmp_path / "data.h5")
    cfg = TrainConfig(h5=str(h5), run_dir=str(tmp_path / "run"), channel_rate=8, blocks=3,
                      patch=16, crop=32, batch_size=2, perceptual_weight=0.0, val_samples=2,
                      strip_pairs=2, epochs=2, space_to_depth=2, batchnorm=False,
                      eval_engine="tensorflow", eval_jit="off")
    train(cfg, progress=False)
    run = tmp_path / "run"
    latest = read_metadata(run / "generator.keras")
    assert latest["layout"] == {"channel_rate": 8, "blocks": 3, "residual": True,
                                "batchnorm": False, "space_to_depth": 2}
    assert latest["data"] == {"h5": str(h5), "image_height": 48, "image_width": 48,
                              "train_pairs": 4, "test_pairs": 2}
    assert latest["crop"] == 32
    assert latest["epoch"] == 2 and latest["score"]["epoch"] == 2
    assert latest["score"]["psnr"] > 0 and "crop_border" in latest["score"]
    best = read_metadata(run / "generator_best.keras")
    assert best["best"]["psnr"] == max(
        read_metadata(run / "snapshots" / f"generator_epoch_{e:04d}.keras")["score"]["psnr"]
        for e in (1, 2))
    assert read_metadata(run / "snapshots" / "generator_epoch_0001.keras")["epoch"] == 1
    with zipfile.ZipFile(run / "generator.keras") as archive:
        commit = json.loads(archive.read("dgf.json"))["commit"]
    assert commit is None or len(commit.split("+")[0]) >= 7


# --- receptive field and seamless tiles ----------------------------------------------
@pytest.mark.parametrize("factor, expected", [(1, 35), (2, 70), (4, 140)])
@pytest.mark.slow
def test_receptive_field_matches_the_gradient_footprint(factor, expected):
    """The layer count equals the extent of input pixels one output pixel depends on,
    measured with a gradient (paper's layout: random weights everywhere)."""
    import tensorflow as tf

    from dgf.models import build_generator
    from dgf.tiling import receptive_field

    g = build_generator(channel_rate=4, dropout=0.0, space_to_depth=factor, batchnorm=False)
    assert receptive_field(g) == expected
    size = 2 * expected + 8 * factor
    x = tf.constant(np.random.default_rng(0).uniform(-1, 1, (1, size, size, 3)), tf.float32)
    centre = size // 2
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = g(x, training=False)[0, centre, centre, 0]
    grad = np.abs(tape.gradient(y, x).numpy()[0]).sum(axis=-1)
    rows = np.nonzero(grad.sum(axis=1))[0]
    footprint = rows.max() - rows.min() + 1
    # Space-to-depth blocks are aligned to the image grid, so a pixel's footprint
    # can fall up to factor - 1 pixels short of the field on one side.
    assert expected - (factor - 1) <= footprint <= expected, footprint


@pytest.mark.slow
def test_default_tiles_of_a_space_to_depth_model_leave_no_seams():
    import keras

    from dgf.models import build_generator
    from dgf.tiling import _deblur_unit, seamless_tiling

    g = build_generator(channel_rate=4, dropout=0.0, space_to_depth=4, batchnorm=False)
    # Fresh weights reach far only faintly: a pixel 50-70 px away acts through the
    # longest chains of convolutions, and at Glorot scale the seams an overlap of 64
    # leaves measured 0.7e-3 to 3e-3 over seeds. The biases are zero and LeakyReLU is
    # homogeneous, so a gain of 1.5 on every kernel before the last multiplies a chain
    # of n convolutions by 1.5**n: the far reach grows most (seams 0.045-0.10 over
    # seeds 0-9) while the output stays mostly unsaturated; the matching tiles stay
    # within 3.2e-6 of the whole image.
    for layer in g.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.name != "image":
            layer.kernel.assign(layer.kernel * 1.5)
    tile, overlap = seamless_tiling(g)
    assert (tile, overlap) == (864, 216)
    assert seamless_tiling(g, tile=1000, overlap=100) == (1000, 100)  # given: kept
    photo = smooth_photo(500, 470, seed=6)
    call = plain(g).call()
    whole = _deblur_unit(call, photo, 0, 0, 1, False, 4)
    # Two tiles per axis (starts off the 4-pixel grid unless aligned) with the
    # model's overlap match the whole image; the paper layout's default overlap
    # (64) leaves seams on this model, whose reach is 140 px.
    tiled = _deblur_unit(call, photo, 440, overlap, 1, False, 4)
    seams = _deblur_unit(call, photo, 440, 64, 1, False, 4)
    assert np.abs(tiled - whole).max() < 1e-4
    assert np.abs(seams - whole).max() > 1e-2
    assert plain(g, tile=440, overlap=overlap).deblur_image(photo).shape == photo.shape
