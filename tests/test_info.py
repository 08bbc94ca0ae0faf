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


def test_golden_paper_generator(paper_model, capsys):
    path, macs = paper_model
    assert info_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "layout: channel rate 64, residual off, batchnorm on, space to depth 1, " \
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
    assert info["layout"] == {"channel_rate": 64, "residual": False, "batchnorm": True,
                              "space_to_depth": 1, "dilations": [1, 1, 1, 2, 1, 3, 1, 2, 1, 1]}
    assert info["metadata"] is None


def test_size_scales_the_work(paper_model, capsys):
    path, macs = paper_model
    assert info_main([str(path), "--size", "128", "512", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size"] == [128, 512] and info["macs"] == macs  # same pixel count
    assert info_main([str(path), "--size", "64", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] * 16 == macs


def test_space_to_depth_4_and_training_record(tmp_path, capsys):
    from dgf.metadata import write_metadata
    from dgf.models import build_generator

    path = tmp_path / "s2d4.keras"
    build_generator(channel_rate=8, residual=True, space_to_depth=4).save(path)
    record = {"data": {"h5": "pairs.h5", "image_height": 256, "image_width": 320,
                       "train_pairs": 500, "test_pairs": 104},
              "crop": 256, "epoch": 7,
              "best": {"psnr": 25.5, "ssim": 0.7, "crop_border": 8, "protocol": "basicsr",
                       "y_channel": True, "epoch": 6}}
    write_metadata(path, record)
    assert info_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "space to depth 4" in out and "residual on" in out
    assert "receptive field: 140 px" in out
    assert ("training: trained on pairs.h5 (320x256, 500 train pairs), crop 256, epoch 7, "
            "best 25.50 dB / 0.7000 at crop border 8, basicsr protocol, Y (epoch 6), "
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
