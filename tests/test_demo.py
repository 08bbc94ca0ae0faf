"""`make demo` end to end (tools/demo.py), shortened to two epochs of 2 pairs per
sample photo (18 training pairs, 4 steps an epoch; `make demo` makes 8 per photo)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), "--out", str(out),
                           "--epochs", "2", "--per-image", "2"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Each of the six steps announced the command a user would type.
    for command in ("dgf-make-pairs", "build-hdf5", "dgf-train", "dgf-eval", "dgf-deblur"):
        assert f"$ {command} " in done.stdout, command
    run = out / "run"
    # Scored at its last epoch only (--eval-every 2): one strip, one best model.
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch_0002.png"]
    assert (run / "generator_best.keras").is_file()
    with (run / "eval" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # dgf-eval scores every snapshot
    assert all(float(r["psnr"]) > 10 for r in rows)
    for picture in ("progress.png", "metrics.png"):
        with Image.open(run / "eval" / picture) as img:
            assert img.width > 0 and img.height > 0
    with Image.open(out / "blurred_photo.png") as blurred, \
            Image.open(out / "deblurred" / "blurred_photo.png") as deblurred:
        assert deblurred.size == blurred.size
    assert list((out / "deblurred" / "compare").iterdir())
    assert list((out / "deblurred_bundled" / "compare").iterdir())
    # The large photo comes back at its own size from --scale auto.
    with Image.open(out / "large_shaken_photo.png") as large, \
            Image.open(out / "deblurred_large" / "large_shaken_photo.png") as deblurred:
        assert large.size == deblurred.size == (600, 400)
    # Each step says what it deblurs; nothing synthetic is called real.
    assert "real motion-blurred" not in done.stdout
    assert ("the blurred half of a pairs-small test pair" in done.stdout
            or "the demo's own synthetic blurred test image" in done.stdout)
    # The closing summary: time, epoch-end share, the best epoch against the input.
    assert "demo finished in" in done.stdout and "of the training steps' time" in done.stdout
    assert "test pairs, best epoch (2), PSNR dB / SSIM:" in done.stdout
    assert "interior (crop border 8)" in done.stdout
    table = done.stdout.split("interior (crop border 8)")[1].splitlines()[1:3]
    assert table[0].split()[:2] == ["blurred", "input"] and table[1].split()[0] == "deblurred"
