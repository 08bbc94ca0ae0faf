"""``dgf-eval --photos`` (dgf.photos): no-reference measures of photos before and
after deblurring, the before | after picture and the summary tables."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from dgf.errors import DgfError
from dgf.kernels import blur
from dgf.photos import CSV_NAME, JSON_NAME, detail_box, measure, picture
from test_blur import dead_leaves, line_kernel

FIXED_FLAGS = ["--engine", "tensorflow", "--jit", "off", "--no-progress"]


def test_measures_tell_a_blurred_photo_from_its_sharp_one():
    sharp = dead_leaves(4, 320)
    blurred = blur(sharp, line_kernel(15))
    a, b = measure(sharp), measure(blurred)
    assert set(a) == {"blur_effect", "gradient_energy", "streak_px"}
    assert 0 <= a["blur_effect"] < b["blur_effect"] <= 1
    assert a["gradient_energy"] > 2 * b["gradient_energy"]
    assert a["streak_px"] < 5 < 10 < b["streak_px"]
    assert measure(np.full((200, 300, 3), 90, np.uint8))["streak_px"] is None  # flat


@pytest.mark.slow  # two photos over 1024 px; the test above covers the measures
def test_measures_compare_across_sizes():
    """Photos over WORK_SIDE are measured at that size: one and its 2x enlargement
    measure alike, the streak in each one's own pixels."""
    scene = blur(dead_leaves(5, 550), line_kernel(9))
    small, large = (np.asarray(Image.fromarray(scene).resize((side, side),
                                                             Image.Resampling.BICUBIC))
                    for side in (1100, 2200))
    a, b = measure(small), measure(large)
    assert b["blur_effect"] == pytest.approx(a["blur_effect"], abs=0.03)
    assert b["gradient_energy"] == pytest.approx(a["gradient_energy"], rel=0.1)
    assert b["streak_px"] == pytest.approx(2 * a["streak_px"], rel=0.15)


def test_picture_shows_whole_photos_above_and_the_detailed_crop_below():
    photo = np.full((400, 600, 3), 128, np.uint8)
    photo[250:390, 420:590] = dead_leaves(6, 170)[:140]  # the only detail: bottom right
    top, left, side = detail_box(photo, 128)
    assert side == 128 and top >= 250 - 16 and left >= 420 - 16
    assert top + side <= 400 and left + side <= 600
    after = 255 - photo
    out = picture(photo, after, panel=200)
    # Halves 200 px wide with a 4 px gap: the whole photos (133 px high), a 4 px gap,
    # then the 200 px crops at 1:1.
    assert out.shape == (133 + 4 + 200, 404, 3)
    y, x, s = detail_box(photo, 200)
    np.testing.assert_array_equal(out[137:, :200], photo[y:y + s, x:x + s])
    np.testing.assert_array_equal(out[137:, 204:], after[y:y + s, x:x + s])


def _photo_folder(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(blur(dead_leaves(7, 96), line_kernel(7))).save(folder / "a.png")
    Image.fromarray(dead_leaves(8, 80)).save(folder / "sub" / "b.jpg", quality=95)
    return folder


@pytest.mark.slow
def test_eval_photos_writes_pictures_and_tables(tmp_path, model_file, capsys):
    from dgf.commands.evaluation import eval_main

    folder, out = _photo_folder(tmp_path), tmp_path / "report"
    argv = ["--photos", str(folder), "--model", str(model_file), "--out", str(out),
            "--scale", "0.5", *FIXED_FLAGS]
    assert eval_main(argv) == 0
    printed = capsys.readouterr().out
    assert "a.png" in printed and "b.jpg" in printed and f"wrote {out / CSV_NAME}" in printed
    assert (out / "a_compare.jpg").is_file() and (out / "sub" / "b_compare.jpg").is_file()
    with Image.open(out / "a_compare.jpg") as pic:
        assert pic.size == (2 * 512 + 4, 512 + 4 + 96)  # halves 512 wide, 96 px crop
    rows = list(csv.DictReader((out / CSV_NAME).open()))
    assert [r["photo"] for r in rows] == [str(folder / "a.png"), str(folder / "sub" / "b.jpg")]
    assert rows[0]["scale"] == "0.5" and rows[0]["width"] == "96"
    summary = json.loads((out / JSON_NAME).read_text())
    assert summary["model"] == str(model_file) and summary["settings"]["scale"] == 0.5
    assert summary["photos"][0]["blur_effect_before"] == pytest.approx(
        float(rows[0]["blur_effect_before"]))
    assert not list(out.rglob("*.tmp*"))  # written atomically, nothing left over
    # Existing tables are kept unless --overwrite.
    assert eval_main(argv) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert eval_main(argv + ["--overwrite"]) == 0


def test_eval_photos_errors(tmp_path, capsys):
    from dgf.commands.evaluation import eval_main

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photo here")
    assert eval_main(["--photos", str(empty)]) == 2
    assert f"error: photo folder {empty} contains no .jpg" in capsys.readouterr().err
    assert eval_main(["--photos", str(tmp_path / "gone.jpg")]) == 2
    assert f"photo {tmp_path / 'gone.jpg'} does not exist" in capsys.readouterr().err
    for extra, message in ((["--run", str(tmp_path)], "takes no --run or --h5"),
                           (["--h5", "x.h5"], "takes no --run or --h5"),
                           (["--record"], "--record applies to --run or --model")):
        assert eval_main(["--photos", str(empty), *extra]) == 2
        assert message in capsys.readouterr().err
    assert eval_main([]) == 2
    assert "give --run RUN, --model MODEL --h5 H5, or --photos" in capsys.readouterr().err
    assert eval_main(["--model", "m.keras", "--h5", "x.h5", "--scale", "0.5"]) == 2
    assert "--scale applies to --photos" in capsys.readouterr().err


def test_two_photos_of_one_name_are_refused(tmp_path):
    from dgf.photos import _photos

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(dead_leaves(0, 64)).save(tmp_path / sub / "p.png")
    with pytest.raises(DgfError, match="have the same name p.png"):
        _photos([tmp_path / "a" / "p.png", tmp_path / "b" / "p.png"])
