"""Metrics, strips and the dgf-eval reports (dgf/metrics.py, dgf/scoring.py,
dgf/evaluate.py, dgf-eval)."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from conftest import make_eval_h5, make_run, plain, read_halves, write_pairs_h5
from dgf import evaluate as ev
from dgf import images, metrics, scoring
from dgf.cli import eval_main
from dgf.errors import DgfError
from dgf.metrics import ScoreSettings
from dgf.options import DEFAULT_EVAL_BATCH
from dgf.schema import blurred_name, sharp_name
from dgf.scoring import EvalOptions
from dgf.spec import InferenceSpec

H, W, COUNT = 24, 40, 7  # what make_eval_h5 writes
# Every generator call runs TensorFlow's plain graph (jit="off"; the commands' and
# evaluate_model/evaluate_run's default engine is auto): what these tests check does
# not depend on the path, and auto calibrates XLA, ONNX Runtime and OpenVINO on every
# new shape, a conversion per model, and picks by timing (tests/test_calibration.py,
# test_jit_cli.py and test_engines.py test the choice).
FIXED = InferenceSpec(jit="off", engine="tensorflow", batch=DEFAULT_EVAL_BATCH)
FIXED_FLAGS = ["--jit", "off", "--engine", "tensorflow"]


def _options(split="test", *, limit=None, strips=4, **how):
    """What is scored (:class:`EvalOptions`), ``how`` the ScoreSettings fields."""
    return EvalOptions(split=split, limit=limit, strips=strips, settings=ScoreSettings(**how))


def _split(generator, h5, split="test", *, batch_size=DEFAULT_EVAL_BATCH, **options):
    """scoring.evaluate_split of ``generator`` on TensorFlow's plain graph."""
    return scoring.evaluate_split(plain(generator, batch=batch_size), h5,
                                  _options(split, **options), progress=False)


def _deblur(generator, blurred):
    return plain(generator, batch=DEFAULT_EVAL_BATCH).deblur_batch(blurred)


def _generator(seed: int):
    """The real DGF generator at channel rate 8, 3 blocks: (B, H, W, 3) in [-1, 1] -> same,
    tanh.

    Its dropout makes any accidental training-mode call visible as unequal outputs.
    """
    import keras

    from dgf.models import build_generator

    keras.utils.set_random_seed(seed)
    return build_generator(channel_rate=8, blocks=3)


def _center_crop(batch: np.ndarray, crop: int | tuple[int, int] | None) -> np.ndarray:
    if crop is None:
        return batch
    ch, cw = (crop, crop) if isinstance(crop, int) else crop
    h, w = batch.shape[1:3]
    ch, cw = min(ch, h), min(cw, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return batch[:, top : top + ch, left : left + cw]


def write_strip(path, generator, h5_path, split="test", indices=None, crop=None, *, n=4):
    """Deblur chosen pairs of ``split`` and write their sharp | blurred | deblurred
    strip with the package's parts (read_pairs, Predictor.deblur_batch, make_strip, save_png);
    ``crop`` takes a centred crop of each image after deblurring. Returns the strip."""
    if indices is None:
        h5, info = scoring.open_split(h5_path, split)
        h5.close()
        indices = scoring.strip_indices(info.count, n)
    sharp, blurred = scoring.read_pairs(h5_path, split, indices)
    deblurred = plain(generator, batch=max(1, len(indices))).deblur_batch(blurred)
    strip = scoring.make_strip(*(_center_crop(a, crop) for a in (sharp, blurred, deblurred)))
    scoring.save_png(path, strip)
    return strip


def _identity_generator():
    import keras

    inp = keras.Input((None, None, 3))
    return keras.Model(inp, keras.layers.Identity()(inp))


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("models")
    paths = []
    for seed in (1, 2, 3):
        path = folder / f"g{seed}.keras"
        _generator(seed).save(path)
        paths.append(path)
    return paths


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


# --- conversions and metrics ---------------------------------------------------------
def test_to_uint8_rounds_clips_and_inverts_to_unit():
    x = np.array([-1.5, -1.0, 0.0, 1.0, 2.0, 1 / 127.5 - 1, 0.5 / 127.5 - 1], np.float32)
    # 0 -> 127.5 rounds half to even (128); 0.5 -> rounds half to even (0).
    np.testing.assert_array_equal(images.to_uint8(x), [0, 0, 128, 255, 255, 1, 0])
    every = np.arange(256, dtype=np.uint8)
    unit = images.to_unit(every)
    assert unit.dtype == np.float32 and unit.min() == -1.0 and unit.max() == 1.0
    np.testing.assert_array_equal(images.to_uint8(unit), every)


def test_metrics_agree_with_scikit_image_on_real_pairs(pairs_small):
    paths = sorted((pairs_small / "test").glob("*.jpg"))[:8]
    assert len(paths) == 8
    for sharp, blurred in map(read_halves, paths):
        want_p = peak_signal_noise_ratio(sharp, blurred, data_range=255)
        want_s = structural_similarity(sharp, blurred, channel_axis=-1, data_range=255)
        assert abs(metrics.psnr(sharp, blurred) - want_p) < 0.01
        assert abs(metrics.ssim(sharp, blurred) - want_s) < 0.001
        # Real blur is a real degradation: far from identical, far from noise.
        assert 15 < metrics.psnr(sharp, blurred) < 40


@pytest.mark.parametrize("shape", [(32, 32, 3), (17, 45, 3), (64, 7, 3)])
def test_metrics_agree_with_scikit_image_on_synthetic_pairs(shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, shape), 0, 255).astype(np.uint8)
    assert abs(metrics.psnr(a, b) - peak_signal_noise_ratio(a, b, data_range=255)) < 0.01
    assert abs(
        metrics.ssim(a, b) - structural_similarity(a, b, channel_axis=-1, data_range=255)
    ) < 0.001


