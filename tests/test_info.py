"""dgf-info: what a saved generator is (dgf/info.py, dgf-info)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import make_eval_h5
from dgf import __version__
from dgf.cli import eval_main, info_main

# The paper's generator at channel rate 64 (DGF design reference): parameters, and
# about 419 GFLOP = 209 GMACs on one 256 x 256 image.
PAPER_TRAINABLE, PAPER_NON_TRAINABLE, PAPER_GMACS = 3_197_827, 6_912, 209.0


def _independent_macs(model, height: int, width: int) -> int:
    """Multiply-accumulates of every convolution of a space-to-depth-1 generator:
    each runs at the image's resolution ('same' padding, stride 1)."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, c_in, c_out = layer.kernel.shape
            total += height * width * kh * kw * c_in * c_out
    return int(total)


@pytest.fixture(scope="module")
def paper_model(tmp_path_factory) -> tuple[Path, int]:
    from dgf.models import build_generator

    model = build_generator(channel_rate=64)  # the paper's layout, defaults
    path = tmp_path_factory.mktemp("info") / "paper.keras"
    model.save(path)
    return path, _independent_macs(model, 256, 256)


@pytest.mark.slow
def test_golden_paper_generator(paper_model, capsys):
    path, macs = paper_model
    assert info_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "layout: channel rate 64, blocks 10, residual off, batchnorm on, space to depth 1, " \
           "dilations 1 1 1 2 1 3 1 2 1 1" in out
    assert "parameters: 3,197,827 trainable, 6,912 non-trainable" in out
    assert "receptive field: 35 px" in out
    assert "no training metadata" in out
    shown = float(re.search(r"work at 256x256: (\d+\.\d) GMACs \((\d+\.\d) GFLOPs", out).group(1))
    assert shown == round(macs / 1e9, 1)
    assert abs(shown - PAPER_GMACS) / PAPER_GMACS < 0.01
    assert info_main([str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["trainable_params"], info["non_trainable_params"]) == (PAPER_TRAINABLE,
                                                                        PAPER_NON_TRAINABLE)
    assert info["macs"] == macs and info["flops"] == 2 * macs
    assert abs(info["macs"] / 1e9 - PAPER_GMACS) / PAPER_GMACS < 0.01
    assert info["receptive_field"] == 35 and info["size"] == [256, 256]
    assert info["layout"] == {"channel_rate": 64, "blocks": 10, "residual": False,
                              "batchnorm": True,
                              "space_to_depth": 1, "dilations": [1, 1, 1, 2, 1, 3, 1, 2, 1, 1]}
    assert info["metadata"] is None


@pytest.mark.slow
def test_size_scales_the_work(paper_model, capsys):
    path, macs = paper_model
    assert info_main([str(path), "--size", "128", "512", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size"] == [128, 512] and info["macs"] == macs  # same pixel count
    assert info_main([str(path), "--size", "64", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] * 16 == macs


@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
def test_space_to_depth_4_and_training_record(tmp_path, capsys):
    from dgf.metadata import write_metadata
    from dgf.models import build_generator

    path = tmp_path / "s2d4.keras"
    build_generator(channel_rate=8, residual=True, space_to_depth=4).save(path)
    record = {"data": {"h5": "pairs.h5", "image_height": 256, "image_width": 320,
                       "train_pairs": 500, "test_pairs": 104},
              "crop": 256, "epoch": 7,
              "best": {"psnr": 25.5, "ssim": 0.7, "crop_border": 8, "protocol": "basicsr",
                       "y_channel": True, "epoch": 6, "count": 32}}
    write_metadata(path, record)
    assert info_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "space to depth 4" in out and "residual on" in out
    assert "receptive field: 140 px" in out
    assert ("training: trained on pairs.h5 (320x256, 500 train pairs), crop 256, epoch 7, "
            "best 25.50 dB / 0.7000 on 32 test pairs at crop border 8, basicsr protocol, Y "
            "(epoch 6), "
            f"dgf {__version__}") in out
    assert info_main([str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["receptive_field"] == 140
    assert info["metadata"]["best"] == record["best"] and info["metadata"]["epoch"] == 7
    # The dense field runs at 1/4 of the resolution: about 1/16 of the work of the
    # same channel rate at full resolution, and a size that is no multiple of 4 is
    # counted at the padded size the generator runs at.
    assert info_main([str(path), "--size", "254", "254", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] == info["macs"]


def _error(main, argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err, err
    return err


def test_bad_models_get_dgf_evals_messages(tmp_path, capsys):
    import keras

    h5 = tmp_path / "d.h5"
    make_eval_h5(h5)
    inp = keras.Input((None, None, 3))
    keras.Model(inp, keras.layers.GlobalAveragePooling2D()(inp)).save(tmp_path / "disc.keras")
    for bad in (tmp_path / "missing.keras", tmp_path, tmp_path / "disc.keras"):
        says = _error(info_main, [str(bad)], capsys)
        assert says == _error(eval_main, ["--model", str(bad), "--h5", str(h5),
                                          "--out", str(tmp_path / "out")], capsys)
    assert "does not exist" in _error(info_main, [str(tmp_path / "missing.keras")], capsys)
    assert "is a folder" in _error(info_main, [str(tmp_path)], capsys)
    # A generator that is not DGF's.
    keras.Model(inp, keras.layers.Identity()(inp)).save(tmp_path / "plain.keras")
    says = _error(info_main, [str(tmp_path / "plain.keras")], capsys)
    assert "is not a DGF generator" in says
    assert "--size must be two positive numbers of pixels; got 0 256" in _error(
        info_main, [str(tmp_path / "plain.keras"), "--size", "0", "256"], capsys)


@pytest.mark.slow  # runs the whole command end to end
def test_dgf_eval_record_adds_the_score_to_the_model_file_and_dgf_info_shows_it(
        tmp_path, capsys):
    import keras
    import numpy as np

    from conftest import make_eval_h5
    from dgf.cli import eval_main
    from dgf.metadata import read_metadata, write_metadata
    from dgf.models import build_generator

    keras.utils.set_random_seed(5)
    path = tmp_path / "g.keras"
    build_generator(channel_rate=4, residual=True).save(path)
    write_metadata(path, {"data": {"h5": "d.h5", "image_height": 24, "image_width": 40,
                                   "train_pairs": 9, "test_pairs": 7},
                          "crop": 16, "epoch": 3,
                          "best": {"psnr": 30.0, "ssim": 0.9, "crop_border": 0,
                                   "count": 4, "epoch": 3}})
    weights = keras.models.load_model(path).get_weights()
    h5 = tmp_path / "d.h5"
    make_eval_h5(h5)  # 7 pairs of 24 x 40
    common = ["--model", str(path), "--h5", str(h5), "--no-progress", "--record",
              "--engine", "tensorflow", "--jit", "off"]
    assert eval_main(common + ["-o", str(tmp_path / "a"), "--crop-border", "2"]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert f"recorded the scores in {path}" in capsys.readouterr().out
    # Again at the same settings replaces the entry; another crop border adds one.
    assert eval_main(common + ["-o", str(tmp_path / "b"), "--crop-border", "2"]) == 0
    assert eval_main(common + ["-o", str(tmp_path / "c")]) == 0
    record = read_metadata(path)
    assert record["epoch"] == 3 and record["best"]["count"] == 4  # training record kept
    entries = record["evaluations"]
    assert [e["crop_border"] for e in entries] == [2, 0]
    assert entries[0]["count"] == 7 and entries[0]["split"] == "test"
    assert entries[0]["psnr"] == pytest.approx(summary["psnr"])
    assert entries[0]["blurred_ssim"] == pytest.approx(summary["blurred_ssim"])
    # The file still loads, with the same weights, and dgf-info names every pair count.
    assert all(np.array_equal(a, b) for a, b in
               zip(weights, keras.models.load_model(path).get_weights()))
    capsys.readouterr()
    assert info_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "best 30.00 dB / 0.9000 on 4 test pairs at crop border 0" in out
    scored = [line for line in out.splitlines() if line.startswith("scored: ")]
    assert len(scored) == 2
    assert f"{summary['psnr']:.2f} dB / {summary['ssim']:.4f} on 7 test pairs of {h5} at " \
           "crop border 2, skimage protocol, RGB" in scored[0]
    assert not list(tmp_path.glob(".g.keras.tmp*"))  # rewritten atomically, nothing left


def test_dgf_eval_record_belongs_to_model_mode(tmp_path, capsys):
    from dgf.cli import eval_main

    assert eval_main(["--run", str(tmp_path), "--record", "--no-progress"]) == 2
    assert "--record applies to --model" in capsys.readouterr().err
