"""Post-training int8 (dgf/quantize.py, dgf/equalise.py): calibration crops, the
quantisers' copy, both quantisers against fp32, the guard and the cache."""
from __future__ import annotations

import json
import re
import zipfile

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, make_h5, make_indexed_h5, smooth_photos, write_photos
from dgf import quantize, runtime
from dgf.equalise import DilatedConv2D, prepared_copy
from dgf.errors import DgfError, install_hint
from dgf.images import to_uint8, to_unit
from dgf.metrics import psnr
from dgf.models import build_generator
from dgf.weights import bundled_model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DGF_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "int8"


@pytest.fixture(scope="module")
def tiny():
    """A small residual generator with space-to-depth 2 and a correction of a few
    levels, like a trained one (a fresh one returns its input exactly)."""
    keras.utils.set_random_seed(5)
    model = build_generator(channel_rate=4, residual=True, batchnorm=False, space_to_depth=2)
    kernel, bias = model.get_layer("residual").get_weights()
    rng = np.random.default_rng(0)
    model.get_layer("residual").set_weights(
        [rng.normal(0, 0.02, kernel.shape).astype("float32"), bias])
    return model


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    path = make_h5(tmp_path_factory.mktemp("h5") / "pairs.h5", n_train=1, n_test=20, size=48)
    return quantize.calibration_set(path, count=40, side=32)


# --- calibration crops --------------------------------------------------------------------
def test_hdf5_crops_pair_up_and_hold_out_whole_images(tmp_path):
    # Every sharp pixel names (row, column, pair); blurred = 255 - sharp.
    path = make_indexed_h5(tmp_path / "pairs.h5", count=20, height=40, width=50)
    cal = quantize.calibration_set(path, count=45, side=24, seed=3)
    assert cal.blurred.shape == (45, 24, 24, 3) and cal.blurred.dtype == np.uint8
    np.testing.assert_array_equal(cal.blurred, 255 - cal.sharp)
    # Each crop is a window of one image: rows and columns advance by one.
    rows, cols, pairs = cal.sharp[..., 0], cal.sharp[..., 1], cal.sharp[..., 2]
    assert (np.diff(rows.astype(int), axis=1) == 1).all()
    assert (np.diff(cols.astype(int), axis=2) == 1).all()
    assert (pairs == pairs[:, :1, :1]).all()
    # 20 images: 8 give one held-out crop each, 12 share the other 37 crops.
    held_pairs = pairs[-cal.held_out_count:, 0, 0].tolist()
    seen_pairs = set(pairs[:-cal.held_out_count, 0, 0].tolist())
    assert cal.held_out_count == len(set(held_pairs)) == 8
    assert len(seen_pairs) == 12 and not set(held_pairs) & seen_pairs
    assert len(cal.held_out.blurred) == 8 and len(cal.calibration.blurred) == 37
    again = quantize.calibration_set(path, count=45, side=24, seed=3)
    other = quantize.calibration_set(path, count=45, side=24, seed=4)
    assert again.digest == cal.digest != other.digest


def test_folder_crops_pad_small_photos_and_skip_unreadable(tmp_path):
    sizes = [(40, 60)] * 17 + [(20, 30)]  # one photo smaller than the crop
    write_photos(tmp_path / "photos" / "sub", sizes, seed=1)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not a jpeg")
    cal = quantize.calibration_set(tmp_path / "photos", count=300, side=32, seed=0)
    assert cal.sharp is None and cal.calibration.sharp is None
    # 19 files: 8 photos give one held-out crop each, the other 11 slots 26 or 27 of
    # the remaining 292 crops each; the broken file's share is lost, and the small
    # photo, with no room to move, gives one crop.
    assert cal.blurred.shape[1:] == (32, 32, 3) and cal.held_out_count == 8
    assert 9 * 26 + 1 <= len(cal.calibration.blurred) <= 10 * 27
    small = np.asarray(Image.open(tmp_path / "photos" / "sub" / "photo17.png"))
    padded = np.pad(small, ((0, 12), (0, 2), (0, 0)), mode="symmetric")
    assert any(np.array_equal(crop, padded) for crop in cal.blurred)