def test_identical_images_psnr_inf_and_capped_in_means():
    a = np.full((16, 16, 3), 77, np.uint8)
    assert metrics.psnr(a, a) == math.inf
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    assert metrics.mean_psnr([math.inf, 20.0]) == pytest.approx((metrics.PSNR_CAP_DB + 20.0) / 2)
    assert math.isnan(metrics.mean_psnr([]))


def test_metric_inputs_are_checked():
    a = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(DgfError, match="shape"):
        metrics.psnr(a, np.zeros((16, 15, 3), np.uint8))
    with pytest.raises(DgfError, match="uint8"):
        metrics.ssim(a, a.astype(np.float32))
    with pytest.raises(DgfError, match="7x7"):
        metrics.ssim(np.zeros((5, 16, 3), np.uint8), np.zeros((5, 16, 3), np.uint8))


@pytest.mark.parametrize("n", [1, 4, 8])
def test_crop_border_scores_equal_scikit_image_on_the_cropped_arrays(n):
    rng = np.random.default_rng(n)
    a = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    ca, cb = a[n:32 - n, n:40 - n], b[n:32 - n, n:40 - n]
    assert ca.shape == (32 - 2 * n, 40 - 2 * n, 3)
    want_p = peak_signal_noise_ratio(ca, cb, data_range=255)
    want_s = structural_similarity(ca, cb, channel_axis=-1, data_range=255)
    assert abs(metrics.psnr(a, b, crop_border=n) - want_p) < 1e-9
    assert abs(metrics.ssim(a, b, crop_border=n) - want_s) < 1e-9
    # The crop matters: the whole images score otherwise.
    assert metrics.psnr(a, b) != metrics.psnr(a, b, crop_border=n)
    # Only the border differs: cropped, the images are identical.
    c = a.copy()
    c[:n] = 255 - c[:n]
    assert metrics.psnr(a, c, crop_border=n) == math.inf and metrics.psnr(a, c) < 100


def test_crop_border_errors_name_the_value():
    a = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(DgfError, match=r"crop border must be >= 0 pixels, got -1"):
        metrics.psnr(a, a, crop_border=-1)
    with pytest.raises(DgfError, match=r"crop border 16 leaves nothing of a 32x32 image"):
        metrics.psnr(a, a, crop_border=16)
    with pytest.raises(DgfError, match=r"crop border 16 leaves nothing"):
        metrics.ssim(a, a, crop_border=16)
    with pytest.raises(DgfError, match=r"got 2\.5"):
        metrics.check_crop_border(2.5)
    assert metrics.check_crop_border(15, 32, 32) == 15  # one pixel row and column left


# --- strips -----------------------------------------------------------------------------
def test_strip_indices_even_fixed_and_bounded():
    idx = scoring.strip_indices(100, 4)
    # The middles of four equal parts of 100, the same whatever the random state.
    assert idx == [12, 37, 62, 87]
    np.random.seed(5)
    assert scoring.strip_indices(100, 4) == [12, 37, 62, 87]
    assert idx == sorted(set(idx)) and len(idx) == 4
    assert all(0 <= i < 100 for i in idx)
    gaps = np.diff(idx)
    assert gaps.min() >= 24 and gaps.max() <= 26
    assert scoring.strip_indices(3, 5) == [0, 1, 2]
    assert scoring.strip_indices(7, 7) == list(range(7))
    assert len(set(scoring.strip_indices(9, 8))) == 8
    with pytest.raises(DgfError, match="number of strip rows must be at least 1; got 0"):
        scoring.strip_indices(10, 0)


def test_make_strip_panels_are_exact():
    rng = np.random.default_rng(0)
    sharp, blurred, deblurred = (rng.integers(0, 256, (3, 5, 6, 3), dtype=np.uint8) for _ in range(3))
    strip = scoring.make_strip(sharp, blurred, deblurred)
    assert strip.shape == (15, 18, 3) and strip.dtype == np.uint8
    for i in range(3):
        rows = slice(i * 5, (i + 1) * 5)
        np.testing.assert_array_equal(strip[rows, 0:6], sharp[i])
        np.testing.assert_array_equal(strip[rows, 6:12], blurred[i])
        np.testing.assert_array_equal(strip[rows, 12:18], deblurred[i])
    with pytest.raises(DgfError, match="same shape"):
        scoring.make_strip(sharp, blurred, deblurred[:2])


@pytest.mark.slow
def test_write_strip_png_matches_sources(tmp_path):
    h5 = tmp_path / "d.h5"
    sharp, blurred = make_eval_h5(h5)
    generator = _generator(0)
    out = tmp_path / "samples" / "epoch_0001.png"
    strip = write_strip(out, generator, h5, "test", indices=[1, 4, 6])
    assert strip.shape == (3 * H, 3 * W, 3)
    back = _png(out)
    np.testing.assert_array_equal(back, strip)
    deblurred = _deblur(generator, blurred[[1, 4, 6]])
    for row, i in enumerate([1, 4, 6]):
        rows = slice(row * H, (row + 1) * H)
        np.testing.assert_array_equal(back[rows, :W], sharp[i])
        np.testing.assert_array_equal(back[rows, W : 2 * W], blurred[i])
        np.testing.assert_array_equal(back[rows, 2 * W :], deblurred[row])
    assert not list(out.parent.glob(".*tmp*")), "temporary file left behind"
    cropped = write_strip(tmp_path / "c.png", generator, h5, n=2, crop=16)
    assert cropped.shape == (2 * 16, 3 * 16, 3)
    with pytest.raises(DgfError, match="out of range"):
        write_strip(tmp_path / "x.png", generator, h5, indices=[COUNT])


