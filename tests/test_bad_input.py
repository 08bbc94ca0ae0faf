"""Bad input for every command: one error line, exit status 2, nothing clobbered.

The table below calls each command's entry function in this process. Every case
asserts the exit status, an ``error:`` line naming the file or value, no traceback,
and that no file appeared, vanished or changed anywhere the command could reach.
Interrupts (SIGINT, SIGTERM) and permissions need other processes and are below
the table.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

from conftest import noise_image, png_header_only, save_side_by_side
from dgf import cli
from dgf.fileio import write_atomic, write_bytes_atomic, write_folder_atomic

REPO = Path(__file__).resolve().parents[1]
TINY_RUN = dict(channel_rate=8, blocks=3, patch=16, crop=32, batch_size=2, perceptual_weight=0.0,
                val_samples=2, strip_pairs=2, epochs=2)
# dgf-deblur and dgf-eval on TensorFlow's plain graph where a test runs the model to
# the end or to an interrupt: the default (auto) first calibrates XLA, ONNX Runtime and
# OpenVINO on each new shape (tests/test_jit_cli.py and test_engines.py test an
# interrupt during calibration and conversion).
FIXED_FLAGS = ["--engine", "tensorflow", "--jit", "off"]


# --- inputs, made once ---------------------------------------------------------
@dataclass(frozen=True)
class Assets:
    root: Path
    jpegs: Path  # train/ and test/ of 64x32 side-by-side pairs
    photos: Path  # sharp photos for dgf-make-pairs
    h5: Path  # 32x32 pairs built from jpegs
    model: Path  # tiny generator (channel rate 8)
    run: Path  # a run folder with config.json, two checkpoints, a snapshot, metrics


@pytest.fixture(scope="module")
def assets(tmp_path_factory, model_file) -> Assets:
    import tensorflow as tf

    from dgf.config import TrainConfig, save_config
    from dgf.distributed import select_strategy
    from dgf.hdf5 import BuildOptions, build_hdf5
    from dgf.train import GANTrainer

    root = tmp_path_factory.mktemp("assets")
    jpegs = root / "jpegs"
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            seed = 10 * i + len(split)
            save_side_by_side(jpegs / split / f"{i}.jpg", noise_image(seed, 32, 32),
                              noise_image(seed + 1, 32, 32))
    photos = root / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(noise_image(i, 48, 48)).save(photos / f"{i}.jpg")
    h5 = root / "data.h5"
    build_hdf5(jpegs, h5, BuildOptions(size=32, workers=1), progress=False)
    model = root / "generator.keras"
    shutil.copy(model_file, model)

    run = root / "run"
    cfg = TrainConfig(h5=str(h5), run_dir=str(run), **TINY_RUN)
    trainer = GANTrainer(cfg, select_strategy("one"), total_steps=4)
    manager = tf.train.CheckpointManager(trainer.checkpoint, str(run / "checkpoints"), 3)
    for step in (1, 2):
        trainer.step_var.assign(step)
        trainer.batch_var.assign(step)
        manager.save(checkpoint_number=step)
    save_config(cfg, run / "config.json")
    (run / "snapshots").mkdir()
    shutil.copy(model_file, run / "snapshots" / "generator_epoch_0001.keras")
    record = {"kind": "step", "step": 1, "epoch": 1, "g_loss": 1.0}
    (run / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    return Assets(root, jpegs, photos, h5, model, run)


# --- the table -------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """``setup(assets, tmp)`` makes what the case needs under ``tmp`` and returns the
    argv; ``named`` must appear in the error line (``{tmp}`` is filled in)."""

    command: str
    setup: Callable[[Assets, Path], list[str]]
    expect: str  # a fragment of the error line
    named: str  # the file or value the error line must name
    status: int = 2
    may_create: str | None = None  # a path part new files may appear under


MAINS = {
    "build-hdf5": cli.build_hdf5_main,
    "dgf-make-pairs": cli.make_pairs_main,
    "dgf-train": cli.train_main,
    "dgf-eval": cli.eval_main,
    "dgf-deblur": cli.deblur_main,
    "dgf-export": cli.export_main,
}


def _file(path: Path, text: str | bytes = "precious") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _copy_run(a: Assets, tmp: Path) -> Path:
    run = tmp / "run"
    shutil.copytree(a.run, run)
    config = json.loads((run / "config.json").read_text())
    config["run_dir"] = str(run)  # as if trained here: resuming rewrites nothing
    (run / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return run


def _yaml(tmp: Path, text: str, name: str = "cfg.yaml") -> list[str]:
    return ["--config", str(_file(tmp / name, text)), "--run-dir", str(tmp / "newrun")]


def _train(a: Assets, *extra: str) -> list[str]:
    return ["--h5", str(a.h5), "--channel-rate", "8", "--blocks", "3", "--patch", "16",
            "--crop", "32",
            "--perceptual-weight", "0", *extra]


def _damage_ckpt_data(a: Assets, tmp: Path) -> list[str]:
    run = _copy_run(a, tmp)
    data = next((run / "checkpoints").glob("ckpt-2.data-*"))
    with open(data, "r+b") as fh:
        fh.truncate(data.stat().st_size // 2)
    return ["--run-dir", str(run)]


def _tflite_lookalike(tmp: Path) -> Path:
    return _file(tmp / "notes.tflite", "my notes, not a model")


def _photo_folder(tmp: Path) -> Path:
    folder = tmp / "holiday"
    Image.new("RGB", (4, 4)).save(_file(folder / "beach.jpg", b""))
    return folder


CASES: dict[str, Case] = {
    # build-hdf5 --------------------------------------------------------------------
    "build/parent-is-a-file": Case(
        "build-hdf5", lambda a, t: [str(a.jpegs), "-o", str(_file(t / "data.h5") / "sub.h5")],
        "cannot write", "{tmp}/data.h5 is a file"),
    "build/output-is-a-folder": Case(
        "build-hdf5", lambda a, t: [str(a.jpegs), "-o", str(t)], "is a folder", "{tmp}"),
    "build/output-exists": Case(
        "build-hdf5", lambda a, t: [str(a.jpegs), "-o", str(_file(t / "old.h5"))],
        "already exists", "{tmp}/old.h5"),
    "build/size-needs-more-memory-than-there-is": Case(
        "build-hdf5", lambda a, t: [str(a.jpegs), "-o", str(t / "x.h5"), "--size", "100000"],
        "GiB of memory", "100000x100000"),
    "build/missing-folder": Case(
        "build-hdf5", lambda a, t: [str(t / "nope"), "-o", str(t / "x.h5")],
        "no such folder", "{tmp}/nope"),
    "build/no-test-split": Case(
        "build-hdf5", lambda a, t: [str(_file(t / "in" / "train" / "x.jpg").parents[1]),
                                    "-o", str(t / "x.h5")],
        "no 'test' folder", "{tmp}/in"),
    "build/decompression-bomb": Case(
        "build-hdf5", lambda a, t: [
            str(_bomb_tree(a, t)), "-o", str(t / "x.h5"), "--on-error", "fail", "--workers", "1"],
        "decompression bomb refused", "train/bomb.png"),
    "build/zero-workers": Case(
        "build-hdf5", lambda a, t: [str(a.jpegs), "-o", str(t / "x.h5"), "--workers", "0"],
        "workers must be 1 or more", "0"),
    # dgf-make-pairs ----------------------------------------------------------------
    "pairs/out-dir-is-a-file": Case(
        "dgf-make-pairs", lambda a, t: [str(a.photos), str(_file(t / "out"))],
        "not a folder", "{tmp}/out"),
    "pairs/out-dir-under-a-file": Case(
        "dgf-make-pairs", lambda a, t: [str(a.photos), str(_file(t / "out") / "sub")],
        "cannot write", "{tmp}/out is a file"),
    "pairs/missing-photo-folder": Case(
        "dgf-make-pairs", lambda a, t: [str(t / "nope"), str(t / "out")],
        "is not a folder", "{tmp}/nope"),
    "pairs/existing-pairs": Case(
        "dgf-make-pairs", lambda a, t: [str(a.photos), str(_file(t / "out" / "train" / "a.jpg")
                                                         .parents[1])],
        "pass --overwrite", "{tmp}/out"),
    "pairs/even-kernel": Case(
        "dgf-make-pairs", lambda a, t: [str(a.photos), str(t / "out"), "--kernel-size", "4",
                                        "--size", "32"],
        "kernel size 4", "4"),
    "pairs/nan-strength": Case(
        "dgf-make-pairs", lambda a, t: [str(a.photos), str(t / "out"), "--strength", "nan"],
        "outside (0, 1]", "nan"),
    "pairs/nan-test-fraction": Case(
        "dgf-make-pairs", lambda a, t: [str(a.photos), str(t / "out"), "--test-fraction", "nan"],
        "test-fraction", "nan"),
    "pairs/infinite-noise": Case(
        "dgf-make-pairs", lambda a, t: [str(a.photos), str(t / "out"), "--noise", "inf"],
        "must be >= 0", "inf"),
    # dgf-train: values ---------------------------------------------------------------
    "train/g-lr-nan": Case(
        "dgf-train", lambda a, t: _train(a, "--g-lr", "nan", "--run-dir", str(t / "r")),
        "must be a finite number", "g_lr"),
    "train/d-lr-inf": Case(
        "dgf-train", lambda a, t: _train(a, "--d-lr", "inf", "--run-dir", str(t / "r")),
        "must be a finite number", "d_lr"),
    "train/flag-on-off-maybe": Case(
        "dgf-train", lambda a, t: _train(a, "--augment", "maybe"), "expected on/off", "maybe"),
    "train/yaml-malformed": Case(
        "dgf-train", lambda a, t: _yaml(t, "epochs: [1\n"), "could not be parsed",
        "{tmp}/cfg.yaml"),
    "train/yaml-boolean-maybe": Case(
        "dgf-train", lambda a, t: _yaml(t, "augment: maybe\n"), "must be true or false",
        "maybe"),
    "train/yaml-nan": Case(
        "dgf-train", lambda a, t: _yaml(t, "g_lr: .nan\n"), "must be a finite number",
        "{tmp}/cfg.yaml"),
    "train/yaml-fractional-epochs": Case(
        "dgf-train", lambda a, t: _yaml(t, "epochs: 2.5\n"), "must be an integer", "epochs"),
    "train/yaml-text-for-number": Case(
        "dgf-train", lambda a, t: _yaml(t, "g_lr: fast\n"), "must be a number", "'fast'"),
    "train/json-malformed": Case(
        "dgf-train", lambda a, t: _yaml(t, "{\"epochs\": 2,}", "cfg.json"),
        "could not be parsed", "{tmp}/cfg.json"),
    "train/config-unknown-key": Case(
        "dgf-train", lambda a, t: _yaml(t, "epoch: 3\n"), "unknown key", "epoch"),
    "train/config-missing": Case(
        "dgf-train", lambda a, t: ["--config", str(t / "none.yaml")], "does not exist",
        "{tmp}/none.yaml"),
    "train/h5-is-a-folder": Case(
        "dgf-train", lambda a, t: ["--h5", str(t), "--run-dir", str(t / "r")],
        "is a folder, not a file", "{tmp}"),
    "train/h5-missing": Case(
        "dgf-train", lambda a, t: ["--h5", str(t / "no.h5"), "--run-dir", str(t / "r")],
        "does not exist", "{tmp}/no.h5"),
    "train/vgg-weights-missing": Case(
        "dgf-train", lambda a, t: _train(a, "--perceptual-weight", "1", "--vgg-weights",
                                         str(t / "vgg16.h5"), "--run-dir", str(t / "r")),
        "does not exist; pass the path of vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "{tmp}/vgg16.h5"),
    "train/vgg-weights-not-vgg": Case(  # an HDF5 file of pairs
        "dgf-train", lambda a, t: _train(a, "--perceptual-weight", "1", "--vgg-weights",
                                         str(shutil.copy(a.h5, t / "vgg16.h5")),
                                         "--run-dir", str(t / "r")),
        "must hold the weights of Keras' VGG16 without its top", "{tmp}/vgg16.h5"),
    # dgf-train: outputs and damaged run folders -----------------------------------------
    "train/run-dir-is-a-file": Case(
        "dgf-train", lambda a, t: _train(a, "--run-dir", str(_file(t / "run"))),
        "cannot write", "{tmp}/run: it is a file"),
    "train/run-dir-under-a-file": Case(
        "dgf-train", lambda a, t: _train(a, "--run-dir", str(_file(t / "runs") / "r1")),
        "cannot write", "{tmp}/runs is a file"),
    "train/config-json-not-json": Case(
        "dgf-train", lambda a, t: [
            "--run-dir", str(_damage(_copy_run(a, t) / "config.json").parent)],
        "start a new --run-dir", "{tmp}/run/config.json is damaged"),
    "train/checkpoint-index-garbage": Case(
        "dgf-train", lambda a, t: [
            "--run-dir", str(_damage(_copy_run(a, t) / "checkpoints" / "checkpoint").parents[1])],
        "start a new --run-dir", "{tmp}/run/checkpoints/checkpoint (the list of checkpoints)"
        " is damaged"),
    "train/checkpoint-data-truncated": Case(
        "dgf-train", _damage_ckpt_data, "to resume from the checkpoint before it",
        "{tmp}/run/checkpoints/ckpt-2 is damaged"),
    "train/metrics-garbage": Case(
        "dgf-train", lambda a, t: [
            "--run-dir", str(_damage(_copy_run(a, t) / "metrics.jsonl", "{}\n[1, 2]\n").parent)],
        "it is only a log", "{tmp}/run/metrics.jsonl is damaged", may_create="tensorboard"),
    # dgf-eval ----------------------------------------------------------------------
    "eval/model-is-a-folder": Case(
        "dgf-eval", lambda a, t: ["--model", str(t), "--h5", str(a.h5)],
        "is a folder, not a file", "{tmp}"),
    "eval/model-is-text": Case(
        "dgf-eval", lambda a, t: ["--model", str(_file(t / "x.keras")), "--h5", str(a.h5)],
        "not a valid .keras file", "{tmp}/x.keras"),
    "eval/h5-is-a-folder": Case(
        "dgf-eval", lambda a, t: ["--model", str(a.model), "--h5", str(t), "--out",
                                  str(t / "ev")],
        "is a directory", "{tmp}"),
    "eval/out-under-a-file": Case(
        "dgf-eval", lambda a, t: ["--model", str(a.model), "--h5", str(a.h5), "--out",
                                  str(_file(t / "ev") / "sub")],
        "cannot write", "{tmp}/ev is a file"),
    "eval/run-out-is-a-file": Case(
        "dgf-eval", lambda a, t: ["--run", str(_copy_run(a, t)), "--out",
                                  str(_file(t / "ev"))],
        "cannot write", "{tmp}/ev: it is a file"),
    "eval/snapshot-damaged": Case(
        "dgf-eval", lambda a, t: ["--run", str(_damage(
            _copy_run(a, t) / "snapshots" / "generator_epoch_0001.keras").parents[1])],
        "remove it to score the other epochs", "generator_epoch_0001.keras"),
    "eval/run-config-json-not-json": Case(
        "dgf-eval", lambda a, t: ["--run", str(_damage(_copy_run(a, t) / "config.json").parent)],
        "pass --h5 PATH", "{tmp}/run/config.json"),
    "eval/limit-zero": Case(
        "dgf-eval", lambda a, t: ["--model", str(a.model), "--h5", str(a.h5), "--limit", "0"],
        "must be at least 1", "--limit"),
    # dgf-deblur ----------------------------------------------------------------------
    "deblur/out-is-a-file": Case(
        "dgf-deblur", lambda a, t: [str(a.photos), "-o", str(_file(t / "out")), "--model",
                                    str(a.model)],
        "is not a folder", "{tmp}/out"),
    "deblur/out-under-a-file": Case(
        "dgf-deblur", lambda a, t: [str(a.photos), "-o", str(_file(t / "out") / "sub"),
                                    "--model", str(a.model)],
        "cannot write", "{tmp}/out is a file"),
    "deblur/model-is-text": Case(
        "dgf-deblur", lambda a, t: [str(a.photos), "-o", str(t / "o"), "--model",
                                    str(_file(t / "g.keras"))],
        "not a valid .keras file", "{tmp}/g.keras"),
    "deblur/model-is-a-folder": Case(
        "dgf-deblur", lambda a, t: [str(a.photos), "-o", str(t / "o"), "--model", str(t)],
        "is a folder, not a file", "{tmp}"),
    "deblur/missing-input": Case(
        "dgf-deblur", lambda a, t: [str(t / "ghost.jpg"), "-o", str(t / "o"), "--model",
                                    str(a.model)],
        "does not exist", "{tmp}/ghost.jpg"),
    "deblur/quality-zero": Case(
        "dgf-deblur", lambda a, t: [str(a.photos), "-o", str(t / "o"), "--model",
                                    str(a.model), "--quality", "0"],
        "between 1 and 100", "0"),
    "deblur/max-megapixels-zero": Case(
        "dgf-deblur", lambda a, t: [str(a.photos), "-o", str(t / "o"), "--model",
                                    str(a.model), "--max-megapixels", "0"],
        "must be a number above 0", "--max-megapixels"),
    "deblur/max-megapixels-not-a-number": Case(
        "dgf-deblur", lambda a, t: [str(a.photos), "-o", str(t / "o"), "--model",
                                    str(a.model), "--max-megapixels", "lots"],
        "invalid float value", "'lots'"),
    # dgf-export ----------------------------------------------------------------------
    "export/overwrite-a-photo-folder": Case(
        "dgf-export", lambda a, t: ["--model", str(a.model), "--format", "savedmodel", "-o",
                                    str(_photo_folder(t)), "--overwrite"],
        "holds no SavedModel", "{tmp}/holiday"),
    "export/overwrite-a-file-with-a-savedmodel": Case(
        "dgf-export", lambda a, t: ["--model", str(a.model), "--format", "savedmodel", "-o",
                                    str(_file(t / "notes.txt")), "--overwrite"],
        "not a SavedModel folder", "{tmp}/notes.txt"),
    "export/overwrite-a-non-tflite-file": Case(
        "dgf-export", lambda a, t: ["--model", str(a.model), "--format", "tflite", "-o",
                                    str(_tflite_lookalike(t)), "--overwrite"],
        "is not a TFLite file", "{tmp}/notes.tflite"),
    "export/exists-without-overwrite": Case(
        "dgf-export", lambda a, t: ["--model", str(a.model), "--format", "tflite", "-o",
                                    str(_tflite_lookalike(t))],
        "already exists", "{tmp}/notes.tflite"),
    "export/parent-is-a-file": Case(
        "dgf-export", lambda a, t: ["--model", str(a.model), "--format", "tflite", "-o",
                                    str(_file(t / "exports") / "g.tflite")],
        "cannot write", "{tmp}/exports is a file"),
    "export/parent-missing": Case(
        "dgf-export", lambda a, t: ["--model", str(a.model), "--format", "savedmodel", "-o",
                                    str(t / "no" / "sm")],
        "does not exist", "{tmp}/no"),
    "export/model-is-text": Case(
        "dgf-export", lambda a, t: ["--model", str(_file(t / "g.keras")), "--format",
                                    "tflite", "-o", str(t / "g.tflite")],
        "not a valid .keras file", "{tmp}/g.keras"),
}


def _damage(path: Path, text: str = "garbage \x00\x01 not what dgf wrote") -> Path:
    path.write_text(text)
    return path


def _bomb_tree(a: Assets, tmp: Path) -> Path:
    root = tmp / "bomb"
    shutil.copytree(a.jpegs, root)
    png_header_only(root / "train" / "bomb.png", 20_000, 20_000)
    return root


def _tree(*roots: Path) -> dict[Path, str]:
    """Every file under ``roots`` with a digest of its bytes."""
    found = {}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                found[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _call(main, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors
        return int(exc.code)


def test_the_table_covers_every_command_and_enough_cases():
    assert {case.command for case in CASES.values()} == set(MAINS)
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_one_error_line_and_changes_nothing(name, assets, tmp_path, capsys):
    case = CASES[name]
    work = tmp_path / "w"
    work.mkdir()
    argv = case.setup(assets, work)
    before = _tree(work, assets.root)
    capsys.readouterr()
    status = _call(MAINS[case.command], argv)
    out, err = capsys.readouterr()
    assert status == case.status, err
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert lines, err
    line = lines[-1]
    assert case.expect in line, line
    assert case.named.format(tmp=work) in line, line
    assert ".." not in line.replace("..." , ""), line  # no doubled full stop
    after = _tree(work, assets.root)
    changed = [p for p in before if after.get(p) != before[p]]
    assert not changed, changed  # nothing clobbered or removed
    new = [p for p in after if p not in before
           and not (case.may_create and case.may_create in p.parts)]
    assert not new, new  # nothing partial left behind


def test_damaged_checkpoint_files_removed_falls_back_to_the_previous_one(assets, tmp_path,
                                                                          capsys):
    """What the damaged-checkpoint message tells the user to do works."""
    from dgf.actions import checkpoint_to_resume

    run = _copy_run(assets, tmp_path)
    for path in (run / "checkpoints").glob("ckpt-2.*"):
        path.unlink()
    chosen = checkpoint_to_resume(run / "checkpoints")
    assert chosen.endswith("ckpt-1")
    assert "resuming from" in capsys.readouterr().err


def test_config_files_and_flags_read_values_the_same_way(tmp_path):
    from dgf.config import TrainConfig, load_config_file

    cfg_file = _file(tmp_path / "c.yaml", "g_lr: 3e-4\naugment: no\ncrop: full\njit: on\n")
    from_file = TrainConfig.from_dict(load_config_file(cfg_file))
    from dgf.commands.training import flag_type

    parser_types = {key: flag_type(key) for key in TrainConfig.__dataclass_fields__}
    from_flags = TrainConfig.from_dict({
        "g_lr": parser_types["g_lr"]("3e-4"), "augment": parser_types["augment"]("no"),
        "crop": parser_types["crop"]("full"), "jit": parser_types["jit"]("on")})
    assert from_file == from_flags
    assert (from_file.g_lr, from_file.augment, from_file.crop, from_file.jit) == (
        3e-4, False, None, True)


# --- file modes -------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writers_give_the_mode_of_a_normal_write(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "a.bin", lambda tmp: tmp.write_bytes(b"x"))
        write_bytes_atomic(tmp_path / "b.tflite", b"x")

        def private_folder(tmp: Path) -> None:  # as mkdtemp and some libraries do
            os.chmod(tmp, 0o700)
            (tmp / "saved_model.pb").write_bytes(b"x")

        write_folder_atomic(tmp_path / "sm", private_folder)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "b.tflite").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "sm").stat().st_mode) == 0o777 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.tflite", "sm"]


@pytest.mark.slow
def test_deblur_and_savedmodel_outputs_are_not_private(assets, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert cli.deblur_main([str(assets.photos), "-o", str(tmp_path / "o"), "--model",
                                str(assets.model), "--quiet", *FIXED_FLAGS]) == 0
        assert cli.export_main(["--model", str(assets.model), "--format", "savedmodel",
                                "-o", str(tmp_path / "sm")]) == 0
    finally:
        os.umask(old)
    for photo in (tmp_path / "o").iterdir():
        assert stat.S_IMODE(photo.stat().st_mode) == 0o644, photo
    assert stat.S_IMODE((tmp_path / "sm").stat().st_mode) == 0o755
    # --overwrite replaces the earlier SavedModel (the guard lets exports through).
    assert cli.export_main(["--model", str(assets.model), "--format", "savedmodel",
                            "-o", str(tmp_path / "sm"), "--overwrite"]) == 0


# --- without write permission (needs a user that is not root) -------------------------
NO_PERMISSION = """
import json, sys
from dgf import cli
results = []
for name, argv in json.loads(sys.argv[1]):
    try:
        status = getattr(cli, name)(argv)
    except SystemExit as exc:
        status = exc.code
    results.append(status)