def test_calibration_source_errors(tmp_path):
    write_photos(tmp_path / "few", [(20, 20)] * 3)
    with pytest.raises(DgfError, match=r"few holds 3 JPEG/PNG image\(s\).*at least 16"):
        quantize.calibration_set(tmp_path / "few")
    folder = tmp_path / "mostly_broken"
    write_photos(folder, [(20, 20)] * 10)
    for i in range(8):
        (folder / f"bad{i}.png").write_bytes(b"no png")
    with pytest.raises(DgfError, match=r"mostly_broken holds 10 readable image\(s\) "
                                       r"\(8 of 18 could not be read\)"):
        quantize.calibration_set(folder)
    with pytest.raises(DgfError, match=r"calibration source .*absent does not exist"):
        quantize.calibration_set(tmp_path / "absent")


def _model_with_record(path, record):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.weights.h5", b"")
        if record is not None:
            archive.writestr("dgf.json", json.dumps(record))
    return path


def test_default_calibration_source_is_the_recorded_file_or_asks(tmp_path):
    bare = _model_with_record(tmp_path / "bare.keras", None)
    with pytest.raises(DgfError, match=r"records no training HDF5.*--calibration H5\|DIR"):
        quantize.default_calibration_source(bare)
    gone = _model_with_record(tmp_path / "gone.keras", {"data": {"h5": "nowhere/pairs.h5"}})
    with pytest.raises(DgfError, match=r"nowhere/pairs.h5 that .*gone.keras records is not "
                                       r"here.*--calibration H5\|DIR"):
        quantize.default_calibration_source(gone)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pairs.h5").write_bytes(b"")
    beside = _model_with_record(tmp_path / "beside.keras", {"data": {"h5": "data/pairs.h5"}})
    assert quantize.default_calibration_source(beside) == tmp_path / "data" / "pairs.h5"


def test_missing_engines_name_their_extra(monkeypatch):
    monkeypatch.setitem(quantize._MISSING, "nncf", "No module named 'nncf'")
    with pytest.raises(DgfError, match=r"int8 on --engine openvino needs nncf.*"
                       + re.escape(install_hint("openvino"))):
        quantize.check_int8_engine("openvino")
    monkeypatch.setitem(quantize._MISSING, "onnxruntime", "No module named 'onnxruntime'")
    with pytest.raises(DgfError, match="needs onnxruntime.*" + re.escape(install_hint("onnx"))):
        quantize.check_int8_engine("onnxruntime")
    with pytest.raises(DgfError, match="int8 runs on --engine onnxruntime or openvino"):
        quantize.check_int8_engine("tensorflow")


# --- the guard ----------------------------------------------------------------------------
def _noisy(level: float):
    rng = np.random.default_rng(0)
    return lambda x: np.clip(x + rng.normal(0, level / 127.5, x.shape), -1, 1)


def test_guard_refuses_a_broken_int8_call_with_the_numbers():
    sharp = smooth_photos(8, 24, 24, seed=1)
    noise = np.random.default_rng(2).normal(0, 8, sharp.shape)
    blurred = np.clip(np.rint(sharp + noise), 0, 255).astype(np.uint8)  # about 30 dB
    held = quantize.Crops(blurred=blurred, sharp=sharp)
    identity = lambda x: x  # noqa: E731 - the fp32 "model" returns its input
    close = quantize.check_int8(identity, _noisy(0.2), held)
    assert close.reference == "sharp" and close.drop <= quantize.MAX_DROP
    with pytest.raises(DgfError, match="int8 is not close enough to fp32") as info:
        quantize.check_int8(identity, _noisy(8.0), held)
    broken = quantize.guard_scores(identity, _noisy(8.0), held)
    message = str(info.value)
    assert f"fp32 {broken.fp32_psnr:.3f} dB, int8 {broken.int8_psnr:.3f} dB" in message
    assert f"drop {broken.drop:.3f} dB" in message and broken.drop > quantize.MAX_DROP
    assert "--precision bf16 or --precision fp32" in message
    # Without sharp crops: int8's agreement with fp32 must reach MIN_AGREEMENT_DB.
    photos = quantize.Crops(blurred=blurred, sharp=None)
    assert quantize.check_int8(identity, _noisy(0.5), photos).int8_psnr > 40
    with pytest.raises(DgfError, match=r"agrees with fp32 at 3\d\.\d\d dB.*at least 40"):
        quantize.check_int8(identity, _noisy(4.0), photos)


