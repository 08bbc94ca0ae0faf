"""The generator shipped in dgf/weights: it loads safely, and it deblurs real pairs."""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import noise_image, read_halves
from dgf.cli import deblur_main
from dgf.metrics import psnr, ssim
from dgf.scoring import deblur_array
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
    assert generator_layout(model) == {"channel_rate": 32, "residual": True,
                                       "batchnorm": False, "space_to_depth": 4}
    card = MODEL_CARD.read_text(encoding="utf-8").lower()
    for needed in ("configs/cpu-pairs-small-s2d4.yaml", "psnr", "ssim", "not good for",
                   "crop border 8", "--scale auto", "commit"):
        assert needed in card
    # The file says what it learned on, so --scale auto can use it.
    record = read_metadata(path)
    assert record["layout"] == generator_layout(model)
    assert training_side(record) == 256 and record["best"]["crop_border"] == 8


@pytest.mark.slow
def test_bundled_model_beats_the_blurred_input_on_real_pairs(pairs_small):
    sharp, blurred = _test_pairs(pairs_small, 8)
    model = keras.models.load_model(bundled_model())
    deblurred = deblur_array(model, blurred, batch_size=4)
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