print(json.dumps(results))
"""


def _unprivileged_prefix() -> list[str]:
    """How to run a command as a user that chmod binds; skip where none can be had."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root, and no setpriv to run as an unprivileged user: "
                    "root ignores chmod, so the no-permission cases cannot be tried")
    prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"running as root and cannot switch to user 65534: {probe.stderr!r}")
    return prefix


@pytest.mark.slow  # runs the whole command end to end
def test_no_write_permission_is_an_error_line_as_any_user(assets, model_file):
    prefix = _unprivileged_prefix()
    base = Path(tempfile.mkdtemp(prefix="dgf-noperm-"))
    try:
        os.chmod(base, 0o755)
        shutil.copytree(assets.jpegs, base / "jpegs")
        shutil.copytree(assets.photos, base / "photos")
        shutil.copy(assets.h5, base / "data.h5")
        shutil.copy(assets.model, base / "g.keras")
        for path in base.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        ro = base / "ro"
        ro.mkdir(mode=0o555)
        os.chmod(ro, 0o555)
        calls = [
            ("build_hdf5_main", [str(base / "jpegs"), "-o", str(ro / "x.h5")]),
            ("make_pairs_main", [str(base / "photos"), str(ro / "sub")]),
            ("train_main", ["--h5", str(base / "data.h5"), "--run-dir", str(ro / "run")]),
            ("eval_main", ["--model", str(base / "g.keras"), "--h5", str(base / "data.h5"),
                           "--out", str(ro / "ev")]),
            ("deblur_main", [str(base / "photos"), "-o", str(ro / "o"), "--model",
                             str(base / "g.keras")]),
            ("export_main", ["--model", str(base / "g.keras"), "--format", "tflite", "-o",
                             str(ro / "g.tflite")]),
            ("export_main", ["--model", str(base / "g.keras"), "--format", "savedmodel",
                             "-o", str(ro / "sm")]),
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(base)}
        done = subprocess.run(
            [*prefix, sys.executable, "-c", NO_PERMISSION, json.dumps(calls)],
            capture_output=True, text=True, env=env, cwd=base, timeout=120)
        assert "Traceback" not in done.stderr, done.stderr
        assert json.loads(done.stdout.splitlines()[-1]) == [2] * len(calls), done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == len(calls), done.stderr
        for line, (_, argv) in zip(errors, calls):
            target = next(a for a in argv if a.startswith(str(ro)))
            assert line == f"error: cannot write {target}: no write permission in {ro}", line
        assert list(ro.iterdir()) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- interrupts ---------------------------------------------------------------------