# --- the quantisers' copy -----------------------------------------------------------------
@pytest.mark.slow
def test_prepared_copy_is_exact_and_equalised(tiny, tiny_set):
    copy = runtime.inference_model(tiny, "fp32")
    prepared = prepared_copy(copy, tiny_set.calibration.blurred)
    assert sum(isinstance(layer, DilatedConv2D) for layer in prepared.layers) == 3
    x = to_unit(smooth_photos(2, 40, 56, seed=2))
    np.testing.assert_allclose(prepared(x), copy(x), atol=1e-5)
    # The head's output channels were rescaled (and its readers' inputs).
    before = copy.get_layer("head_conv").get_weights()[0]
    after = prepared.get_layer("head_conv").get_weights()[0]
    ratios = np.abs(after).max(axis=(0, 1, 2)) / np.abs(before).max(axis=(0, 1, 2))
    assert ratios.std() > 0.05
    np.testing.assert_array_equal(copy.get_layer("head_conv").get_weights()[0], before)


# --- the quantisers -----------------------------------------------------------------------
def _agreement(call, model, images) -> float:
    ref = to_uint8(runtime.inference_model(model, "fp32")(to_unit(images)))
    out = to_uint8(call(to_unit(images)))
    return float(np.mean([psnr(r, o, 8) for r, o in zip(ref, out)]))


@pytest.mark.slow
@pytest.mark.parametrize("engine", quantize.INT8_ENGINES)
def test_each_quantiser_stays_close_to_fp32(engine, tiny, tiny_set, cache, capsys):
    call, report = quantize.int8_call(tiny, engine, tiny_set, source="tiny")
    assert call.engine == engine and not report.cached and report.seconds > 0
    assert report.guard.reference == "sharp" and report.guard.drop <= quantize.MAX_DROP
    images = smooth_photos(3, 48, 40, seed=7)
    out = call(to_unit(images))
    assert out.shape == images.shape and out.dtype == np.float32
    # Measured 46.8 dB (OpenVINO) and 50.1 dB (ONNX Runtime) on the AVX2 host; 42 dB
    # leaves room for other CPUs' int8 kernels, and a copy that lost the model's
    # correction (its input unchanged: 33.7 dB) fails.
    assert _agreement(call, tiny, images) > 42
    assert "quantising tiny to int8" in capsys.readouterr().err


@pytest.mark.slow
def test_bundled_model_int8_within_the_drop_on_real_pairs(cache):
    """The bundled model on real test pairs (pairs-small.h5): each engine's int8 within
    MAX_DROP dB of fp32 interior PSNR on 8 held-out pairs."""
    path = REPO / "data" / "pairs-small.h5"
    if not path.exists():
        pytest.skip("data/pairs-small.h5 not built")
    cal = quantize.calibration_set(path, count=24, side=256)
    generator = runtime.load_generator(bundled_model())
    for engine in quantize.INT8_ENGINES:
        _, report = quantize.int8_call(generator, engine, cal, source="bundled")
        guard = report.guard
        assert guard.crops == 8 and guard.fp32_psnr > 20  # 23.3 dB on these 8
        assert abs(guard.drop) <= quantize.MAX_DROP, (engine, guard)


# --- the cache ----------------------------------------------------------------------------
@pytest.mark.slow
def test_cache_hit_damaged_entry_and_interrupt(tiny, tiny_set, cache, monkeypatch, capsys):
    engine = "onnxruntime"
    _, first = quantize.int8_call(tiny, engine, tiny_set, source="tiny")
    entries = sorted(p.name for p in cache.iterdir())
    assert [p.rsplit(".", 1)[1] for p in entries] == ["json", "onnx"]
    call, second = quantize.int8_call(tiny, engine, tiny_set, source="tiny")
    assert second.cached and second.seconds == 0 and second.guard == first.guard
    capsys.readouterr()

    model = next(cache.glob("*.onnx"))
    model.write_bytes(model.read_bytes()[:-10])  # a torn file
    _, third = quantize.int8_call(tiny, engine, tiny_set, source="tiny")
    err = capsys.readouterr().err
    assert not third.cached and err.count("note: int8 cache entry") == 1
    assert "does not match its record" in err
    _, fourth = quantize.int8_call(tiny, engine, tiny_set, source="tiny")
    assert fourth.cached

    def interrupted(*args):
        raise KeyboardInterrupt("Ctrl-C while quantising")

    for entry in cache.iterdir():
        entry.unlink()
    monkeypatch.setattr(quantize, "quantize_onnxruntime", interrupted)
    with pytest.raises(KeyboardInterrupt, match="Ctrl-C while quantising"):
        quantize.int8_call(tiny, engine, tiny_set, source="tiny")
    assert list(cache.iterdir()) == []


