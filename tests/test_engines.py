"""--engine: ONNX Runtime and OpenVINO beside TensorFlow (dgf/engines/, the engine
table of dgf.options, dgf.predictor.Predictor), their conversion cache, auto and the
commands."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import make_eval_h5, make_run, read_halves, smooth_photo, smooth_photos
from dgf import DISTRIBUTION, actions, calibration, engines, errors, options, predictor, runtime
from dgf.cli import deblur_main, eval_main
from dgf.config import TrainConfig
from dgf.engines import onnx_conversion, onnxruntime_engine, openvino_engine
from dgf.errors import DgfError, install_hint, project_name, source_checkout
from dgf.images import to_unit
from dgf.predictor import Predictor, resolve
from dgf.spec import InferenceSpec
from dgf.weights import bundled_model

OTHERS = ("onnxruntime", "openvino")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder (each test makes its own predictors, which hold the rest)."""
    monkeypatch.setenv(calibration.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _run(generator, **spec):
    """A predictor of ``generator`` with the spec fields given."""
    return Predictor(generator, InferenceSpec(**spec))


@pytest.fixture(scope="module")
def bundled():
    return runtime.load_generator(bundled_model())


def _entries(folder):
    return sorted(p for p in folder.glob("*") if p.is_file()) if folder.exists() else []


def _x(seed=0, batch=2, size=32):
    return to_unit(smooth_photos(batch, size, size, seed=seed))


def _levels(a, b):
    diff = np.abs(a.astype(int) - b.astype(int))
    return int(diff.max()), float(diff.mean())


# --- outputs ----------------------------------------------------------------------------
@pytest.mark.slow
def test_every_engine_matches_tensorflow_on_real_pairs(pairs_small, bundled, cache):
    """The bundled model deblurs real blurred halves tiled (tile 128, 3x4 tiles per
    256x512 pair): each engine within 2 levels (mean under 0.1) of TensorFlow at the
    same precision, and fp32 engines within 2 levels of TensorFlow fp32."""
    files = sorted((pairs_small / "test").glob("*.jpg"))[:3]
    assert files, f"no test pairs in {pairs_small / 'test'}"
    blurred = np.concatenate([read_halves(f)[1] for f in files], axis=1)  # 256 x 768
    run = {}
    for engine, precision in [("tensorflow", "fp32"), ("onnxruntime", "fp32"),
                              ("openvino", "fp32"), ("tensorflow", "bf16"),
                              ("openvino", "bf16")]:
        if precision == "bf16" and engines.engine(engine).precision_reason("bf16"):
            continue  # OpenVINO offers bf16 only on a CPU with native bf16
        run[engine, precision] = _run(bundled, tile=128, overlap=32, precision=precision,
                                      jit="off", engine=engine).deblur_image(blurred)
    reference = run["tensorflow", "fp32"]
    # The model changes the image, so agreement is not a copy of the input.
    assert _levels(reference, blurred)[1] > 1.0
    for (engine, precision), out in run.items():
        assert out.shape == blurred.shape and out.dtype == np.uint8
        worst, mean = _levels(out, run["tensorflow", precision])
        assert worst <= 2 and mean < 0.1, (engine, precision, worst, mean)
        if precision == "fp32":
            worst, mean = _levels(out, reference)
            assert worst <= 1 and mean < 0.01, (engine, worst, mean)


# OpenVINO's run is slow-marked: make test-fast keeps ONNX Runtime's, the same conversion.
@pytest.mark.parametrize("engine", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.slow)])
@pytest.mark.slow
def test_an_engine_call_equals_the_model_in_floats(generator, cache, engine):
    x = _x(1)
    expected = np.asarray(generator(x, training=False))
    run = _run(generator, jit="off", engine=engine)
    got = run.call()(x)
    assert isinstance(got, np.ndarray) and got.shape == x.shape
    assert np.abs(got - expected).max() < 1e-4
    # Another shape and batch reuse the same conversion (OpenVINO compiles it anew).
    y = _x(2, batch=1, size=40)
    np.testing.assert_allclose(run.call()(y), np.asarray(generator(y, training=False)),
                               atol=1e-4)
    assert run.ran_on == {f"{engine} fp32"}


@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
def test_an_engine_follows_the_current_weights(cache):
    keras.utils.set_random_seed(5)
    from dgf.models import build_generator

    g = build_generator(channel_rate=8, blocks=3)
    x = _x(3)
    run = _run(g, engine="onnxruntime")
    before = run.call()(x)
    for w in g.trainable_weights:  # the trainer's next epoch
        w.assign(w * 1.1)
    after = run.call()(x)
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(after, np.asarray(g(x, training=False)), atol=1e-4)
    assert len(_entries(cache / "engines")) == 4  # two conversions, each .onnx + .json