# Runs a command with one step made to stall (after a partial write, where there is
# one), so the signal arrives at a known point: mid-write, workers busy.
STALL = """
import sys, time
from pathlib import Path
marker, where, main = sys.argv[1:4]


def stall():
    Path(marker).touch()
    time.sleep(600)


if where == "image-save":  # the 2nd image written: part of it, then a stall
    from PIL import Image
    real, calls = Image.Image.save, []

    def save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 2:
            Path(fp).write_bytes(b"half an image")
            stall()
        return real(self, fp, *args, **kwargs)

    Image.Image.save = save
elif where == "decode":  # every decoding worker stalls
    from dgf import sources
    sources.decode_batch = lambda *args, **kwargs: stall()
elif where == "before-rename":  # an atomic write is complete under its temporary name
    from dgf import fileio
    real_mode = fileio._give_normal_mode

    def give_normal_mode(path):
        real_mode(path)
        stall()

    fileio._give_normal_mode = give_normal_mode
from dgf import cli
sys.argv = [main, *sys.argv[4:]]
sys.exit(getattr(cli, main)())  # argv from sys.argv, as the console scripts run
"""


def _children(pid: int) -> set[int]:
    found = set()
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat_file.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _interrupt(tmp: Path, where: str, main: str, argv: list[str], signum: int,
               again: bool = False) -> str:
    """Run, wait for the stall, signal the process group (``again``: a second time
    while it cleans up, as an impatient user does); return stderr."""
    marker = tmp / "stalled"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", STALL, str(marker), where, main, *argv], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 600  # TensorFlow starts slowly on a busy machine
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.communicate(timeout=30)[1][-3000:]
        children = _children(proc.pid)
        sent = time.monotonic()
        os.killpg(proc.pid, signum)
        if again:
            time.sleep(0.05)
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                pass  # already gone
        _, err = proc.communicate(timeout=300)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "interrupted" in err
    # Far below the 600 s stall: nothing waited for the stalled step (build-hdf5 used
    # to wait for its busy workers). Loose because a loaded machine exits slowly.
    assert took < 200, f"took {took:.1f} s to stop"
    assert not [pid for pid in children if _alive(pid)], "worker processes left running"
    return err


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]
# The commands that start TensorFlow (seconds each) take one signal apiece: both
# signals go to one handler (dgf.commands.common.interrupts_stop_once), which the
# quick commands above take with each signal.