@pytest.mark.slow
def test_a_cached_refusal_refuses_at_once(tiny, tiny_set, cache, monkeypatch):
    monkeypatch.setattr(quantize, "MAX_DROP", -1.0)  # nothing passes
    with pytest.raises(DgfError, match="not close enough to fp32"):
        quantize.int8_call(tiny, "onnxruntime", tiny_set, source="tiny")
    monkeypatch.setattr(quantize, "quantize_files", lambda *a: pytest.fail("quantised again"))
    with pytest.raises(DgfError, match="not close enough to fp32"):
        quantize.int8_call(tiny, "onnxruntime", tiny_set, source="tiny")


# --- through the commands -------------------------------------------------------------------
def _photo(tmp_path):
    from PIL import Image

    from conftest import smooth_photo

    path = tmp_path / "photo.png"
    Image.fromarray(smooth_photo(40, 56, seed=3)).save(path)
    return path


@pytest.mark.slow
def test_int8_on_tensorflow_or_without_calibration_is_refused_up_front(model_file, tmp_path,
                                                                       capsys):
    from dgf.cli import deblur_main, eval_main

    photo, out = _photo(tmp_path), tmp_path / "o"
    argv = [str(photo), "-o", str(out), "--model", str(model_file), "--quiet"]
    assert deblur_main(argv + ["--precision", "int8", "--engine", "tensorflow"]) == 2
    assert ("--engine tensorflow cannot run --precision int8: TensorFlow does not run int8 in "
            "dgf (engines that do: onnxruntime, openvino)") in capsys.readouterr().err
    assert deblur_main(argv + ["--calibration", str(tmp_path)]) == 2
    assert "applies to --precision int8 only" in capsys.readouterr().err
    # model_file records no training data: int8 needs --calibration, said before any image.
    assert deblur_main(argv + ["--precision", "int8", "--engine", "onnxruntime"]) == 2
    err = capsys.readouterr().err
    assert "records no training HDF5 file to calibrate int8 on; pass --calibration" in err
    assert not out.exists() or not any(out.iterdir())
    assert eval_main(["--model", str(model_file), "--h5", str(tmp_path / "x.h5"),
                      "--precision", "int8", "--engine", "tensorflow"]) == 2


@pytest.mark.slow  # quantises a model through dgf-deblur and dgf-eval
@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_dgf_deblur_and_eval_run_int8_close_to_fp32(engine, model_file, tmp_path, capsys,
                                                    monkeypatch):
    import functools
    import json

    from PIL import Image

    from conftest import make_eval_h5
    from dgf.cli import deblur_main, eval_main

    h5 = tmp_path / "pairs.h5"
    make_eval_h5(h5, count=24, height=32, width=32)
    # Crops of 48 px, not the default 256 (these 32 px images would be mirrored out to
    # it): the commands' path is the same, at a 28th of the calibration's work.
    monkeypatch.setattr(quantize, "calibration_set",
                        functools.partial(quantize.calibration_set, side=48))
    photo = _photo(tmp_path)
    images = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / precision
        extra = ["--calibration", str(h5)] if precision == "int8" else []
        assert deblur_main([str(photo), "-o", str(out), "--model", str(model_file), "--quiet",
                            "--engine", engine, "--precision", precision, "--scale", "1",
                            *extra]) == 0
        images[precision] = np.asarray(Image.open(out / photo.name)).astype(int)
    err = capsys.readouterr().err
    assert f"note: inference runs on {'ONNX Runtime' if engine == 'onnxruntime' else 'OpenVINO'}" in err
    assert "int8 on" in err and "drop" in err
    diff = np.abs(images["int8"] - images["fp32"])
    assert diff.mean() < 3 and diff.max() > 0  # quantised: close, not equal
    assert eval_main(["--model", str(model_file), "--h5", str(h5), "--out", str(tmp_path / "e"),
                      "--engine", engine, "--precision", "int8", "--calibration", str(h5),
                      "--no-progress"]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["precision"] == "int8" and summary["ran_on"] == [f"{engine} int8"]


@pytest.mark.slow  # a fresh interpreter importing TensorFlow
def test_commands_do_not_pay_for_the_int8_tools_until_int8_is_asked():
    import subprocess
    import sys

    code = ("import sys, dgf.predictor, dgf.export, dgf.infer, dgf.evaluate; "
            "print(sorted(m for m in ('nncf', 'onnxruntime.quantization') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