def test_strip_rows_are_spread_over_the_scored_pairs():
    assert scoring.scored_indices(64, None) == list(range(64))
    assert scoring.scored_indices(64, 32) == scoring.strip_indices(64, 32)
    # Whole split scored: the strip shows the pairs it always showed.
    assert scoring.strip_rows(64, None, 4) == scoring.strip_indices(64, 4) == [8, 24, 40, 56]
    # 32 of 64 scored (odd indices): the strip picks 4 of those, evenly spread.
    rows = scoring.strip_rows(64, 32, 4)
    assert rows == [9, 25, 41, 57]
    assert set(rows) <= set(scoring.scored_indices(64, 32))
    assert scoring.strip_rows(7, 3, 5) == scoring.strip_indices(7, 3)  # more rows than scored pairs
    with pytest.raises(DgfError, match="number of strip rows must be at least 1; got 0"):
        scoring.strip_rows(64, None, 0)


@pytest.mark.parametrize("limit", [None, 4])
@pytest.mark.slow
def test_evaluate_with_strip_draws_the_strip_from_the_scoring_pass(tmp_path, monkeypatch, limit):
    h5 = tmp_path / "d.h5"
    sharp, blurred = make_eval_h5(h5)
    generator = _generator(0)
    expected, expected_rows = _split(generator, h5, limit=limit)
    run = plain(generator, batch=3)
    passed = []
    real = run.deblur_batch
    monkeypatch.setattr(run, "deblur_batch",
                        lambda images, *a: passed.append(len(images)) or real(images, *a))
    out = tmp_path / "samples" / "epoch_0003.png"
    summary, rows, strip = scoring.evaluate_with_strip(run, h5, out,
                                                       _options(strips=2, limit=limit),
                                                       progress=False)
    # One generator pass over the scored pairs, none for the strip.
    assert sum(passed) == expected["count"] == (COUNT if limit is None else limit)
    assert rows == expected_rows
    assert {k: summary[k] for k in ("psnr", "ssim", "blurred_psnr", "count")} == {
        k: expected[k] for k in ("psnr", "ssim", "blurred_psnr", "count")}
    picked = scoring.strip_rows(COUNT, limit, 2)
    assert summary["strip_indices"] == picked
    assert set(picked) <= {r["index"] for r in rows}
    np.testing.assert_array_equal(_png(out), strip)
    deblurred = real(blurred[picked])
    np.testing.assert_array_equal(strip, scoring.make_strip(sharp[picked], blurred[picked], deblurred))
    with pytest.raises(DgfError, match="number of strip rows must be at least 1; got 0"):
        scoring.evaluate_with_strip(run, h5, tmp_path / "x.png", _options(strips=0),
                                    progress=False)
    assert not (tmp_path / "x.png").exists()


# --- scoring a split ---------------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_split_scores_every_pair(tmp_path):
    h5 = tmp_path / "d.h5"
    sharp, blurred = make_eval_h5(h5)
    generator = _generator(0)
    summary, rows = _split(generator, h5, batch_size=3)
    assert set(summary) == set(scoring.SUMMARY_KEYS)
    assert summary["count"] == COUNT and len(rows) == COUNT
    assert [r["index"] for r in rows] == list(range(COUNT))
    assert [r["source"] for r in rows] == [f"pair_{i}.jpg" for i in range(COUNT)]
    deblurred = _deblur(generator, blurred)
    for r in rows:
        i = r["index"]
        assert r["psnr"] == pytest.approx(metrics.psnr(sharp[i], deblurred[i]))
        assert r["ssim"] == pytest.approx(metrics.ssim(sharp[i], deblurred[i]))
        assert r["blurred_psnr"] == pytest.approx(metrics.psnr(sharp[i], blurred[i]))
        assert r["blurred_ssim"] == pytest.approx(metrics.ssim(sharp[i], blurred[i]))
    assert summary["psnr"] == pytest.approx(np.mean([r["psnr"] for r in rows]))
    assert summary["blurred_ssim"] == pytest.approx(np.mean([r["blurred_ssim"] for r in rows]))
    assert summary["seconds_per_image"] > 0

    limited, lrows = _split(generator, h5, limit=3)
    assert limited["count"] == 3
    assert [r["index"] for r in lrows] == scoring.strip_indices(COUNT, 3)


