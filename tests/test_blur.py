"""The blur estimator behind ``--scale auto`` (dgf.blur), the scale it leads to
(dgf.tiling.auto_scale) and the training blur a model file records."""
from __future__ import annotations

import hashlib
import zipfile

import numpy as np
import pytest

from conftest import make_h5
from dgf.blur import (
    ESTIMATOR, MIN_SIDE, BlurEstimate, describe_choice, estimate_blur, measure_training_blur,
    model_reference, shake_kernel, streak_length,
)
from dgf.errors import DgfError
from dgf.kernels import blur
from dgf.tiling import AUTO_MIN_SIDE, auto_scale


def dead_leaves(seed: int, size: int = 384, count: int = 400) -> np.ndarray:
    """A sharp stand-in for a photo: overlapping discs of random grey levels and
    sizes (edges of every orientation and scale, flat insides)."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size), 128.0)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(count):
        cy, cx = rng.uniform(0, size, 2)
        radius = size * 0.2 * rng.uniform(0.05, 1.0) ** 2
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2] = rng.uniform(20, 235)
    return np.repeat(image.astype(np.uint8)[..., None], 3, axis=2)


def line_kernel(length: int) -> np.ndarray:
    """A straight horizontal streak ``length`` px long (odd)."""
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2] = 1.0 / length
    return kernel


# --- kernels of a known length --------------------------------------------------------
def test_streak_length_of_a_straight_streak_is_its_length_and_shake_kernels_hit_theirs():
    for length in (5, 15, 31):
        assert streak_length(line_kernel(length)) == pytest.approx(
            np.sqrt(length ** 2 - 1), rel=1e-6)  # the discrete uniform streak
    for seed, length in ((0, 8.0), (1, 20.0), (2, 45.0)):
        kernel = shake_kernel(seed, length)
        assert kernel.sum() == pytest.approx(1.0, abs=1e-5) and kernel.shape[0] % 2 == 1
        assert streak_length(kernel) == pytest.approx(length, rel=0.05)
    np.testing.assert_array_equal(shake_kernel(3, 12.0), shake_kernel(3, 12.0))
    with pytest.raises(DgfError, match="streak length -1"):
        shake_kernel(0, -1)


# --- the estimator --------------------------------------------------------------------
@pytest.mark.slow
def test_estimate_recovers_a_straight_streak():
    sharp = dead_leaves(0)
    assert estimate_blur(sharp).length < 2.5  # its own edges, taken out: 1.3 px measured
    for length in (7, 13, 21, 31):  # measured 6.4, 12.3, 20.2, 30.2
        found = estimate_blur(blur(sharp, line_kernel(length))).length
        assert found == pytest.approx(length, rel=0.12), (length, found)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.slow
def test_estimate_follows_seeded_shake_kernels(seed):
    """Shake streaks curve and dwell, so the length measured along the blur (its
    second moment, less the spread across it) is shorter than a curved one's length:
    within 0.45-1.15 of it at 6-24 px (measured 0.51-1.03 on four images, four
    kernels each), longer streaks measuring longer."""
    sharp = dead_leaves(10 + seed)
    found = []
    for length in (6.0, 12.0, 24.0):
        kernel = shake_kernel(100 * seed + int(length), length)
        found.append(estimate_blur(blur(sharp, kernel)).length)
        assert 0.45 * length < found[-1] < 1.15 * length, (length, found[-1])
    assert found == sorted(found)


@pytest.mark.slow
@pytest.mark.slow
def test_softness_in_every_direction_is_not_read_as_a_streak():
    """A picture enlarged x8 spreads its edges about 8 px in every direction; that is
    the photo's own softness, not shake: its streak measures under 4 px (2.4), and a
    15 px streak added to it measures as 15 px, not as the two spreads together."""
    from PIL import Image

    from dgf.blur import edge_spread, luma

    sharp = dead_leaves(4, 768, count=1200)
    soft = np.asarray(Image.fromarray(sharp[::8, ::8]).resize((768, 768),
                                                              Image.Resampling.BICUBIC))
    spread, streak, _ = edge_spread(luma(soft))
    assert spread > 7.0 and streak < 4.0 and estimate_blur(soft).length == streak
    shaken = estimate_blur(blur(soft, line_kernel(15))).length
    assert shaken == pytest.approx(15, rel=0.2)  # measured 13.4


def test_estimate_is_in_the_pixels_of_the_image_given():
    """A photo larger than the working side is measured shrunk and reported in its
    own pixels: the same scene twice as large measures about twice as long."""
    from PIL import Image

    small = blur(dead_leaves(3, 600), line_kernel(9))
    large = np.asarray(Image.fromarray(small).resize((1200, 1200), Image.Resampling.BICUBIC))
    a, b = estimate_blur(small), estimate_blur(large)
    assert a.side == 600 and b.side in (1024, 512)  # 1024 px, or half for a long streak
    assert b.length == pytest.approx(2 * a.length, rel=0.15)


def test_blank_and_tiny_images_have_no_estimate():
    rng = np.random.default_rng(0)
    blank = np.full((300, 400, 3), 200, np.uint8)
    noisy = np.clip(blank + rng.normal(0, 2, blank.shape), 0, 255).astype(np.uint8)
    for page in (blank, noisy):
        found = estimate_blur(page)
        assert found.length is None and "too flat" in found.reason
    tiny = estimate_blur(dead_leaves(0, 48))
    assert tiny.length is None and f"48x48 is too small" in tiny.reason
    assert str(MIN_SIDE) in tiny.reason


# --- the scale --------------------------------------------------------------------------
def test_auto_scale_maps_the_photos_streak_onto_the_training_blur():
    assert auto_scale(3000, 4000, 256, streak=40.0, training_streak=16.0) == pytest.approx(0.4)
    # Streaks no longer than the model's: full size.
    assert auto_scale(3000, 4000, 256, streak=10.0, training_streak=16.0) == 1.0
    # A huge streak stops at AUTO_MIN_SIDE px on the shorter side.
    assert auto_scale(3000, 4000, 256, streak=3000.0, training_streak=16.0) == \
        pytest.approx(AUTO_MIN_SIDE / 3000)
    # Nothing measured (a flat photo): full size, whatever the size rule would say.
    assert auto_scale(3000, 4000, 256, streak=None, training_streak=16.0) == 1.0
    # Without a training blur, the size rule.
    assert auto_scale(3000, 4000, 256, streak=40.0) == pytest.approx(256 / 3000)


def test_the_printed_choice_names_streaks_and_scale_or_why_not():
    line = describe_choice("a.jpg", BlurEstimate(41.6, None, 1024), 0.39, 16.2)
    assert line == "a.jpg: streaks about 42 px, the model learned 16.2 px: scale 0.39"
    flat = describe_choice("page.png", BlurEstimate(None, "too flat to measure its blur", 300),
                           1.0, 16.2)
    assert flat == "note: page.png: too flat to measure its blur; running at scale 1"
    assert "(streaks no longer than the model's)" in describe_choice(
        "b.jpg", BlurEstimate(9.0, None, 1024), 1.0, 16.2)
    assert describe_choice("c.jpg", None, 0.085, None, 256) == \
        "c.jpg: scale 0.085 (the training image side 256 px over its size)"
    assert describe_choice("d.jpg", None, 1.0, None, None) is None


# --- what a model learned on ----------------------------------------------------------
def test_model_reference_reads_the_record_or_measures_the_training_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_h5(tmp_path / "pairs.h5", n_train=3, size=96)
    data = {"h5": "pairs.h5", "image_height": 96, "image_width": 96}
    recorded = {"data": data, "training_blur": {"estimator": ESTIMATOR, "streak_px": 16.2}}
    assert model_reference(recorded, "m.keras") == (16.2, None)
    measured, note = model_reference({"data": data}, "m.keras")
    assert measured == measure_training_blur("pairs.h5", limit=64)["streak_px"] > 0
    assert note.startswith("note: --scale auto: m.keras does not record its training blur; "
                           "measured 3 blurred train images of pairs.h5")
    assert note.endswith("(`dgf-info m.keras --measure-blur` records it in the file)")
    # Another estimator's number: measured again from the file, said so.
    older = {"data": data, "training_blur": {"estimator": "edge-spread-1", "streak_px": 3.0}}
    streak, note = model_reference(older, "m.keras")
    assert streak == measured and note.startswith(
        f"note: --scale auto: m.keras records its training blur measured by edge-spread-1, "
        f"not {ESTIMATOR}; measured 3 blurred train images")
    # ... and without the file here: the size rule, said once.
    other = {"data": {**data, "h5": "gone.h5"},
             "training_blur": {"estimator": "other", "streak_px": 3.0}}
    streak, note = model_reference(other, "m.keras")
    assert streak is None and note.startswith("note: ") and "gone.h5 is not here" in note
    assert "training image side over its shorter side" in note
    assert "--measure-blur FILE.h5" in note
    assert model_reference(None, "m.keras") == (None, None)


def test_training_blur_summary_and_errors(tmp_path):
    make_h5(tmp_path / "pairs.h5", n_train=2, size=96)
    summary = measure_training_blur(tmp_path / "pairs.h5")
    assert summary["estimator"] == ESTIMATOR and summary["count"] == 2
    assert summary["image_side"] == 96 and summary["split"] == "train"
    assert summary["q25"] <= summary["streak_px"] <= summary["q75"]
    with pytest.raises(DgfError, match="has no val split"):
        measure_training_blur(tmp_path / "pairs.h5", split="val")
    small = make_h5(tmp_path / "small.h5", size=48)
    with pytest.raises(DgfError, match="none of the images has edges enough"):
        measure_training_blur(small)


def _members(path) -> dict[str, str]:
    with zipfile.ZipFile(path) as archive:
        return {item.filename: hashlib.sha256(archive.read(item.filename)).hexdigest()
                for item in archive.infolist()}


def test_set_training_blur_rewrites_only_the_record(model_file, tmp_path):
    import shutil

    from dgf.metadata import (
        MEMBER, describe, read_metadata, set_training_blur, training_streak, write_metadata,
    )

    path = tmp_path / "m.keras"
    shutil.copy(model_file, path)
    write_metadata(path, {"data": {"h5": "d.h5", "image_height": 64, "image_width": 64},
                          "evaluations": [{"psnr": 25.0}]})
    before = _members(path)
    blur_record = {"estimator": ESTIMATOR, "streak_px": 12.5, "count": 7, "split": "train"}
    set_training_blur(path, blur_record)
    after = _members(path)
    assert {k: v for k, v in after.items() if k != MEMBER} == \
        {k: v for k, v in before.items() if k != MEMBER}
    record = read_metadata(path)
    assert record["evaluations"] == [{"psnr": 25.0}]  # the rest of the record is kept
    assert training_streak(record, ESTIMATOR) == 12.5
    assert training_streak(record, "another") is None
    assert "training blur 12.5 px (median of 7 train images)" in describe(record)


def test_the_bundled_model_records_its_training_blur():
    from dgf.metadata import read_metadata
    from dgf.weights import bundled_model

    from dgf.actions import ModelFiles

    record = read_metadata(bundled_model())
    blur_record = record["training_blur"]
    assert blur_record["estimator"] == ESTIMATOR
    # Measured as dgf-train measures it: evenly spaced images of its training file.
    assert blur_record["count"] + blur_record["skipped"] == ModelFiles.TRAINING_BLUR_IMAGES
    assert blur_record["h5"] == record["data"]["h5"] and blur_record["image_side"] == 256
    assert 10 < blur_record["streak_px"] < 25


def test_dgf_info_measure_blur_records_the_training_blur(model_file, tmp_path, monkeypatch,
                                                          capsys):
    """dgf-info MODEL --measure-blur [H5] measures the training file (named, or the one
    the record names) with this estimator and records it; a model naming a file that
    is not here is told to name it, and the file is left as it was."""
    import shutil

    from dgf.cli import info_main
    from dgf.metadata import read_metadata, training_streak, write_metadata

    monkeypatch.chdir(tmp_path)
    make_h5(tmp_path / "pairs.h5", n_train=3, size=96)
    path = tmp_path / "m.keras"
    shutil.copy(model_file, path)
    write_metadata(path, {"data": {"h5": "gone.h5", "image_height": 96, "image_width": 96},
                          "training_blur": {"estimator": "edge-spread-1", "streak_px": 3.0}})
    before = path.read_bytes()
    assert info_main([str(path), "--measure-blur"]) == 2
    err = capsys.readouterr().err
    assert "names its training file gone.h5, which is not here" in err
    assert "--measure-blur FILE.h5" in err and path.read_bytes() == before
    assert info_main([str(path), "--measure-blur", "pairs.h5"]) == 0
    out = capsys.readouterr().out
    expected = measure_training_blur("pairs.h5")["streak_px"]
    assert training_streak(read_metadata(path), ESTIMATOR) == expected
    assert f"recorded in {path}: training blur {expected:.1f} px (median of 3" in out