# --- the conversion cache ---------------------------------------------------------------
def _count_conversions(monkeypatch):
    count = []
    real = onnx_conversion.convert

    def counted(*args):
        count.append(1)
        return real(*args)

    monkeypatch.setattr(onnx_conversion, "convert", counted)
    return count


@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
def test_conversion_is_cached_on_disk(generator, cache, monkeypatch):
    count = _count_conversions(monkeypatch)
    x = _x(4)
    first = _run(generator, engine="openvino").call()(x)
    assert len(count) == 1
    assert sorted(p.suffix for p in _entries(cache / "engines")) == [".json", ".onnx"]
    # A new predictor (a new command): only the disk remembers.
    again = _run(generator, engine="openvino").call()(x)
    assert len(count) == 1
    np.testing.assert_array_equal(first, again)


@pytest.fixture(scope="module")
def good_entry(generator, tmp_path_factory):
    """The ONNX Runtime conversion cache entry of ``generator`` (model and record),
    converted once for the damaged-entry tests: {file name: bytes}."""
    folder = tmp_path_factory.mktemp("good-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(calibration.CACHE_ENV, str(folder))
        _run(generator, engine="onnxruntime").call()(_x(5))
    return {p.name: p.read_bytes() for p in (folder / "engines").glob("*")}


@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
@pytest.mark.parametrize("damage", ["truncate", "record", "key", "no record"])
def test_a_damaged_or_stale_conversion_is_converted_again(generator, cache, good_entry,
                                                          monkeypatch, capsys, damage):
    x = _x(5)
    (cache / "engines").mkdir(parents=True)
    for name, data in good_entry.items():
        (cache / "engines" / name).write_bytes(data)
    (onnx_file,) = (cache / "engines").glob("*.onnx")
    record = onnx_file.with_suffix(".json")
    # The entry as written is taken as it is: no conversion.
    count = _count_conversions(monkeypatch)
    _run(generator, engine="onnxruntime").call()(x)
    assert count == []
    if damage == "truncate":
        onnx_file.write_bytes(onnx_file.read_bytes()[:1000])
    elif damage == "record":
        record.write_text("{not json")
    elif damage == "key":
        meta = json.loads(record.read_text())
        meta["key"]["tf2onnx"] = "0.0"
        record.write_text(json.dumps(meta))
    else:
        record.unlink()
    # Converting again is what is tested, not tf2onnx: it gives the good bytes.
    monkeypatch.setattr(onnx_conversion, "convert",
                        lambda *args: count.append(1) or good_entry[onnx_file.name])
    capsys.readouterr()
    out = _run(generator, engine="onnxruntime").call()(x)
    assert len(count) == 1
    assert f"engine conversion cache entry {onnx_file} is damaged or stale" in \
        capsys.readouterr().err
    np.testing.assert_allclose(out, np.asarray(generator(x, training=False)), atol=1e-4)
    meta = json.loads(record.read_text())  # rewritten whole
    assert meta["size"] == onnx_file.stat().st_size == len(good_entry[onnx_file.name])


@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
def test_ctrl_c_during_conversion_is_130_and_leaves_no_entry(model_file, cache, tmp_path,
                                                             monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_conversion.tf2onnx.convert, "from_function", interrupted)
    photo = tmp_path / "photo.png"
    Image.fromarray(smooth_photo(40, 56, seed=3)).save(photo)
    out = tmp_path / "o"
    assert deblur_main([str(photo), "-o", str(out), "--model", str(model_file),
                        "--engine", "openvino", "--precision", "fp32", "--quiet"]) == 130
    assert [p for p in cache.rglob("*") if p.is_file()] == []
    assert not (out / photo.name).exists()


@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
def test_an_unwritable_cache_costs_only_a_note(generator, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(calibration.CACHE_ENV, str(blocker))
    x = _x(6)
    out = _run(generator, engine="onnxruntime").call()(x)
    assert "could not store the converted model" in capsys.readouterr().err
    np.testing.assert_allclose(out, np.asarray(generator(x, training=False)), atol=1e-4)


# --- what cannot run --------------------------------------------------------------------
def _checkout(root: Path, pyproject: str | None) -> Path:
    """A folder ``root`` with a ``dgf`` package folder and, unless None, this
    pyproject.toml beside it; returns the package folder."""
    (root / "dgf").mkdir(parents=True)
    if pyproject is not None:
        (root / "pyproject.toml").write_text(pyproject, encoding="utf-8")
    return root / "dgf"


def test_install_hints_name_the_index_distribution_or_the_checkout(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    text = (repo / "pyproject.toml").read_text(encoding="utf-8")
    assert project_name(text) == DISTRIBUTION == "deep-generative-filter"
    assert source_checkout(repo / "dgf") == repo
    # An installed copy (no pyproject.toml above it), or another project's checkout.
    index = "pip install 'deep-generative-filter[onnx]'"
    assert install_hint("onnx", _checkout(tmp_path / "site", None)) == index
    other = '[project]\nname = "dgf"\n[tool.x]\nname = "deep-generative-filter"\n'
    assert install_hint("onnx", _checkout(tmp_path / "other", other)) == index
    unreadable = _checkout(tmp_path / "bad", None)
    (unreadable.parent / "pyproject.toml").write_bytes(b"\xff\xfe")
    assert install_hint("onnx", unreadable) == index
    # This project's checkout, under any spelling of its name: install from the folder.
    ours = "[build-system]\nrequires = []\n\n[project]\nname = 'Deep_Generative.Filter'  # x\n"
    package = _checkout(tmp_path / "co", ours)
    assert source_checkout(package) == tmp_path / "co"
    assert install_hint("openvino", package) == f"pip install -e '{tmp_path / 'co'}[openvino]'"
    odd = _checkout(tmp_path / "my 'co'", ours)  # quoted so that a shell gets one argument
    assert shlex.split(install_hint("onnx", odd)) == ["pip", "install", "-e",
                                                      f"{tmp_path}/my 'co'[onnx]"]


def test_the_help_of_the_engine_and_export_options_gives_the_hint(tmp_path, monkeypatch):
    from dgf.commands.evaluation import eval_parser
    from dgf.commands.inference import deblur_parser, export_parser

    # A checkout whose path holds a %, which argparse's %-formatting of help must keep.
    ours = '[project]\nname = "deep-generative-filter"\n'
    monkeypatch.setattr(errors, "PACKAGE_DIR", _checkout(tmp_path / "100% mine", ours))
    for parser, extras in ((deblur_parser, ("onnx", "openvino")),
                           (eval_parser, ("onnx", "openvino")), (export_parser, ("onnx",))):
        text = "".join(parser().format_help().split())  # argparse wraps at - and spaces
        for extra in extras:
            assert "".join(f"pip install -e '{tmp_path}/100% mine[{extra}]'".split()) in text


@pytest.mark.parametrize("engine, module, extra", [("onnxruntime", onnxruntime_engine, "onnx"),
                                                   ("openvino", openvino_engine, "openvino")])
def test_a_missing_engine_names_its_extra(engine, module, extra, model_file, tmp_path,
                                          monkeypatch, capsys, generator, cache):
    from dgf.optional import Lazy

    monkeypatch.setattr(module, engine, Lazy(f"{engine}_not_installed"))  # as if absent
    with monkeypatch.context() as installed:  # an installed copy: the index's distribution
        installed.setattr(errors, "PACKAGE_DIR", _checkout(tmp_path / "site", None))
        with pytest.raises(DgfError, match=re.escape(
                f"install it with pip install 'deep-generative-filter[{extra}]' (or use")):
            engines.engine(engine).check()
    hint = install_hint(extra)  # from this checkout: pip install -e '<checkout>[extra]'
    assert hint.startswith("pip install -e ") and hint.endswith(f"[{extra}]'")
    photo = tmp_path / "photo.png"
    Image.fromarray(smooth_photo(40, 56, seed=3)).save(photo)
    assert deblur_main([str(photo), "-o", str(tmp_path / "o"), "--model", str(model_file),
                        "--engine", engine, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"error: --engine {engine} needs {engine}, which is not installed" in err
    assert hint in err
    # auto leaves it out, says so, and still runs.
    names = _run(generator, precision="fp32").candidates()
    assert engine not in names and {"plain", "xla"} <= set(names)
    assert f"--engine auto leaves out {engine} at fp32" in capsys.readouterr().err


@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
def test_onnxruntime_refuses_bf16_and_auto_precision_is_fp32_there(generator, cache,
                                                                   monkeypatch, model_file,
                                                                   tmp_path, capsys):
    with pytest.raises(DgfError, match=re.escape(
            "--engine onnxruntime cannot run --precision bf16: ONNX Runtime (CPU provider) "
            "does not run bf16 in dgf (engines that do: tensorflow, openvino)")):
        engines.engine("onnxruntime").check("bf16")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512_bf16"})
    assert resolve(InferenceSpec(precision="auto", engine="onnxruntime")) == "fp32"
    assert resolve(InferenceSpec(precision="auto", engine="tensorflow")) == "bf16"
    photo = tmp_path / "photo.png"
    Image.fromarray(smooth_photo(40, 56, seed=3)).save(photo)
    assert deblur_main([str(photo), "-o", str(tmp_path / "o"), "--model", str(model_file),
                        "--engine", "onnxruntime", "--quiet"]) == 0
    assert "--precision auto: fp32 (onnxruntime runs fp32 only)" in capsys.readouterr().out
    assert deblur_main([str(photo), "-o", str(tmp_path / "o2"), "--model", str(model_file),
                        "--engine", "onnxruntime", "--precision", "bf16", "--quiet"]) == 2
    assert "does not run bf16" in capsys.readouterr().err


@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
def test_a_model_that_cannot_convert_names_file_and_engine(model_file, cache, tmp_path,
                                                           monkeypatch, capsys):
    def unsupported(*args, **kwargs):
        raise ValueError("tf2onnx cannot map op FancyOp")

    monkeypatch.setattr(onnx_conversion.tf2onnx.convert, "from_function", unsupported)
    photo = tmp_path / "photo.png"
    Image.fromarray(smooth_photo(40, 56, seed=3)).save(photo)
    assert deblur_main([str(photo), "-o", str(tmp_path / "o"), "--model", str(model_file),
                        "--engine", "onnxruntime", "--precision", "fp32", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{model_file} cannot be converted for --engine onnxruntime" in err
    assert "use --engine tensorflow" in err and "Traceback" not in err
    # auto, measuring (photos enough to repay it: a call each), leaves both engines out
    # with that note, and TensorFlow deblurs the photos.
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(predictor.MEASURE_CALLS_PER_PATH * 4):
        (photos / f"p{i}.png").write_bytes(photo.read_bytes())
    assert deblur_main([str(photos), "-o", str(tmp_path / "a"), "--model", str(model_file),
                        "--precision", "fp32", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "--engine auto leaves out onnxruntime" in err and "cannot be converted" in err
    assert "calibrated the fp32 call" in err
    assert len(list((tmp_path / "a").iterdir())) == predictor.MEASURE_CALLS_PER_PATH * 4


@pytest.mark.slow  # a process of its own: what it imported is the point
def test_a_deblur_on_tensorflow_imports_no_conversion_tools(model_file, tmp_path):
    """tf2onnx and onnx (0.16 s of a command's start) load only when a conversion is
    made: one photo, unmeasured on TensorFlow under --engine auto, imports neither."""
    import os
    import subprocess
    import sys

    photo = tmp_path / "photo.png"
    Image.fromarray(smooth_photo(40, 56, seed=3)).save(photo)
    code = ("import sys; from dgf.cli import deblur_main; code = deblur_main(); "
            "print(sorted(m for m in ('tf2onnx', 'onnx') if m in sys.modules)); "
            "sys.exit(code)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           calibration.CACHE_ENV: str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code, str(photo), "-o", str(tmp_path / "o"),
                           "--model", str(model_file), "--precision", "fp32"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "not measured" in done.stderr and (tmp_path / "o" / photo.name).is_file()
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_optional_modules_load_on_first_use_and_say_what_is_missing():
    from dgf.optional import Lazy

    absent = Lazy("dgf_no_such_module")
    assert absent.missing() == "ModuleNotFoundError: No module named 'dgf_no_such_module'"
    for _ in range(2):
        with pytest.raises(ImportError, match="No module named 'dgf_no_such_module'"):
            absent.anything
    import sys

    sys.modules.pop("colorsys", None)
    present = Lazy("colorsys")
    assert present.missing() is None and "colorsys" not in sys.modules
    assert present.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    assert "colorsys" in sys.modules and present.module() is sys.modules["colorsys"]
    assert Lazy("json").__version__ == sys.modules["json"].__version__


def test_unknown_engine_is_argparse_choices(model_file, tmp_path, capsys):
    with pytest.raises(SystemExit, match="^2$") as exc:  # argparse's usage error
        deblur_main([str(tmp_path / "x.png"), "-o", "o", "--model", str(model_file),
                     "--engine", "tensorrt"])
    assert exc.value.code == 2
    assert "argument --engine: invalid choice: 'tensorrt'" in capsys.readouterr().err
    with pytest.raises(DgfError, match="unknown engine 'tensorrt'"):
        InferenceSpec(engine="tensorrt")
    with pytest.raises(DgfError, match="unknown engine 'tensorrt'"):
        engines.engine("tensorrt")


# --- auto ---------------------------------------------------------------------------------
@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
def test_auto_measures_every_engine_and_keeps_the_fastest(generator, cache, capsys):
    x = _x(7)
    run = _run(generator)
    call = run.call()
    out = np.asarray(call(x))
    (path,) = _entries(cache / "calibration")
    entry = json.loads(path.read_text())
    assert entry["key"]["candidates"] == ["plain", "xla", *OTHERS]
    assert set(entry["seconds"]) == {"plain", "xla", *OTHERS}
    assert entry["key"]["onnxruntime"] and entry["key"]["openvino"]  # their versions
    assert entry["choice"] == min(entry["seconds"], key=entry["seconds"].get)
    assert call.choices[x.shape] == entry["choice"]
    err = capsys.readouterr().err
    assert "calibrated the fp32 call on 2x32x32x3: no XLA" in err and "onnxruntime" in err
    assert "note: inference runs on" in err
    assert run.ran_on == {f"{entry['choice']} fp32"}
    np.testing.assert_allclose(out, np.asarray(generator(x, training=False)), atol=1e-4)


@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
@pytest.mark.parametrize("stored", OTHERS)
def test_a_stored_engine_choice_is_the_engine_run(generator, cache, monkeypatch, stored):
    x = _x(8)
    run = _run(generator)
    call = run.call()
    seconds = {"plain": 2.0, "xla": 2.0, "onnxruntime": 2.0, "openvino": 2.0, stored: 1.0}
    calibration.write_entry(call._key(x.shape), seconds, stored)
    asked = []
    real = run.prepare

    def spy(path):
        if path in ("plain", "xla"):
            pytest.fail("prepared TensorFlow")
        asked.append(path)
        return real(path)

    monkeypatch.setattr(run, "prepare", spy)
    out = call(x)
    assert asked == [stored]
    np.testing.assert_allclose(out, np.asarray(generator(x, training=False)), atol=1e-4)


@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
def test_auto_counts_the_conversion_when_the_weights_change(generator, cache, monkeypatch):
    """The trainer's scoring (``refresh_calls``): an engine whose conversion costs
    more than TensorFlow's whole pass loses, whatever its per-call speed. The engines
    share one conversion (the second finds it cached), yet each is charged it: the
    next epoch's weights are converted again for whichever one wins."""
    x = _x(9)
    real = onnx_conversion.onnx_bytes
    converted = []

    def slow_once(*args):  # a 100 s conversion, then the cached file
        data, _ = real(*args)
        converted.append(args[3])
        return data, 100.0 if len(converted) == 1 else 0.0

    monkeypatch.setattr(onnx_conversion, "onnx_bytes", slow_once)
    call = _run(generator, jit="off").call(calls_per_weights=2)
    call(x)
    (path,) = _entries(cache / "calibration")
    entry = json.loads(path.read_text())
    assert entry["key"]["refresh_calls"] == 2
    assert converted == ["onnxruntime", "openvino"]
    assert entry["seconds"]["onnxruntime"] > 50 and entry["seconds"]["openvino"] > 50
    assert entry["choice"] == "plain"


@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
def test_trainer_scoring_passes_eval_engine(tmp_path, monkeypatch, generator, cache):
    h5 = tmp_path / "pairs.h5"
    make_eval_h5(h5, count=3, height=32, width=32)
    with pytest.raises(DgfError, match="eval_engine must be one of"):
        TrainConfig(h5=str(h5), eval_engine="tensorrt")
    assert TrainConfig().eval_engine == "auto"
    scores = {}
    asked = []
    real = predictor.Predictor.call

    def spy(self, calls_per_weights=None):
        asked.append((self.spec.engine, calls_per_weights))
        return real(self, calls_per_weights)

    monkeypatch.setattr(predictor.Predictor, "call", spy)
    for engine in ("tensorflow", "openvino"):
        cfg = TrainConfig(h5=str(h5), run_dir=str(tmp_path / engine), eval_engine=engine,
                          eval_jit="off")
        asked.clear()
        scoring = actions.Scoring(cfg, strips=False)
        scores[engine], _ = scoring(generator, 0)
        assert asked and set(asked) == {(engine, 1)}  # 3 pairs: one batch per conversion
        first = scoring.predictor
        scoring(generator, 1)  # the next epoch keeps the run's predictor
        assert scoring.predictor is first
    assert abs(scores["openvino"]["psnr"] - scores["tensorflow"]["psnr"]) < 0.01
    from dgf.optional import Lazy

    monkeypatch.setattr(openvino_engine, "openvino", Lazy("openvino_not_installed"))
    with pytest.raises(DgfError, match=re.escape(install_hint("openvino"))):
        actions.Scoring(TrainConfig(h5=str(h5), eval_engine="openvino"), strips=False)


# --- the commands -------------------------------------------------------------------------
@pytest.mark.slow
def test_dgf_eval_model_and_run_with_each_engine(model_file, tmp_path, cache):
    h5 = tmp_path / "pairs.h5"
    make_eval_h5(h5, count=3, height=32, width=32)
    psnr = {}
    for engine in ("tensorflow", *OTHERS):
        out = tmp_path / engine
        assert eval_main(["--model", str(model_file), "--h5", str(h5), "--out", str(out),
                          "--engine", engine, "--jit", "off", "--no-progress"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["engine"] == engine
        assert f"{'plain' if engine == 'tensorflow' else engine} fp32" in summary["ran_on"]
        psnr[engine] = summary["psnr"]
    assert max(psnr.values()) - min(psnr.values()) < 0.01
    run, _ = make_run(tmp_path, [model_file, model_file])
    assert eval_main(["--run", str(run), "--engine", "openvino", "--no-progress"]) == 0
    assert (run / "eval" / "metrics.csv").read_text().count("\n") == 3


@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
def test_dgf_deblur_with_each_engine_writes_the_same_photo(model_file, tmp_path, cache,
                                                           capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(smooth_photo(72, 90, seed=4)).save(photo)
    images = {}
    for engine in ("tensorflow", *OTHERS, "auto"):
        out = tmp_path / engine
        assert deblur_main([str(photo), "-o", str(out), "--model", str(model_file),
                            "--engine", engine, "--precision", "fp32", "--scale", "1",
                            "--tile", "48", "--overlap", "16", "--quiet"]) == 0
        images[engine] = np.asarray(Image.open(out / photo.name))
    err = capsys.readouterr().err
    assert "note: inference runs on OpenVINO (CPU plugin) at fp32" in err
    assert "note: inference runs on ONNX Runtime (CPU provider) at fp32" in err
    for engine, image in images.items():
        assert image.shape == (72, 90, 3)
        assert _levels(image, images["tensorflow"])[0] <= 1, engine


# --- the table ------------------------------------------------------------------------------
def test_the_engine_table_drives_choices_paths_hints_and_docs():
    """One row per engine: its module's ENGINE, --engine's choices, the calibration
    cache's path names, auto's candidates and docs/inference.md's table follow it."""
    from dgf.commands.inference import deblur_parser

    names = [row.name for row in options.ENGINE_TABLE]
    assert list(engines.ENGINES) == names and options.ENGINES == tuple(names)
    for row in options.ENGINE_TABLE:
        engine = engines.ENGINES[row.name]
        assert engine.row is row and engine.name == row.name
        for path in row.paths:
            assert engines.path_owner(path) is engine
    assert calibration.CHOICES == options.PATHS == ("plain", "xla", "onnxruntime", "openvino")
    choices = next(a.choices for a in deblur_parser()._actions if a.dest == "engine")
    assert list(choices) == ["auto", *names]
    # docs/inference.md's table: one line per row naming its extra and its precisions.
    text = (Path(__file__).resolve().parents[1] / "docs" / "inference.md").read_text()
    lines = text.splitlines()
    start = lines.index("| engine | extra | precisions | runs |") + 2
    table = lines[start:start + len(names) + 1]
    assert not table[-1].startswith("|"), "the table has more rows than ENGINE_TABLE"
    table = table[:-1]
    assert [line.split("`")[1] for line in table] == names
    for line, row in zip(table, options.ENGINE_TABLE):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == (f"`{row.extra}`" if row.extra else "(always)"), line
        assert cells[2] == ", ".join(row.precisions), line


def test_an_engine_row_without_the_precision_names_the_engines_that_run_it(generator):
    with pytest.raises(DgfError, match=re.escape(
            "--engine tensorflow cannot run --precision int8: TensorFlow does not run int8 "
            "in dgf (engines that do: onnxruntime, openvino)")):
        _run(generator, precision="int8", engine="tensorflow")
