"""The generator shipped in dgf/weights: it loads safely, and it deblurs real pairs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import noise_image, plain, read_halves
from dgf.cli import deblur_main
from dgf.metrics import psnr, ssim
from dgf.metadata import read_metadata, training_side
from dgf.models import generator_layout, is_residual
from dgf.weights import MODEL_CARD, bundled_model


def _test_pairs(root: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` evenly spaced side-by-side test pairs (sharp | blurred), uint8."""
    files = sorted((root / "test").glob("*.jpg"))
    chosen = [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]
    sharp, blurred = zip(*map(read_halves, chosen))
    return np.stack(sharp), np.stack(blurred)


def test_bundled_model_loads_in_safe_mode_with_its_card():
    path = bundled_model()
    assert path.stat().st_size < 5_000_000  # small enough to ship
    model = keras.models.load_model(path, safe_mode=True)
    assert is_residual(model)
    assert generator_layout(model) == {"channel_rate": 32, "blocks": 10, "residual": True,
                                       "batchnorm": False, "space_to_depth": 4}
    card = MODEL_CARD.read_text(encoding="utf-8").lower()
    for needed in ("configs/cpu-pairs-small-s2d4.yaml", "psnr", "ssim", "not good for",
                   "crop border 8", "--scale auto", "commit"):
        assert needed in card
    # The file says what it learned on, so --scale auto can use it.
    record = read_metadata(path)
    # Written before --blocks existed: its record leaves out the ten blocks every
    # generator then had.
    assert {"blocks": 10, **record["layout"]} == generator_layout(model)
    assert training_side(record) == 256 and record["best"]["crop_border"] == 8


@pytest.mark.slow
def test_bundled_model_beats_the_blurred_input_on_real_pairs(pairs_small):
    sharp, blurred = _test_pairs(pairs_small, 8)
    model = keras.models.load_model(bundled_model())
    deblurred = plain(model, batch=4).deblur_batch(blurred)
    # On the interior (8 px cut at each side), not the border the blurring darkened.
    gain_psnr = np.mean([psnr(s, d, 8) - psnr(s, b, 8)
                         for s, b, d in zip(sharp, blurred, deblurred)])
    gain_ssim = np.mean([ssim(s, d, 8) - ssim(s, b, 8)
                         for s, b, d in zip(sharp, blurred, deblurred)])
    assert gain_psnr > 0.5, gain_psnr
    assert gain_ssim > 0.02, gain_ssim


@pytest.mark.slow  # runs the whole command end to end
def test_dgf_deblur_uses_the_bundled_model_without_model(tmp_path, capsys):
    photo = tmp_path / "in.png"
    Image.fromarray(noise_image(0, 40, 56)).save(photo)
    status = deblur_main([str(photo), "-o", str(tmp_path / "out"), "--quiet"])
    out = capsys.readouterr().out
    assert status == 0
    assert f"using the bundled model {bundled_model()}" in out
    with Image.open(tmp_path / "out" / "in.png") as result:
        assert result.size == (56, 40)


def _score_table(text: str, where: str) -> dict[str, list[float]]:
    """The rows 'blurred input' and 'bundled model' of a page's score table: interior
    PSNR, SSIM, whole-image PSNR, SSIM (gains in brackets left out)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip(" *") for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in ("blurred input", "bundled model"):
            numbers = [re.findall(r"(\d+\.\d+)(?: dB)? / (\d\.\d+)", cell)[0] for cell in cells[1:]]
            rows[cells[0]] = [float(v) for pair in numbers for v in pair]
    assert set(rows) == {"blurred input", "bundled model"}, f"no score table in {where}"
    return rows


def test_readme_results_model_card_and_the_bundled_record_give_the_same_scores():
    from dgf.info import model_info

    record = read_metadata(bundled_model())
    by_border = {e["crop_border"]: e for e in record["evaluations"]
                 if e["split"] == "test" and e["count"] == record["data"]["test_pairs"]
                 and e["protocol"] == "skimage" and not e["y_channel"]}
    inner, whole = by_border[8], by_border[0]
    want = {"blurred input": [inner["blurred_psnr"], inner["blurred_ssim"],
                              whole["blurred_psnr"], whole["blurred_ssim"]],
            "bundled model": [inner["psnr"], inner["ssim"], whole["psnr"], whole["ssim"]]}
    root = Path(__file__).resolve().parents[1]
    pages = {name: (root / name).read_text(encoding="utf-8")
             for name in ("README.md", "docs/results.md")}
    pages["MODEL_CARD.md"] = MODEL_CARD.read_text(encoding="utf-8")
    for where, text in pages.items():
        assert f"all {record['data']['test_pairs']} test pairs" in text, where
        got = _score_table(text, where)
        for row, values in want.items():
            # PSNR to 0.01 dB, SSIM to 0.001, as the pages round them.
            assert got[row] == pytest.approx(values, abs=0.0051), (where, row, got[row], values)
    # dgf-info --json carries the same record and says how many pairs each score used.
    info = model_info(bundled_model())
    assert info["metadata"]["evaluations"] == record["evaluations"]
    assert any(f"{inner['psnr']:.2f} dB / {inner['ssim']:.4f} on 64 test pairs" in line
               for line in info["evaluations"])
    assert "on 32 test pairs at crop border 8" in info["training"]


@pytest.mark.slow  # scores the bundled model on all 64 real test pairs
def test_the_bundled_record_is_what_dgf_eval_measures(pairs_small, tmp_path):
    from dgf.cli import build_hdf5_main, eval_main

    h5 = tmp_path / "pairs-small.h5"
    assert build_hdf5_main([str(pairs_small), "-o", str(h5), "--no-progress"]) == 0
    entry = next(e for e in read_metadata(bundled_model())["evaluations"]
                 if e["crop_border"] == 8)
    out = tmp_path / "eval"
    assert eval_main(["--model", str(bundled_model()), "--h5", str(h5), "--crop-border", "8",
                      "-o", str(out), "--no-progress", "--engine", "tensorflow",
                      "--jit", "off"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == entry["count"] == 64
    for key in ("psnr", "ssim", "blurred_psnr", "blurred_ssim"):
        assert summary[key] == pytest.approx(entry[key], abs=1e-3), key
