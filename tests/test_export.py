"""dgf-export: SavedModel and TFLite exports reproduce the Keras generator."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import plain, smooth_photo, smooth_photos
from dgf.cli import export_main
from dgf.errors import install_hint


def _reference(generator, batch: np.ndarray) -> np.ndarray:
    return np.stack([plain(generator, tile=0).deblur_image(image) for image in batch])


def _export(argv: list, capsys) -> tuple[int, str]:
    status = export_main([str(a) for a in argv])
    return status, capsys.readouterr().err


@pytest.mark.slow
def test_savedmodel_matches_keras_at_two_sizes(tmp_path, model_file, generator, capsys):
    import tensorflow as tf

    out = tmp_path / "deblur_savedmodel"
    status, err = _export(["--model", model_file, "--format", "savedmodel", "-o", out],
                          capsys)
    assert status == 0, err
    loaded = tf.saved_model.load(str(out))
    # The folded copy is exported: no BatchNorm statistics left to apply at serving.
    names = [v.name for v in loaded.variables]
    assert names and not any("moving_" in n or "gamma" in n for n in names), names
    serve = loaded.signatures["serving_default"]
    spec = serve.structured_input_signature[1]["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, 3]
    for batch in (smooth_photos(2, 37, 53, seed=1), smooth_photos(1, 64, 29, seed=2)):
        result = serve(images=tf.constant(batch))["deblurred"].numpy()
        assert result.dtype == np.uint8 and result.shape == batch.shape
        expected = _reference(generator, batch)
        assert expected.std() > 5  # varied output, so agreement is meaningful
        # Same graph, same kernels: measured identical; allow one rounding flip.
        assert np.abs(result.astype(int) - expected.astype(int)).max() <= 1

    status, err = _export(["--model", model_file, "--format", "savedmodel", "-o", out],
                          capsys)
    assert status == 2 and "already exists; pass --overwrite" in err
    status, err = _export(["--model", model_file, "--format", "savedmodel", "-o", out,
                           "--overwrite"], capsys)
    assert status == 0, err
    assert (out / "saved_model.pb").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp leftovers


def _tflite_run(interpreter, image: np.ndarray, resize: bool) -> np.ndarray:
    inp = interpreter.get_input_details()[0]
    if resize:
        interpreter.resize_tensor_input(inp["index"], [1, *image.shape])
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], image[None])
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]


@pytest.mark.slow
def test_tflite_dynamic_and_fixed_sizes_match_keras(tmp_path, model_file, generator,
                                                    capsys):
    # LiteRT (the test extra's ai-edge-litert), which replaces tf.lite.Interpreter.
    from ai_edge_litert.interpreter import Interpreter

    dynamic = tmp_path / "dgf.tflite"
    status, err = _export(["--model", model_file, "--format", "tflite", "-o", dynamic],
                          capsys)
    assert status == 0, err
    interpreter = Interpreter(str(dynamic))
    detail = interpreter.get_input_details()[0]
    assert detail["dtype"] == np.uint8
    assert list(detail["shape_signature"]) == [1, -1, -1, 3]
    for image in (smooth_photo(37, 53, seed=3), smooth_photo(48, 70, seed=4)):
        result = _tflite_run(interpreter, image, resize=True)
        assert result.dtype == np.uint8 and result.shape == image.shape
        # TFLite's own float kernels (XNNPACK): measured identical at cr=8 on this
        # CPU; other kernels may reorder float sums, so allow 2 levels.
        diff = np.abs(result.astype(int) - plain(generator, tile=0).deblur_image(image))
        assert diff.max() <= 2

    fixed = tmp_path / "fixed.tflite"
    status, err = _export(["--model", model_file, "--format", "tflite", "-o", fixed,
                           "--input-size", "40", "24"], capsys)
    assert status == 0, err
    interpreter = Interpreter(str(fixed))
    assert list(interpreter.get_input_details()[0]["shape_signature"]) == [1, 40, 24, 3]
    image = smooth_photo(40, 24, seed=5)
    result = _tflite_run(interpreter, image, resize=False)
    assert np.abs(result.astype(int) - plain(generator, tile=0).deblur_image(image)).max() <= 2


@pytest.mark.slow
def test_export_errors(tmp_path, model_file, capsys):
    status, err = _export(["--model", tmp_path / "absent.keras", "--format", "tflite",
                           "-o", tmp_path / "x.tflite"], capsys)
    assert status == 2 and "absent.keras does not exist" in err
    assert not (tmp_path / "x.tflite").exists()

    status, err = _export(["--model", model_file, "--format", "savedmodel",
                           "-o", tmp_path / "sm", "--input-size", "8", "8"], capsys)
    assert status == 2 and "--input-size applies to --format tflite only" in err

    existing = tmp_path / "old.tflite"
    existing.write_bytes(b"keep me")
    status, err = _export(["--model", model_file, "--format", "tflite", "-o", existing],
                          capsys)
    assert status == 2 and "old.tflite already exists" in err
    assert existing.read_bytes() == b"keep me"


# --- ONNX -------------------------------------------------------------------------
def _real_blurred(pairs_small, count: int) -> np.ndarray:
    from PIL import Image

    files = sorted((pairs_small / "test").glob("*.jpg"))[:count]
    assert len(files) == count, f"too few test pairs in {pairs_small / 'test'}"
    halves = []
    for path in files:
        with Image.open(path) as img:
            pair = np.asarray(img.convert("RGB"))
        halves.append(pair[:, pair.shape[1] // 2 :])  # left sharp, right blurred
    return np.stack(halves)


@pytest.mark.slow
def test_onnx_matches_keras_on_real_pairs(tmp_path, pairs_small, capsys):
    import onnx
    import onnxruntime

    from dgf.export import ONNX_OPSET, _is_export
    from dgf.runtime import load_generator
    from dgf.weights import bundled_model

    model = bundled_model()  # trained, and its space-to-depth head pads and reshapes
    out = tmp_path / "dgf.onnx"
    status, err = _export(["--model", model, "--format", "onnx", "-o", out], capsys)
    assert status == 0, err
    proto = onnx.load(str(out))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == \
        [ONNX_OPSET]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, outp.name, outp.type) == (
        "images", "tensor(uint8)", "deblurred", "tensor(uint8)")
    assert [isinstance(d, int) for d in inp.shape] == [False, False, False, True]
    generator = load_generator(model)
    real = _real_blurred(pairs_small, 2)
    # Whole pairs in one batch, and one crop whose sides are no multiple of 4.
    for batch in (real, real[:1, 3:253, 5:208]):
        result = session.run(["deblurred"], {"images": batch})[0]
        assert result.dtype == np.uint8 and result.shape == batch.shape
        expected = _reference(generator, batch)
        assert np.abs(expected.astype(int) - batch).max() > 10  # the model changed them
        assert np.abs(result.astype(int) - expected.astype(int)).max() <= 1
    assert _is_export(out, "onnx")
    status, err = _export(["--model", model, "--format", "onnx", "-o", out], capsys)
    assert status == 2 and "already exists; pass --overwrite" in err
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp leftovers


def test_onnx_export_refusals(tmp_path, model_file, capsys, monkeypatch):
    other = tmp_path / "notes.onnx"
    other.write_bytes(b"my notes")
    status, err = _export(["--model", model_file, "--format", "onnx", "-o", other,
                           "--overwrite"], capsys)
    assert status == 2 and "notes.onnx is not an ONNX file; --overwrite replaces only" in err
    assert other.read_bytes() == b"my notes"
    status, err = _export(["--model", model_file, "--format", "onnx", "-o", tmp_path / "m.onnx",
                           "--input-size", "8", "8"], capsys)
    assert status == 2 and "--input-size applies to --format tflite only" in err
    import dgf.export

    monkeypatch.setattr(dgf.export, "tf2onnx", None)  # as if not installed
    monkeypatch.setattr(dgf.export, "_TF2ONNX_MISSING", "No module named 'tf2onnx'",
                        raising=False)
    status, err = _export(["--model", model_file, "--format", "onnx", "-o",
                           tmp_path / "m.onnx"], capsys)
    assert status == 2 and "error: --format onnx needs tf2onnx" in err
    assert install_hint("onnx") in err  # from this checkout: pip install -e '<checkout>[onnx]'
    monkeypatch.setattr("dgf.errors.PACKAGE_DIR", tmp_path / "site-packages" / "dgf")
    status, err = _export(["--model", model_file, "--format", "onnx", "-o",
                           tmp_path / "m.onnx"], capsys)
    assert "; pip install 'deep-generative-filter[onnx]'" in err  # from an installed copy
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_onnx_conversion_failure_names_the_model(tmp_path, model_file, capsys, monkeypatch):
    import dgf.export

    class Broken:
        class convert:
            @staticmethod
            def from_function(*args, **kwargs):
                raise ValueError("tf2onnx: unsupported op MysteryOp")

    monkeypatch.setattr(dgf.export, "tf2onnx", Broken)
    out = tmp_path / "m.onnx"
    status, err = _export(["--model", model_file, "--format", "onnx", "-o", out], capsys)
    assert status == 2
    assert f"error: ONNX conversion of {model_file} failed: ValueError: tf2onnx: " \
           f"unsupported op MysteryOp" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


# --- int8 -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def residual_model(tmp_path_factory):
    """A small residual generator (space-to-depth 2) whose correction moves pixels a
    few levels, as a trained one does, saved; and an HDF5 file to calibrate on."""
    import keras

    from conftest import make_h5
    from dgf.models import build_generator

    keras.utils.set_random_seed(5)
    model = build_generator(channel_rate=4, residual=True, batchnorm=False, space_to_depth=2)
    kernel, bias = model.get_layer("residual").get_weights()
    noise = np.random.default_rng(0).normal(0, 0.02, kernel.shape).astype("float32")
    model.get_layer("residual").set_weights([noise, bias])
    folder = tmp_path_factory.mktemp("int8")
    model.save(folder / "residual.keras")
    return model, folder / "residual.keras", make_h5(folder / "pairs.h5", n_train=1, n_test=20,
                                                     size=48)


def _interior_psnr(reference: np.ndarray, result: np.ndarray) -> float:
    from dgf.metrics import psnr

    return float(np.mean([psnr(r, o, 8) for r, o in zip(reference, result)]))


@pytest.mark.slow
def test_int8_tflite_and_onnx_exports_run_close_to_fp32(tmp_path, residual_model, capsys,
                                                         monkeypatch):
    import functools

    import onnxruntime
    from ai_edge_litert.interpreter import Interpreter

    import dgf.export
    from dgf.export import _is_export

    # Crops of 64 px, not the default 256 (these small images would be mirrored out to
    # it): the export's path is the same, at a 16th of the calibration's work.
    monkeypatch.setattr(dgf.export, "calibration_set",
                        functools.partial(dgf.export.calibration_set, side=64))

    generator, model, h5 = residual_model
    images = smooth_photos(3, 48, 40, seed=7)  # levels 0-255; calibration spans 32-222
    expected = _reference(generator, images)
    assert _interior_psnr(expected, images) < 35  # the model changes them
    results = {}
    for fmt in ("tflite", "onnx"):
        out = tmp_path / f"int8.{fmt}"
        status = export_main([str(a) for a in ["--model", model, "--format", fmt, "-o", out,
                                               "--quantize", "int8", "--calibration", h5]])
        captured = capsys.readouterr()
        assert status == 0, captured.err
        assert "int8 check passed: interior PSNR (crop border 8) on 8 held-out" in captured.out
        assert f"wrote int8 {fmt} export to {out}" in captured.out and _is_export(out, fmt)
    interpreter = Interpreter(str(tmp_path / "int8.tflite"))
    detail = interpreter.get_input_details()[0]
    assert detail["dtype"] == np.uint8 and list(detail["shape_signature"]) == [1, -1, -1, 3]
    assert interpreter.get_output_details()[0]["dtype"] == np.uint8
    results["tflite"] = np.stack([_tflite_run(interpreter, image, resize=True)
                                  for image in images])
    session = onnxruntime.InferenceSession(str(tmp_path / "int8.onnx"),
                                           providers=["CPUExecutionProvider"])
    assert (session.get_inputs()[0].name, session.get_inputs()[0].type) == \
        ("images", "tensor(uint8)")
    results["onnx"] = session.run(["deblurred"], {"images": images})[0]
    for fmt, result in results.items():
        assert result.dtype == np.uint8 and result.shape == images.shape
        # Measured 49.4 dB and at most 2 levels (TFLite), 51.2 dB and 6 levels (ONNX)
        # on the AVX2 host; 44 dB and 16 levels leave room for other kernels, while
        # TFLite calibrated without the ramp (its clipped pixels) gave 32 dB, 38 levels.
        assert _interior_psnr(expected, result) > 44, fmt
        assert np.abs(result.astype(int) - expected).max() <= 16, fmt


def test_int8_export_refusals(tmp_path, model_file, capsys):
    model, h5 = model_file, tmp_path / "pairs.h5"
    h5.write_bytes(b"")
    out = tmp_path / "q.tflite"
    for argv, message in [
        (["--format", "savedmodel", "-o", tmp_path / "sm", "--quantize", "int8"],
         "--quantize int8 applies to --format tflite or onnx; a savedmodel export keeps"),
        (["--format", "tflite", "-o", out, "--calibration", h5],
         "--calibration applies with --quantize int8 only"),
        (["--format", "tflite", "-o", out, "--quantize", "int8", "--input-size", "40", "24"],
         "--quantize int8 takes no --input-size: TFLite's full-integer conversion of a "
         "fixed-size generator is wrong"),
        (["--format", "tflite", "-o", out, "--quantize", "int8"],
         "records no training HDF5 file to calibrate int8 on; pass --calibration H5|DIR"),
        (["--format", "onnx", "-o", tmp_path / "q.onnx", "--quantize", "int8",
          "--calibration", tmp_path / "nowhere"], "calibration source"),
    ]:
        status, err = _export(["--model", model, *argv], capsys)
        assert status == 2 and message in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.h5"]