@pytest.mark.slow  # test_evaluate_split_caches_the_baseline_per_protocol_and_channel is quick
def test_evaluate_split_caches_the_blurred_baseline(tmp_path, monkeypatch):
    """The blurred-input scores are computed once per file and set of pairs."""
    h5 = tmp_path / "d.h5"
    make_eval_h5(h5)
    generator = _generator(0)
    calls = {"psnr": 0, "ssim": 0}  # a new file: nothing of it is cached yet

    def counting(name, real):
        def metric(a, b, *crop_border):
            calls[name] += 1
            return real(a, b, *crop_border)
        return metric

    monkeypatch.setattr(metrics, "psnr", counting("psnr", metrics.psnr))
    monkeypatch.setattr(metrics, "ssim", counting("ssim", metrics.ssim))

    def scored(**kw):
        calls.update(psnr=0, ssim=0)
        summary, rows = _split(generator, h5, **kw)
        return summary, rows, dict(calls)

    first, rows, n = scored(limit=3)
    assert n == {"psnr": 6, "ssim": 6}  # deblurred and blurred scores of 3 pairs
    again, again_rows, n = scored(limit=3)
    assert n == {"psnr": 3, "ssim": 3}  # only the deblurred ones: baseline from the cache
    assert again_rows == rows
    assert again["blurred_psnr"] == first["blurred_psnr"]
    # Other pairs of the same file are another entry, and so is another crop border.
    _, _, n = scored(limit=2)
    assert n == {"psnr": 4, "ssim": 4}
    cropped, _, n = scored(limit=3, crop_border=2)
    assert n == {"psnr": 6, "ssim": 6}
    assert cropped["blurred_psnr"] != first["blurred_psnr"]
    # A rewritten file (new mtime) is scored afresh, and its new baseline is used.
    with h5py.File(h5, "a") as f:
        f[blurred_name("test")][...] = f[sharp_name("test")][...]
    stat = h5.stat()
    os.utime(h5, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    rebuilt, rebuilt_rows, n = scored(limit=3)
    assert n == {"psnr": 6, "ssim": 6}
    assert all(r["blurred_psnr"] == math.inf for r in rebuilt_rows)
    assert rebuilt["blurred_psnr"] == metrics.PSNR_CAP_DB


def test_evaluate_split_identity_generator_caps_psnr(tmp_path):
    h5 = tmp_path / "d.h5"
    make_eval_h5(h5, count=3, with_source=False)
    with h5py.File(h5, "a") as f:  # blurred == sharp: a perfect "deblurrer" too
        f[blurred_name("test")][...] = f[sharp_name("test")][...]
    summary, rows = _split(_identity_generator(), h5)
    assert all(r["psnr"] == math.inf and r["source"] == "" for r in rows)
    assert summary["psnr"] == metrics.PSNR_CAP_DB
    assert summary["blurred_psnr"] == metrics.PSNR_CAP_DB
    assert summary["ssim"] == pytest.approx(1.0)


@pytest.mark.slow
def test_evaluate_split_bad_inputs(tmp_path):
    with pytest.raises(DgfError, match=r"missing\.h5: no such file"):
        _split(_generator(0), tmp_path / "missing.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(DgfError, match="HDF5"):
        _split(_generator(0), bad)
    h5 = tmp_path / "d.h5"
    make_eval_h5(h5)
    with pytest.raises(DgfError, match="val_data_full"):
        _split(_generator(0), h5, "val")


# --- plots ---------------------------------------------------------------------------------
def test_plot_metrics_writes_png(tmp_path):
    path = tmp_path / "m.png"
    ev.plot_metrics([1, 2, 3], [20.0, 22.0, 23.5], [0.6, 0.65, 0.7], 21.0, [0.62] * 3, path)
    assert _png(path).shape == (600, 800, 3)
    with pytest.raises(DgfError, match="got 2 epochs, 1 PSNR, 2 SSIM values"):
        ev.plot_metrics([1, 2], [20.0], [0.6, 0.7], 21.0, 0.6, tmp_path / "n.png")


@pytest.mark.parametrize("n", [0, 8])
def test_plot_metrics_names_the_crop_border(tmp_path, monkeypatch, n):
    figures = []
    real = ev.Figure
    monkeypatch.setattr(ev, "Figure", lambda *a, **kw: figures.append(real(*a, **kw)) or figures[-1])
    ev.plot_metrics([1, 2], [20.0, 21.0], [0.6, 0.7], 19.0, 0.5, tmp_path / "m.png",
                    settings=ScoreSettings(crop_border=n))
    top, bottom = figures[0].axes
    texts = [top.get_title(), top.get_ylabel(), bottom.get_ylabel()]
    if n:
        assert all("crop border 8" in t for t in texts), texts
    else:
        assert texts == ["test metrics per epoch", "PSNR (dB)", "SSIM"]


def test_run_evaluation_state_names_a_nonzero_crop_border_only(tmp_path):
    h5 = tmp_path / "d.h5"
    make_eval_h5(h5)
    state = ev._run_settings(h5, [1, 3], _options(), "fp32")
    assert "crop_border" not in state  # evaluations made before the option still match
    assert ev._run_settings(h5, [1, 3], _options(crop_border=8), "fp32") == {
        **state, "crop_border": 8}
    out = tmp_path / "eval"
    out.mkdir()
    scores = {"psnr": 21.5, "ssim": 0.625, "blurred_psnr": 20.25, "blurred_ssim": 0.5}
    named = {"crop_border": 8, "protocol": "basicsr", "y_channel": True}
    ev._save_run_tables(out, {2: {**scores, **named}}, state, {"2": 1})
    with (out / "metrics.csv").open() as fh:
        assert next(csv.reader(fh)) == list(ev.RUN_CSV_KEYS)
    assert ev._read_run_csv(out / "metrics.csv") == {2: {**scores, **named}}
    # A table written before metrics.csv named its crop is scored again.
    (out / "metrics.csv").write_text("epoch,psnr,ssim,blurred_psnr,blurred_ssim\n"
                                     "2,21.5,0.625,20.25,0.5\n")
    assert ev._read_run_csv(out / "metrics.csv") == {}


# --- whole model -----------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_model_writes_report_and_refuses_overwrite(tmp_path, snapshots):
    h5 = tmp_path / "d.h5"
    make_eval_h5(h5)
    out = tmp_path / "report"
    summary = ev.evaluate_model(snapshots[0], h5, out, spec=FIXED.replace(batch=4),
                                options=_options(strips=2), progress=False)
    saved = json.loads((out / "summary.json").read_text())
    assert set(scoring.SUMMARY_KEYS) <= set(saved)
    assert saved["count"] == COUNT and saved["psnr"] == pytest.approx(summary["psnr"])
    assert saved["strip_indices"] == scoring.strip_indices(COUNT, 2)
    limited = ev.evaluate_model(snapshots[0], h5, tmp_path / "limited", spec=FIXED,
                                options=_options(strips=2, limit=4), progress=False)
    assert limited["strip_indices"] == scoring.strip_rows(COUNT, 4, 2)
    with (out / "per_image.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == COUNT and tuple(rows[0]) == scoring.ROW_KEYS
    assert _png(out / "strip.png").shape == (2 * H, 3 * W, 3)
    with pytest.raises(DgfError, match="--overwrite"):
        ev.evaluate_model(snapshots[0], h5, out, spec=FIXED, progress=False)
    ev.evaluate_model(snapshots[1], h5, out, spec=FIXED, options=_options(strips=3),
                      overwrite=True, progress=False)
    assert _png(out / "strip.png").shape == (3 * H, 3 * W, 3)


# --- whole run -------------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_run_writes_everything_and_skips_done_epochs(tmp_path, snapshots, monkeypatch):
    run, h5 = make_run(tmp_path, snapshots, epochs=2)
    rows = ev.evaluate_run(run, spec=FIXED.replace(batch=4), options=_options(strips=3),
                           progress=False)
    out = run / "eval"
    assert [r["epoch"] for r in rows] == [1, 2]
    with (out / "metrics.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in table] == [1, 2]
    assert tuple(table[0]) == ev.RUN_CSV_KEYS
    # Different generators score differently; the baseline depends only on the data.
    assert table[0]["psnr"] != table[1]["psnr"]
    assert table[0]["blurred_psnr"] == table[1]["blurred_psnr"]
    strip = _png(out / "strips" / "epoch_0001.png")
    assert strip.shape == (3 * H, 3 * W, 3)
    progress = _png(out / "progress.png")
    assert progress.shape == (2 * (ev.BAND_HEIGHT + 3 * H), 3 * W, 3)
    # Epoch 1's strip sits under the first band, pixel for pixel.
    np.testing.assert_array_equal(progress[ev.BAND_HEIGHT : ev.BAND_HEIGHT + 3 * H], strip)
    assert _png(out / "metrics.png").shape == (600, 800, 3)

    loads = []
    real_load = ev.load_generator
    monkeypatch.setattr(ev, "load_generator", lambda p: loads.append(Path(p).name) or real_load(p))
    again = ev.evaluate_run(run, spec=FIXED, options=_options(strips=3), progress=False)
    assert loads == [] and again == rows

    ev.evaluate_run(run, spec=FIXED, options=_options(strips=2),
                    progress=False)  # other strip pairs: all re-drawn
    assert len(loads) == 2
    assert _png(out / "strips" / "epoch_0002.png").shape == (2 * H, 3 * W, 3)
    loads.clear()
    ev.evaluate_run(run, spec=FIXED, options=_options(strips=2), force=True, progress=False)
    assert len(loads) == 2

    loads.clear()
    (run / "snapshots" / "generator_epoch_0003.keras").write_bytes(snapshots[2].read_bytes())
    rows3 = ev.evaluate_run(run, spec=FIXED, options=_options(strips=2), progress=False)
    assert loads == ["generator_epoch_0003.keras"]
    assert [r["epoch"] for r in rows3] == [1, 2, 3]
    assert rows3[:2] == ev.evaluate_run(run, spec=FIXED, options=_options(strips=2),
                                        progress=False)[:2]
    assert _png(out / "progress.png").shape[0] == 3 * (ev.BAND_HEIGHT + 2 * H)


@pytest.mark.slow  # runs the whole command end to end
def test_evaluate_run_errors(tmp_path, snapshots):
    run, h5 = make_run(tmp_path, snapshots, epochs=0)
    with pytest.raises(DgfError, match="no snapshots"):
        ev.evaluate_run(run, spec=FIXED, progress=False)
    (run / "snapshots" / "generator_epoch_0001.keras").write_bytes(snapshots[0].read_bytes())
    (run / "config.json").write_text(json.dumps({"h5": "nowhere/data.h5"}))
    with pytest.raises(DgfError, match="--h5"):
        ev.evaluate_run(run, spec=FIXED, progress=False)
    (run / "config.json").unlink()
    with pytest.raises(DgfError, match="config.json"):
        ev.evaluate_run(run, spec=FIXED, progress=False)
    rows = ev.evaluate_run(run, spec=FIXED, options=_options(strips=1), h5_path=h5,
                           progress=False)
    assert len(rows) == 1
    (run / "snapshots" / "generator_epoch_0002.keras").write_bytes(b"garbage")
    with pytest.raises(DgfError, match="generator_epoch_0002.keras"):
        ev.evaluate_run(run, spec=FIXED, options=_options(strips=1), h5_path=h5,
                        progress=False)


# --- CLI ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_run_and_model_modes(tmp_path, snapshots, capsys):
    run, h5 = make_run(tmp_path, snapshots, epochs=2)
    assert eval_main(["--run", str(run), "--strips", "2", "--no-progress", *FIXED_FLAGS]) == 0
    printed = capsys.readouterr().out
    assert "metrics.csv" in printed and "PSNR" in printed
    assert (run / "eval" / "progress.png").is_file()

    out = tmp_path / "one"
    args = ["--model", str(snapshots[0]), "--h5", str(h5), "--out", str(out), "--no-progress",
            *FIXED_FLAGS]
    assert eval_main(args + ["--strips", "3"]) == 0
    assert "summary.json" in capsys.readouterr().out
    assert _png(out / "strip.png").shape == (3 * H, 3 * W, 3)
    assert eval_main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert eval_main(args + ["--overwrite"]) == 0


@pytest.mark.slow
def test_cli_takes_short_o_for_out(tmp_path, snapshots, capsys):
    run, h5 = make_run(tmp_path, snapshots, epochs=1)
    one = tmp_path / "one"
    assert eval_main(["--model", str(snapshots[0]), "--h5", str(h5), "-o", str(one),
                      "--strips", "2", "--limit", "2", "--no-progress", *FIXED_FLAGS]) == 0
    assert f"wrote {one / 'summary.json'}" in capsys.readouterr().out
    assert json.loads((one / "summary.json").read_text())["count"] == 2
    elsewhere = tmp_path / "run_eval"
    assert eval_main(["--run", str(run), "-o", str(elsewhere), "--strips", "2",
                      "--limit", "2", "--no-progress", *FIXED_FLAGS]) == 0
    assert (elsewhere / "metrics.csv").is_file() and (elsewhere / "progress.png").is_file()
    assert not (run / "eval").exists()


def test_cli_errors_exit_2(tmp_path, capsys):
    h5 = tmp_path / "d.h5"
    make_eval_h5(h5)
    assert eval_main(["--model", str(tmp_path / "nope.keras"), "--h5", str(h5)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nope.keras" in err
    assert eval_main(["--model", str(tmp_path / "nope.keras")]) == 2
    assert "--h5" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="^2$"):  # argparse's usage error
        eval_main(["--run", str(tmp_path), "--model", str(tmp_path / "g.keras")])
    assert "argument --model: not allowed with argument --run" in capsys.readouterr().err


def _border_only_h5(path: Path, border: int = 4) -> Path:
    """A test split whose blurred images equal the sharp ones except in a
    ``border``-pixel frame, where they are inverted."""
    sharp, _ = make_eval_h5(path)
    blurred = sharp.copy()
    frame = np.ones(sharp.shape[1:3], bool)
    frame[border:-border, border:-border] = False
    blurred[:, frame] = 255 - sharp[:, frame]
    write_pairs_h5(path, {"test": (sharp, blurred)}, chunked=False)
    return path


@pytest.mark.slow  # runs the whole command end to end
def test_cli_crop_border_scores_the_interior(tmp_path, model_file, capsys):
    h5 = _border_only_h5(tmp_path / "d.h5")
    base = ["--model", str(model_file), "--h5", str(h5), "--strips", "2", "--no-progress",
            *FIXED_FLAGS]
    assert eval_main(base + ["--out", str(tmp_path / "whole")]) == 0
    assert "crop border" not in capsys.readouterr().out
    assert eval_main(base + ["--out", str(tmp_path / "inner"), "--crop-border", "4"]) == 0
    assert f"{COUNT} pairs (crop border 4):" in capsys.readouterr().out
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    inner = json.loads((tmp_path / "inner" / "summary.json").read_text())
    assert (whole["crop_border"], inner["crop_border"]) == (0, 4)
    # Only the frame differs: cropped away, blurred == sharp (capped at 100 dB).
    assert whole["blurred_psnr"] < 20 and inner["blurred_psnr"] == metrics.PSNR_CAP_DB
    assert inner["psnr"] != whole["psnr"]
    for name, n in (("whole", "0"), ("inner", "4")):
        with (tmp_path / name / "per_image.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert tuple(rows[0]) == scoring.ROW_KEYS and len(rows) == COUNT
        assert {r["crop_border"] for r in rows} == {n}
    assert {r["blurred_psnr"] for r in csv.DictReader(
        (tmp_path / "inner" / "per_image.csv").open())} == {"inf"}


@pytest.mark.parametrize("n, says", [("99", "crop border 99 leaves nothing of a 40x24 image"),
                                     ("12", "crop border 12 leaves nothing"),
                                     ("-1", "--crop-border must be >= 0 pixels; got -1")])
@pytest.mark.slow
def test_cli_bad_crop_border_exits_2_naming_it(tmp_path, model_file, capsys, n, says):
    h5 = tmp_path / "d.h5"
    make_eval_h5(h5)  # 24 x 40: a crop border of 12 leaves nothing
    out = tmp_path / "out"
    assert eval_main(["--model", str(model_file), "--h5", str(h5), "--out", str(out),
                      "--crop-border", n, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and says in err, err
    assert "Traceback" not in err and not (out / "summary.json").exists()


@pytest.mark.slow  # scores a whole run twice
def test_cli_run_crop_border_is_in_metrics_csv_state_and_rescored(tmp_path, snapshots, capsys,
                                                                  monkeypatch):
    run, h5 = make_run(tmp_path, snapshots, epochs=2)
    _border_only_h5(h5)
    args = ["--run", str(run), "--strips", "2", "--limit", "3", "--no-progress", *FIXED_FLAGS]
    loads = []
    real_load = ev.load_generator
    monkeypatch.setattr(ev, "load_generator", lambda p: loads.append(p) or real_load(p))
    out = run / "eval"

    def table() -> list[dict]:
        with (out / "metrics.csv").open() as fh:
            return list(csv.DictReader(fh))

    assert eval_main(args + ["--crop-border", "4"]) == 0
    assert "(crop border 4)" in capsys.readouterr().out
    inner = table()
    assert [r["crop_border"] for r in inner] == ["4", "4"] and len(loads) == 2
    assert float(inner[0]["blurred_psnr"]) == metrics.PSNR_CAP_DB
    state = json.loads((out / "eval_state.json").read_text())
    assert state["settings"]["crop_border"] == 4
    assert eval_main(args + ["--crop-border", "4"]) == 0  # same crop: nothing re-scored
    assert len(loads) == 2
    assert eval_main(args) == 0  # another crop: every epoch again
    assert len(loads) == 4
    whole = table()
    assert [r["crop_border"] for r in whole] == ["0", "0"]
    assert float(whole[0]["blurred_psnr"]) < 20
    assert "crop_border" not in json.loads((out / "eval_state.json").read_text())["settings"]


# --- protocols: basicsr and the Y channel -------------------------------------------------
def _gaussian_window_2d() -> np.ndarray:
    """BasicSR's window, built independently: cv2.getGaussianKernel(11, 1.5) is
    exp(-x^2 / (2 sigma^2)) over x = -5..5, normalised; the window is its outer product."""
    x = np.linspace(-5.0, 5.0, 11)
    g = np.exp(-x**2 / 4.5)
    g = g / g.sum()
    return np.outer(g, g)


def _reference_basicsr_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM as BasicSR's _ssim does it: 2-D valid convolutions, per channel, mean."""
    from scipy.signal import convolve2d

    window = _gaussian_window_2d()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    a, b = a.astype(np.float64), b.astype(np.float64)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    scores = []
    for c in range(a.shape[-1]):
        x, y = a[..., c], b[..., c]

        def f(img):
            return convolve2d(img, window, mode="valid")

        mu1, mu2 = f(x), f(y)
        s1, s2, s12 = f(x * x) - mu1**2, f(y * y) - mu2**2, f(x * y) - mu1 * mu2
        assert mu1.shape == (x.shape[0] - 10, x.shape[1] - 10)  # valid region only
        smap = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
        scores.append(smap.mean())
    return float(np.mean(scores))


def _reference_y(rgb: np.ndarray) -> np.ndarray:
    """MATLAB's rgb2ycbcr luma, float32 arithmetic as BasicSR's to_y_channel."""
    x = rgb.astype(np.float32) / np.float32(255.0)  # bgr2ycbcr's input range [0, 1]
    y = x[..., 0] * np.float32(65.481) + x[..., 1] * np.float32(128.553) \
        + x[..., 2] * np.float32(24.966) + np.float32(16.0)  # [16, 235]
    y = y / np.float32(255.0)  # its float output range, and to_y_channel's * 255
    return (y * np.float32(255.0)).astype(np.float64)


def _reference_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


@pytest.mark.parametrize("shape, n", [((32, 40, 3), 0), ((37, 29, 3), 3), ((64, 64, 3), 8)])
def test_basicsr_metrics_equal_independent_implementations_on_synthetic_pairs(shape, n):
    rng = np.random.default_rng(sum(shape) + n)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, shape), 0, 255).astype(np.uint8)
    ca, cb = a[n:shape[0] - n, n:shape[1] - n], b[n:shape[0] - n, n:shape[1] - n]
    got = metrics.ssim(a, b, n, "basicsr")
    assert abs(got - _reference_basicsr_ssim(ca, cb)) < 1e-6
    # The same as scikit-image with BasicSR's choices: its mean skips a 5-pixel border,
    # i.e. it too averages the valid region only.
    want = structural_similarity(ca, cb, channel_axis=-1, data_range=255, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False)
    assert abs(got - want) < 1e-6
    assert abs(got - metrics.ssim(a, b, n)) > 1e-4  # and not the skimage protocol's number
    assert abs(metrics.psnr(a, b, n, "basicsr") - _reference_psnr(ca, cb)) < 1e-6
    # Y channel: both metrics on the luma.
    ya, yb = _reference_y(ca), _reference_y(cb)
    assert abs(metrics.psnr(a, b, n, "basicsr", True) - _reference_psnr(ya, yb)) < 1e-6
    assert abs(metrics.ssim(a, b, n, "basicsr", True) - _reference_basicsr_ssim(ya, yb)) < 1e-6
    sk_y = structural_similarity(ya, yb, data_range=255)
    assert abs(metrics.ssim(a, b, n, "skimage", True) - sk_y) < 1e-6
    assert metrics.psnr(a, a, n, "basicsr", True) == math.inf


def test_y_channel_is_bt601_luma_in_16_to_235():
    every = np.stack(np.meshgrid(*[np.arange(0, 256, 15, dtype=np.uint8)] * 3, indexing="ij"),
                     axis=-1).reshape(-1, 1, 3)
    y = metrics.rgb_to_y(every)
    assert y.dtype == np.float64 and y.shape == every.shape[:2]
    assert metrics.rgb_to_y(np.zeros((1, 1, 3), np.uint8))[0, 0] == pytest.approx(16.0, abs=1e-5)
    assert metrics.rgb_to_y(np.full((1, 1, 3), 255, np.uint8))[0, 0] == pytest.approx(235.0, abs=1e-4)
    assert 16.0 - 1e-4 <= y.min() and y.max() <= 235.0 + 1e-4
    rgb = every.astype(np.float64)
    exact = 16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255
    np.testing.assert_allclose(y, exact, atol=1e-4)  # float32 arithmetic, float64 result
    np.testing.assert_allclose(y, _reference_y(every), atol=1e-4)
    # Pure red, green and blue: their weights.
    primaries = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    np.testing.assert_allclose(metrics.rgb_to_y(primaries)[0], [81.481, 144.553, 40.966], atol=1e-4)


@pytest.mark.slow
def test_metrics_agree_with_independent_basicsr_on_real_pairs(pairs_small):
    paths = sorted((pairs_small / "test").glob("*.jpg"))[:4]
    assert len(paths) == 4
    gaps = []
    for sharp, blurred in map(read_halves, paths):
        n = 8
        cs, cb = sharp[n:-n, n:-n], blurred[n:-n, n:-n]
        assert abs(metrics.ssim(sharp, blurred, n, "basicsr") - _reference_basicsr_ssim(cs, cb)) < 0.001
        assert abs(metrics.psnr(sharp, blurred, n, "basicsr") - _reference_psnr(cs, cb)) < 0.01
        ys, yb = _reference_y(cs), _reference_y(cb)
        assert abs(metrics.psnr(sharp, blurred, n, "basicsr", True) - _reference_psnr(ys, yb)) < 0.01
        assert abs(metrics.ssim(sharp, blurred, n, "basicsr", True)
                   - _reference_basicsr_ssim(ys, yb)) < 0.001
        gaps.append(metrics.ssim(sharp, blurred, n, "basicsr") - metrics.ssim(sharp, blurred, n))
    # The protocols differ on real images by more than the tolerance: the choice matters.
    assert max(abs(g) for g in gaps) > 0.001, gaps


def test_basicsr_window_and_protocol_errors_name_the_crop_and_size():
    a = np.zeros((32, 40, 3), np.uint8)
    with pytest.raises(DgfError, match=r"crop border 11 leaves 18x10 of a 40x32 image, less "
                                       r"than the 11x11 window of basicsr SSIM"):
        metrics.ssim(a, a, 11, "basicsr")
    assert metrics.ssim(a, a, 10, "basicsr") == pytest.approx(1.0)  # 12x20 is enough
    with pytest.raises(DgfError, match=r"less than the 7x7 window of skimage SSIM"):
        metrics.ssim(a, a, 13)
    with pytest.raises(DgfError, match=r"metric protocol must be one of skimage, basicsr; "
                                       r"got 'matlab'"):
        metrics.psnr(a, a, 0, "matlab")
    assert metrics.describe_settings() == ""
    assert metrics.describe_settings(8, "basicsr", True) == "crop border 8, basicsr protocol, Y channel"


def test_evaluate_split_caches_the_baseline_per_protocol_and_channel(tmp_path):
    h5 = tmp_path / "d.h5"
    sharp, blurred = make_eval_h5(h5)
    generator = _identity_generator()
    for protocol, y in (("skimage", False), ("basicsr", False), ("basicsr", True),
                        ("skimage", True)):
        summary, rows = _split(generator, h5, limit=3, crop_border=1, protocol=protocol,
                               y_channel=y)
        idx = [r["index"] for r in rows]
        want = np.mean([metrics.ssim(sharp[i], blurred[i], 1, protocol, y) for i in idx])
        assert summary["blurred_ssim"] == pytest.approx(want, abs=1e-12)
        assert (summary["protocol"], summary["y_channel"], summary["crop_border"]) == (protocol, y, 1)
        assert all((r["protocol"], r["y_channel"]) == (protocol, y) for r in rows)
    h5_state = ev._run_settings(h5, [1], _options(), "fp32")
    assert "protocol" not in h5_state and "y_channel" not in h5_state
    assert ev._run_settings(h5, [1], _options(protocol="basicsr", y_channel=True), "fp32") == {
        **h5_state, "protocol": "basicsr", "y_channel": True}


@pytest.mark.slow  # runs the whole command end to end
def test_cli_protocol_and_y_channel_are_written_with_the_scores(tmp_path, model_file, capsys):
    h5 = tmp_path / "d.h5"
    sharp, blurred = make_eval_h5(h5, height=32)
    out = tmp_path / "out"
    assert eval_main(["--model", str(model_file), "--h5", str(h5), "--out", str(out),
                      "--strips", "2", "--crop-border", "2", "--protocol", "basicsr",
                      "--y-channel", "--no-progress", *FIXED_FLAGS]) == 0
    assert f"{COUNT} pairs (crop border 2, basicsr protocol, Y channel):" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["protocol"], summary["y_channel"], summary["crop_border"]) == ("basicsr", True, 2)
    want = np.mean([metrics.psnr(s, b, 2, "basicsr", True) for s, b in zip(sharp, blurred)])
    assert summary["blurred_psnr"] == pytest.approx(want, abs=1e-9)
    with (out / "per_image.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == scoring.ROW_KEYS and len(rows) == COUNT
    assert {(r["protocol"], r["y_channel"], r["crop_border"]) for r in rows} == {
        ("basicsr", "True", "2")}
    # The default protocol is named too.
    assert eval_main(["--model", str(model_file), "--h5", str(h5), "--out", str(tmp_path / "d"),
                      "--strips", "2", "--no-progress", *FIXED_FLAGS]) == 0
    plain = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert (plain["protocol"], plain["y_channel"]) == ("skimage", False)


def test_cli_bad_protocol_or_window_crop_exits_2(tmp_path, model_file, capsys):
    h5 = tmp_path / "d.h5"
    make_eval_h5(h5)  # 24 x 40
    out = tmp_path / "out"
    base = ["--model", str(model_file), "--h5", str(h5), "--out", str(out), "--no-progress"]
    assert eval_main(base + ["--protocol", "basicsr", "--crop-border", "7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: crop border 7 leaves 26x10 of a 40x24 image, less than the "
                          "11x11 window of basicsr SSIM"), err
    assert "Traceback" not in err and not (out / "summary.json").exists()
    with pytest.raises(SystemExit, match="^2$"):
        eval_main(base + ["--protocol", "matlab"])
    assert "invalid choice: 'matlab'" in capsys.readouterr().err
