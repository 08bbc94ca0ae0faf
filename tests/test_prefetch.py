"""dgf.prefetch: a command's first photo decoded, measured and shrunk while TensorFlow
loads, handed over unchanged, and nothing changed when it cannot be."""
from __future__ import annotations

import json
import mmap
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import smooth_photo
from dgf import calibration, prefetch
from dgf.images import read_image

REPO = Path(__file__).resolve().parents[1]

# dgf-deblur in a process of its own, noting what prefetch.take handed over.
_RUN = """
import json, sys
from dgf import prefetch
real, seen = prefetch.take, []
def take(path):
    got = real(path)
    seen.append(None if got is None else [got[2] is not None and list(got[2].shape),
                                          got[1] is not None])
    return got
prefetch.take = take
from dgf.cli import deblur_main
code = deblur_main()
print("SEEN " + json.dumps(seen))
sys.exit(code)
"""


def _shaken(height: int, width: int, length: int) -> np.ndarray:
    """A smooth photo smeared by a horizontal streak of ``length`` px."""
    image = smooth_photo(height, width, seed=5).astype(np.float32)
    smeared = sum(np.roll(image, shift, axis=1) for shift in range(length)) / length
    return np.clip(smeared, 0, 255).astype(np.uint8)


@pytest.mark.slow  # a command process of its own: the fork happens only there
@pytest.mark.parametrize("how", ["auto", "0.5"])
def test_a_command_takes_its_first_photo_read_ahead_and_writes_the_same_image(
        how, model_file, tmp_path):
    """dgf-deblur's first photo comes from the child (decoded, blur measured for auto,
    shrunk to the run's scale); the output is the image a run that reads the photo
    itself writes, byte for byte. A second input (here unreadable) is read by the run
    and fails with its own message."""
    from dgf.infer import deblur_paths
    from dgf.spec import InferenceSpec
    from dgf.weights import bundled_model

    photo, bad = tmp_path / "photo.png", tmp_path / "zz_bad.jpg"
    Image.fromarray(_shaken(360, 480, 25)).save(photo)
    bad.write_bytes(b"not a jpeg")
    model = bundled_model() if how == "auto" else model_file
    args = [str(photo), str(bad), "-o", str(tmp_path / "o"), "--model", str(model),
            "--scale", how, "--precision", "fp32", "--engine", "tensorflow", "--jit", "off"]
    env = {**os.environ, "PYTHONPATH": str(REPO), calibration.CACHE_ENV: str(tmp_path / "c")}
    done = subprocess.run([sys.executable, "-c", _RUN, *args], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]  # one of two failed
    seen = json.loads(done.stdout.split("SEEN ")[-1])
    assert len(seen) == 1 and seen[0] is not None  # the first photo, read ahead
    small, measured = seen[0]
    assert small and small[0] < 360 and measured is (how == "auto")
    assert f"failed: {bad}: not an image file Pillow can read" in done.stderr
    # The same run in this process (TensorFlow loaded: no fork) reads it itself.
    spec = InferenceSpec(precision="fp32", engine="tensorflow", jit="off",
                         scale=how if how == "auto" else float(how))
    report = deblur_paths(model, [photo], tmp_path / "here", spec, progress=False)
    assert report.processed and not report.failed
    with Image.open(tmp_path / "o" / photo.name) as ahead, \
            Image.open(tmp_path / "here" / photo.name) as here:
        assert np.array_equal(np.asarray(ahead), np.asarray(here))


def test_the_child_sends_what_the_run_would_compute_or_nothing(tmp_path):
    """The child's work, run here: the pixels in the shared memory, the shrunk copy
    as dgf.tiling makes it; an unreadable file sends None (the run reads it and says
    why). A process that has loaded TensorFlow never forks."""
    from dgf.spec import scaled_size
    from dgf.tiling import _shrink

    photo, bad = tmp_path / "p.png", tmp_path / "bad.png"
    Image.fromarray(smooth_photo(60, 90, seed=2)).save(photo)
    bad.write_bytes(b"\x89PNG broken")
    pixels, shrunk = mmap.mmap(-1, 60 * 90 * 3), mmap.mmap(-1, 60 * 90 * 3)
    receiver, sender = multiprocessing.Pipe(duplex=False)
    prefetch._read(sender, photo, 10**8, (0.5, None), (pixels, shrunk))
    shape, alpha, _, estimate, small_shape = receiver.recv()
    source = read_image(photo)
    assert shape == (60, 90, 3) and alpha is None and estimate is None
    assert np.array_equal(np.frombuffer(pixels, np.uint8).reshape(shape), source.rgb)
    expected = _shrink(source.rgb, *scaled_size(60, 90, 0.5))
    assert small_shape == expected.shape == (30, 45, 3)
    assert np.array_equal(np.frombuffer(shrunk, np.uint8, count=expected.size)
                          .reshape(small_shape), expected)
    receiver, sender = multiprocessing.Pipe(duplex=False)
    prefetch._read(sender, bad, 10**8, ("auto", None), (pixels, shrunk))
    assert receiver.recv() is None
    import tensorflow  # noqa: F401  (this process runs TensorFlow's threads)

    assert prefetch.start(photo, max_pixels=10**8) is False and prefetch.take(photo) is None


