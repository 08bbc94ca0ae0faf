"""--jit and --precision auto on dgf-deblur, dgf-eval and the trainer's scoring."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import make_eval_h5, smooth_photo
from dgf import actions, calibration, predictor, runtime
from dgf.cli import deblur_main, eval_main
from dgf.config import TrainConfig
from dgf.errors import DgfError


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(smooth_photo(40, 56, seed=3)).save(path)
    return path


@pytest.mark.parametrize("main, extra", [(deblur_main, ["-o", "out"]),
                                         (eval_main, ["--h5", "x.h5"])])
def test_unknown_jit_is_argparse_choices(main, extra, photo, capsys):
    args = ([str(photo)] + extra if main is deblur_main else ["--model", str(photo)] + extra)
    with pytest.raises(SystemExit, match="^2$") as exc:  # argparse's usage error
        main(args + ["--jit", "fast"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --jit: invalid choice: 'fast'" in err and "'auto', 'on', 'off'" in err


@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
def test_deblur_jit_on_off_auto_give_the_same_image(photo, model_file, tmp_path, capsys):
    images = {}
    for jit in ("on", "off", "auto"):
        out = tmp_path / jit
        # TensorFlow's paths only: auto chooses between XLA and no XLA here (the other
        # engines' outputs are compared in tests/test_engines.py).
        assert deblur_main([str(photo), "-o", str(out), "--model", str(model_file),
                            "--jit", jit, "--precision", "fp32", "--scale", "1",
                            "--engine", "tensorflow", "--quiet"]) == 0
        images[jit] = np.asarray(Image.open(out / photo.name)).astype(int)
    assert np.abs(images["on"] - images["off"]).max() <= 1
    assert np.abs(images["auto"] - images["off"]).max() <= 1
    # The generator changed the photo, so equal outputs are not a copy of the input.
    assert np.abs(images["off"] - np.asarray(Image.open(photo)).astype(int)).max() > 0


@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
def test_deblur_defaults_to_precision_auto(photo, model_file, tmp_path, capsys,
                                           monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2"})
    # The precision's default, on one path (auto would calibrate every engine first).
    assert deblur_main([str(photo), "-o", str(tmp_path / "o"), "--model",
                        str(model_file), "--quiet", "--engine", "tensorflow",
                        "--jit", "off"]) == 0
    assert "--precision auto: fp32\n" in capsys.readouterr().out


@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
def test_ctrl_c_during_calibration_is_130_and_leaves_no_entry(photo, model_file, tmp_path,
                                                             monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(calibration.CACHE_ENV, str(cache))
    real = runtime.compiled_generator

    def ctrl_c_in_xla(copy, jit_compile=False):
        if not jit_compile:
            return real(copy, jit_compile)

        def interrupted(x):
            raise KeyboardInterrupt

        return interrupted

    monkeypatch.setattr(runtime, "compiled_generator", ctrl_c_in_xla)
    # Work enough to be measured for (one photo would run unmeasured): a call each.
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(predictor.MEASURE_CALLS_PER_PATH * 4):  # up to four paths at fp32
        (photos / f"p{i}.png").write_bytes(photo.read_bytes())
    out = tmp_path / "o"
    assert deblur_main([str(photos), "-o", str(out), "--model", str(model_file),
                        "--quiet", "--precision", "fp32"]) == 130
    # No calibration entry, and no half-written file anywhere (a finished engine
    # conversion, stored before the timing began, may stay: it is complete).
    files = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert [p for p in files if p.parent.name != "engines" or ".tmp" in p.name] == []
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.slow
def test_eval_passes_jit_and_resolves_precision(model_file, tmp_path, monkeypatch):
    h5 = tmp_path / "pairs.h5"
    make_eval_h5(h5, count=3, height=32, width=32)
    seen = []
    real = predictor.Predictor.call

    def spy(self, calls_per_weights=None):
        seen.append((self.precision, self.spec.jit))
        return real(self, calls_per_weights)

    monkeypatch.setattr(predictor.Predictor, "call", spy)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512_bf16"})
    out = tmp_path / "eval"
    assert eval_main(["--model", str(model_file), "--h5", str(h5), "--out", str(out),
                      "--jit", "off", "--precision", "auto", "--no-progress"]) == 0
    assert seen and set(seen) == {("bf16", "off")}
    import json

    assert json.loads((out / "summary.json").read_text())["precision"] == "bf16"


@pytest.mark.slow
def test_trainer_scoring_uses_eval_jit(tmp_path, monkeypatch, generator):
    h5 = tmp_path / "pairs.h5"
    make_eval_h5(h5, count=2, height=32, width=32)
    with pytest.raises(DgfError, match="eval_jit must be one of"):
        TrainConfig(h5=str(h5), eval_jit="fast")
    assert TrainConfig().eval_jit == "auto"
    cfg = TrainConfig(h5=str(h5), run_dir=str(tmp_path / "run"), eval_jit="off")
    asked = []
    real = actions.evaluate_split

    def spy(run, *args, **kwargs):
        asked.append(run.spec.jit)
        return real(run, *args, **kwargs)

    monkeypatch.setattr(actions, "evaluate_split", spy)
    scores, strip = actions.Scoring(cfg, strips=False)(generator, 0)
    assert asked == ["off"] and strip is None
    assert np.isfinite(scores["psnr"])