@pytest.mark.slow
@pytest.mark.parametrize("signum", SIGNALS)
def test_build_hdf5_interrupt_stops_workers_and_keeps_old_output(assets, tmp_path, signum):
    out = _file(tmp_path / "data.h5", "old output")
    _interrupt(tmp_path, "decode", "build_hdf5_main",
               [str(assets.jpegs), "-o", str(out), "--overwrite", "--workers", "2",
                "--no-progress"], signum, again=True)
    assert out.read_text() == "old output"
    assert _temp_files(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("signum", SIGNALS)
def test_make_pairs_interrupt_leaves_only_whole_files(assets, tmp_path, signum):
    out = tmp_path / "pairs"
    _interrupt(tmp_path, "image-save", "make_pairs_main",
               [str(assets.photos), str(out), "--size", "32", "--kernel-size", "5",
                "--no-progress"], signum)
    images = sorted(out.rglob("*.jpg"))
    assert len(images) == 1  # the first pair; the second was cut off mid-write
    for image in images:
        with Image.open(image) as im:
            im.load()  # complete, not "half an image"
        assert image.with_name(image.stem + ".kernel.npy").is_file()
    assert not (out / "make_pairs.json").exists()
    assert _temp_files(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM], ids=["SIGTERM"])
def test_deblur_interrupt_leaves_only_whole_files(assets, tmp_path, signum):
    out = tmp_path / "out"
    _interrupt(tmp_path, "image-save", "deblur_main",
               [str(assets.jpegs / "train"), "-o", str(out), "--model", str(assets.model),
                "--quiet", *FIXED_FLAGS], signum)
    written = sorted(out.rglob("*.jpg"))
    assert [p.name for p in written] == ["0.jpg"]
    with Image.open(written[0]) as im:
        im.load()
    assert _temp_files(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT], ids=["SIGINT"])
def test_eval_interrupt_leaves_no_partial_report(assets, tmp_path, signum):
    out = tmp_path / "ev"
    run = _copy_run(assets, tmp_path)
    snapshots = run / "snapshots"
    shutil.copy(snapshots / "generator_epoch_0001.keras", snapshots / "generator_epoch_0002.keras")
    _interrupt(tmp_path, "image-save", "eval_main",
               ["--run", str(run), "--out", str(out), "--no-progress", *FIXED_FLAGS], signum)
    assert sorted(p.name for p in out.rglob("*.png")) == ["epoch_0001.png"]
    for image in out.rglob("*.png"):
        with Image.open(image) as im:
            im.load()
    assert _temp_files(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM], ids=["SIGTERM"])
def test_export_interrupt_leaves_no_partial_savedmodel(assets, tmp_path, signum):
    target = tmp_path / "sm"
    _interrupt(tmp_path, "before-rename", "export_main",
               ["--model", str(assets.model), "--format", "savedmodel", "-o", str(target)],
               signum)
    assert not target.exists()
    assert _temp_files(tmp_path) == []