def test_a_folder_s_later_photos_are_read_ahead_in_a_thread_and_change_nothing(
        model_file, tmp_path, monkeypatch):
    """In a run of several photos each one after the first is decoded and shrunk by
    the reading thread while the one before it runs (every one of consecutive photos,
    not every other); the outputs are byte for byte those of a run that reads every
    photo itself. A photo whose output exists (no --overwrite) is not read ahead; an
    unreadable one fails with the run's message; a photo after failed ones is read by
    the run."""
    from dgf.infer import deblur_paths
    from dgf.spec import InferenceSpec

    folder = tmp_path / "in"
    folder.mkdir()
    for i in (0, 1, 2, 5):
        Image.fromarray(_shaken(120, 160 + 8 * i, 9)).save(folder / f"p{i}.png")
    Image.fromarray(_shaken(120, 160, 9)).save(folder / "p3.png")
    (folder / "p4.png").write_bytes(b"\x89PNG broken")
    spec = InferenceSpec(precision="fp32", engine="tensorflow", jit="off", scale=0.5)
    real_read, real_take = prefetch.read_ahead, prefetch.take
    asked, handed = [], []
    monkeypatch.setattr(prefetch, "read_ahead",
                        lambda path, **kw: asked.append(Path(path).name) or real_read(path, **kw))

    def take(path):
        got = real_take(path)
        handed.append((Path(path).name, got is not None and got[2] is not None))
        return got

    monkeypatch.setattr(prefetch, "take", take)
    (tmp_path / "ahead").mkdir()
    (tmp_path / "ahead" / "p3.png").write_bytes(b"kept")  # exists: p3 fails, not read
    report = deblur_paths(model_file, [folder], tmp_path / "ahead", spec, progress=False)
    assert asked == ["p1.png", "p2.png"]
    # p3 fails before any read, p4 at its header check: neither reaches a take.
    assert handed == [("p0.png", False), ("p1.png", True), ("p2.png", True),
                      ("p5.png", False)]
    failed = dict((p.name, why) for p, why in report.failed)
    assert set(failed) == {"p3.png", "p4.png"} and "already exists" in failed["p3.png"]
    assert "not an image file Pillow can read" in failed["p4.png"]
    assert (tmp_path / "ahead" / "p3.png").read_bytes() == b"kept"
    assert not prefetch._AHEAD  # nothing left behind

    monkeypatch.setattr(prefetch, "read_ahead", lambda path, **kw: False)
    deblur_paths(model_file, [folder], tmp_path / "self", spec, progress=False)
    for i in (0, 1, 2, 5):
        with Image.open(tmp_path / "ahead" / f"p{i}.png") as ahead, \
                Image.open(tmp_path / "self" / f"p{i}.png") as itself:
            assert np.array_equal(np.asarray(ahead), np.asarray(itself))


def test_the_reading_thread_measures_and_shrinks_as_the_run_would(tmp_path):
    """read_ahead at --scale auto: the estimate and the shrunk copy are those the run
    computes (dgf.blur.auto_factor, dgf.tiling's shrink); a photo over the pixel limit
    or a second read while one is pending is not taken on."""
    from dgf.blur import auto_factor
    from dgf.spec import scaled_size
    from dgf.tiling import _shrink

    photo, other = tmp_path / "p.png", tmp_path / "q.png"
    Image.fromarray(_shaken(300, 400, 30)).save(photo)
    Image.fromarray(smooth_photo(60, 90, seed=2)).save(other)
    assert prefetch.read_ahead(photo, max_pixels=10**8, scale="auto", side=256,
                               reference=10.0)
    assert not prefetch.read_ahead(other, max_pixels=10**8)  # one at a time
    source, estimate, small = prefetch.take(photo)
    rgb = read_image(photo).rgb
    factor, expected = auto_factor(rgb, 256, 10.0)
    assert factor < 1 and estimate == expected and np.array_equal(source.rgb, rgb)
    assert np.array_equal(small, _shrink(rgb, *scaled_size(300, 400, factor)))
    assert not prefetch.read_ahead(other, max_pixels=60 * 90 - 1)  # over the limit
    assert prefetch.take(other) is None
    # Dropping one photo's read (a job that failed before taking it) keeps another's.
    assert prefetch.read_ahead(photo, max_pixels=10**8)
    prefetch.discard(other)
    assert prefetch._AHEAD and prefetch._AHEAD[0][0] == photo
    prefetch.discard(photo)
    assert not prefetch._AHEAD and prefetch.take(photo) is None
