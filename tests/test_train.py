"""The trainer: a loss that falls, exact resume, failure handling, strategies, CLI.

Everything runs a tiny network (channel_rate 8) on 32x32 crops, so each training
run costs seconds. Runs that need a fresh process (a SIGKILL, logical CPU devices)
go through subprocesses.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import make_h5
from dgf.config import TrainConfig
from dgf.errors import DgfError

REPO = Path(__file__).resolve().parents[1]
# The per-epoch scoring runs TensorFlow's plain graph: what these tests check does not
# depend on the path, and the default (auto) measures XLA, ONNX Runtime and OpenVINO
# on each new layout, seconds of conversions per run (tests/test_engines.py and
# tests/test_jit_cli.py test the trainer's auto choice).
FIXED_PATH = dict(eval_engine="tensorflow", eval_jit="off")
TINY = dict(channel_rate=8, blocks=3, patch=16, crop=32, batch_size=2, perceptual_weight=0.0,
            val_samples=2, strip_pairs=2, log_every=1, save_every=1000, **FIXED_PATH)


@pytest.fixture(scope="module")
def h5_file(tmp_path_factory) -> Path:
    return make_h5(tmp_path_factory.mktemp("data") / "data.h5")


def _cfg(h5: Path, run_dir: Path, **kw) -> TrainConfig:
    values = {**TINY, "h5": str(h5), "run_dir": str(run_dir), **kw}
    return TrainConfig(**values)


# The run several tests resume, refuse or read: one epoch of 2 steps, stopped after
# step 1 with its checkpoint (ckpt-1). Trained once; each test takes its own copy.
ONE_STEP = dict(epochs=1, save_every=1)


@pytest.fixture(scope="module")
def one_step_run(h5_file, tmp_path_factory) -> Path:
    from dgf.session import train

    run = tmp_path_factory.mktemp("one-step") / "run"
    result = train(_cfg(h5_file, run, **ONE_STEP), progress=False, max_steps=1)
    assert result.step == 1
    return run


def _copy_run(run: Path, to: Path) -> Path:
    """A copy of the run folder ``run`` at ``to`` (which must not exist)."""
    shutil.copytree(run, to)
    return to


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# The paper's layout starts from noise and must halve its L1; a residual generator
# starts as the identity (L1 = the blur's) and must get clearly below that.
@pytest.mark.slow
@pytest.mark.parametrize("residual, ratio", [(False, 0.5), (True, 0.85)])
def test_tiny_overfit_l1_falls(h5_file, tmp_path, residual, ratio):
    from dgf.session import train

    small = make_h5(tmp_path / "two.h5", n_train=2, n_test=2, seed=3)
    # Scored every 4th epoch: the falling loss is the training log's.
    cfg = _cfg(small, tmp_path / "run", epochs=12, batch_size=1, dropout=0.0,
               adversarial_weight=0.01, g_lr=2e-3, augment=False, snapshots=False,
               residual=residual, eval_every=4, bn_recalibrate=0)
    result = train(cfg, progress=False)
    steps = _jsonl(tmp_path / "run" / "metrics.jsonl")
    l1 = [r["g_l1"] for r in steps if r["kind"] == "step"]
    assert result.step == 24 and len(l1) == 24
    first, last = np.mean(l1[:3]), np.mean(l1[-3:])
    assert last < ratio * first, (first, last)
    # Every term is logged separately, and the scored epochs' records carry test metrics.
    assert {"g_loss", "g_perceptual", "g_l1", "g_adv", "d_loss", "d_real", "d_fake",
            "g_lr", "images_per_sec"} <= set(steps[0])
    epochs = [r for r in steps if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == list(range(1, 13))
    scored = [r for r in epochs if "psnr" in r]
    assert [r["epoch"] for r in scored] == [4, 8, 12]
    assert all(np.isfinite(r["psnr"]) and 0 < r["ssim"] <= 1 for r in scored)


def _variables(trainer) -> dict[str, np.ndarray]:
    out = {}
    for prefix, obj in (("g", trainer.generator), ("d", trainer.discriminator),
                        ("go", trainer.g_optimizer), ("do", trainer.d_optimizer)):
        for i, v in enumerate(obj.variables):
            # Positions, not paths: Keras numbers auto-named variables per process.
            out[f"{prefix}/{i}/{v.name}"] = np.array(v.numpy())
    return out


@pytest.mark.slow
def test_restore_equals_saved_weights_and_slots(h5_file, tmp_path):
    import tensorflow as tf

    from dgf.actions import Checkpoints
    from dgf.distributed import select_strategy
    from dgf.session import train
    from dgf.train import GANTrainer

    cfg = _cfg(h5_file, tmp_path / "run", epochs=2)
    result = train(cfg, progress=False, max_steps=3)
    assert result.step == 3
    strategy = select_strategy("one")
    first = GANTrainer(cfg, strategy, total_steps=4)
    manager = tf.train.CheckpointManager(first.checkpoint, str(tmp_path / "run" / "checkpoints"), 3)
    Checkpoints(first.checkpoint, tmp_path / "run" / "checkpoints", cfg).restore(manager.latest_checkpoint)
    saved = _variables(first)
    # Optimizer slots (Adam moments) are restored, not zero.
    moments = [v for k, v in saved.items() if k.startswith("go/") and "momentum" in k]
    assert moments and any(np.abs(m).sum() > 0 for m in moments)
    assert int(first.step_var.numpy()) == 3 and int(first.batch_var.numpy()) == 1
    # A fresh trainer restored from the same checkpoint holds identical values,
    # and those are exactly the tensors stored in the checkpoint file.
    second = GANTrainer(cfg, strategy, total_steps=4)
    Checkpoints(second.checkpoint, tmp_path / "run" / "checkpoints", cfg).restore(manager.latest_checkpoint)
    again = _variables(second)
    assert saved.keys() == again.keys()
    for key in saved:
        np.testing.assert_array_equal(saved[key], again[key], err_msg=key)
    reader = tf.train.load_checkpoint(manager.latest_checkpoint)
    stored = {reader.get_tensor(k).tobytes() for k in reader.get_variable_to_shape_map()
              if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}
    live = [v for m in (first.generator, first.discriminator, first.g_optimizer,
                        first.d_optimizer) for v in m.variables]
    missing = [v.path for v in live if np.array(v.numpy()).tobytes() not in stored]
    assert not missing, missing[:5]


@pytest.mark.slow
def test_checkpoint_from_other_architecture_is_refused(h5_file, one_step_run, tmp_path):
    from dgf.session import train

    run = _copy_run(one_step_run, tmp_path / "run")
    # Same folder, different width, config.json edited to hide the change: the
    # restore itself must refuse, not load part of the weights.
    cfg_path = run / "config.json"
    saved = json.loads(cfg_path.read_text())
    saved["channel_rate"] = 16
    cfg_path.write_text(json.dumps(saved))
    with pytest.raises(DgfError, match="does not match this model"):
        train(_cfg(h5_file, run, **ONE_STEP, channel_rate=16), progress=False)


# --- who imports whom -----------------------------------------------------------------
def _dgf_imports(source: str) -> set[str]:
    """The dgf modules a module's ``source`` imports anywhere in it (under TYPE_CHECKING
    and inside functions too): ``import dgf.x``, ``from dgf.x import y``, ``from dgf
    import x``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("dgf.")}
        elif isinstance(node, ast.ImportFrom) and node.module == "dgf":
            found |= {f"dgf.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dgf."):
            found.add(node.module)
    return found


def _import_graph() -> dict[str, set[str]]:
    """Every module and subpackage of dgf, and the ones of them it imports."""
    package = REPO / "dgf"
    paths = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts  # dgf/weights: dgf.weights
        if parts:
            paths[".".join(("dgf", *parts))] = path
    graph = {}
    for name, path in paths.items():
        graph[name] = {m for m in _dgf_imports(path.read_text(encoding="utf-8")) if m in paths}
    return graph


def _on_a_cycle(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path of imports from ``start`` back to itself, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        name, path = stack.pop()
        for child in sorted(graph.get(name, ())):
            if child == start:
                return path + [start]
            if child not in seen:
                seen.add(child)
                stack.append((child, path + [child]))
    return None


def test_the_training_modules_import_one_way():
    """session builds the run, loop drives it, train holds the step: session imports
    loop and train, loop imports train, and nothing leads back from either."""
    graph = _import_graph()
    assert {"dgf.loop", "dgf.train"} <= graph["dgf.session"]
    assert "dgf.train" in graph["dgf.loop"]
    assert not graph["dgf.train"] & {"dgf.loop", "dgf.session"}
    assert "dgf.session" not in graph["dgf.loop"]
    for name in ("dgf.session", "dgf.loop", "dgf.train"):
        assert _on_a_cycle(graph, name) is None, _on_a_cycle(graph, name)


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _on_a_cycle(graph, "a") == ["a", "b", "c", "a"]
    assert _on_a_cycle(graph, "d") is None
    tree = ("import dgf.loop\nfrom dgf import train\nfrom dgf.actions import X\n"
            "def f():\n    from dgf.session import train\nimport numpy\n")
    assert _dgf_imports(tree) == {"dgf.loop", "dgf.train", "dgf.actions", "dgf.session"}


def test_the_loop_checks_and_shows_the_loss_tables_terms():
    from dgf.loop import CHECKED_KEYS, NonFiniteLoss, _check_finite, _Progress
    from dgf.losses import GENERATOR_TERMS

    names = tuple(term.name for term in GENERATOR_TERMS)
    assert CHECKED_KEYS == (*names, "d_loss", "g_loss")
    assert CHECKED_KEYS == ("g_perceptual", "g_l1", "g_pixel", "g_ssim", "g_adv", "d_loss",
                            "g_loss")
    values = {"g_perceptual": 0.5, "g_l1": 0.25, "g_pixel": 0.123456, "g_ssim": 0.0,
              "g_adv": 1.23456, "d_loss": 1.5, "g_loss": 117.4, "d_real": 0.3, "d_fake": 0.2}
    _check_finite(3, values)
    # The first term of the table that is not finite is the one named.
    with pytest.raises(NonFiniteLoss, match=r"loss term g_ssim became nan at step 3 "
                                            r"\(g_perceptual=0\.5, g_l1=0\.25"):
        _check_finite(3, {**values, "g_ssim": float("nan"), "g_loss": float("nan")})
    progress = _Progress(0, TrainConfig(epochs=2), steps=4, done=0, show=False)
    progress.finished_step(values, 3.0)
    progress.close()
    assert progress.bar.postfix == "adv=1.23, d=1.5, g=117, img_s=3.0, pixel=0.123"


def test_resolve_config_precedence(tmp_path):
    from dgf.config import resolve_config

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("epochs: 7\nbatch-size: 4\ncrop: 64\n")
    cfg, resuming = resolve_config({"epochs": 3}, cfg_file, runs_root=tmp_path / "runs")
    assert (cfg.epochs, cfg.batch_size, cfg.crop) == (3, 4, 64)
    assert not resuming and Path(cfg.run_dir).parent == tmp_path / "runs"

    with pytest.raises(DgfError, match="unknown key"):
        bad = tmp_path / "bad.json"
        bad.write_text('{"epochz": 3}')
        resolve_config({}, bad)
    with pytest.raises(DgfError, match="not a multiple of the discriminator patch"):
        TrainConfig(crop=100, patch=64)


def test_old_name_l1_weight_is_read_as_pixel_weight_with_a_note(tmp_path, capsys):
    from dgf.config import load_config_file, resolve_config

    cfg_file = tmp_path / "old.yaml"
    cfg_file.write_text("l1_weight: 42\npixel_loss: l2\n")
    assert load_config_file(cfg_file) == {"pixel_weight": 42.0, "pixel_loss": "l2"}
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"note: {cfg_file}: l1_weight is now called pixel_weight; read "
                   f"l1_weight: 42 as pixel_weight"]
    # An old run folder (its config.json says l1_weight) resumes with its weight.
    run = tmp_path / "runs" / "old"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    saved = TrainConfig(run_dir=str(run), pixel_weight=7.5).to_dict()
    saved["l1_weight"] = saved.pop("pixel_weight")
    (run / "config.json").write_text(json.dumps(saved))
    cfg, resuming = resolve_config({"run_dir": str(run), "epochs": 12})
    assert resuming and (cfg.pixel_weight, cfg.epochs) == (7.5, 12)
    assert "l1_weight is now called pixel_weight" in capsys.readouterr().err
    both = tmp_path / "both.json"
    both.write_text('{"l1_weight": 1, "pixel_weight": 2}')
    with pytest.raises(DgfError, match=f"{both}: l1_weight and pixel_weight are the same "
                                       "setting .* keep pixel_weight only"):
        load_config_file(both)
    with pytest.raises(DgfError, match="unknown key"):
        TrainConfig.from_dict({"l2_weight": 1})


def test_run_dir_names_the_files_of_a_run_once(tmp_path):
    from dgf.config import RunDir, save_config

    run = RunDir(tmp_path / "r")
    assert RunDir(str(tmp_path / "r")) == run and run.path == tmp_path / "r"
    names = {run.config: "config.json", run.checkpoints: "checkpoints",
             run.metrics_log: "metrics.jsonl", run.tensorboard: "tensorboard",
             run.samples: "samples", run.snapshots: "snapshots", run.generator:
             "generator.keras", run.best: "generator_best.keras", run.eval: "eval"}
    assert {path.relative_to(run.path).as_posix(): name for path, name in names.items()} == {
        name: name for name in names.values()}
    assert run.checkpoint_index == run.checkpoints / "checkpoint"
    assert run.sample(12) == run.samples / "epoch_0012.png"
    assert run.snapshot(7) == run.snapshots / "generator_epoch_0007.keras"
    assert run.find_snapshots() == {} and not run.has_checkpoint()
    run.snapshots.mkdir(parents=True)
    for name in ("generator_epoch_0010.keras", "generator_epoch_0002.keras", "notes.txt"):
        (run.snapshots / name).write_text("x")
    (run.snapshots / "generator_epoch_0003.keras").mkdir()  # a folder is no snapshot
    assert run.find_snapshots() == {2: run.snapshot(2), 10: run.snapshot(10)}
    assert list(run.find_snapshots()) == [2, 10]
    with pytest.raises(DgfError, match=r"r/config\.json not found"):
        run.read_config()
    save_config(TrainConfig(epochs=4, run_dir=str(run.path)), run.config)
    assert run.read_config() == TrainConfig(epochs=4, run_dir=str(run.path))
    run.checkpoints.mkdir()
    run.checkpoint_index.write_text("")
    assert run.has_checkpoint()


def _event_tags(folder: Path) -> dict[str, float | None]:
    import tensorflow as tf

    tags = {}
    for events in folder.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                tags[value.tag] = float(array) if array.ndim == 0 else None  # None: an image
    return tags


def test_crop_border_setting_flag_workers_and_tensorboard_names(h5_file, tmp_path):
    from dgf import distributed
    from dgf.commands.training import flag_type, train_flags
    from dgf.actions import MetricsLog
    from dgf.session import train

    assert TrainConfig().crop_border == 0
    with pytest.raises(DgfError, match="crop_border must be an integer >= 0, got -1"):
        TrainConfig(crop_border=-1)
    flags = {key: (flag, flag_type(key)) for flag, key in train_flags()}
    assert flags["crop_border"][0] == "--crop-border"
    assert TrainConfig.from_dict({"crop_border": flags["crop_border"][1]("8")}).crop_border == 8
    pairs = [(flag, key) for key, (flag, _) in flags.items()]
    assert distributed.worker_argv({"crop_border": 8}, pairs) == ["--crop-border", "8"]
    # Refused before training: nothing of the 48-pixel test images would be left.
    with pytest.raises(DgfError, match="--crop-border: crop border 24 leaves nothing of a 48x48"):
        train(_cfg(h5_file, tmp_path / "r", crop_border=24), progress=False)
    assert not (tmp_path / "r" / "checkpoints").exists()

    score = {"psnr": 25.0, "ssim": 0.75, "blurred_psnr": 20.0}
    for n, folder in ((0, tmp_path / "plain"), (8, tmp_path / "cropped")):
        log = MetricsLog(folder)
        log.log_scores(1, {**score, "crop_border": n}, None)
        log.close()
    assert _event_tags(tmp_path / "plain" / "tensorboard") == {
        "test/psnr": 25.0, "test/ssim": 0.75, "test/blurred_psnr": 20.0}
    assert _event_tags(tmp_path / "cropped" / "tensorboard") == {
        "test/psnr_crop8": 25.0, "test/ssim_crop8": 0.75, "test/blurred_psnr_crop8": 20.0}


def test_metric_protocol_and_y_channel_settings_flags_and_tensorboard_names(h5_file, tmp_path):
    from dgf import distributed
    from dgf.commands.training import flag_type, train_flags
    from dgf.actions import SCORE_KEYS, MetricsLog, Scoring

    assert (TrainConfig().metric_protocol, TrainConfig().y_channel) == ("skimage", False)
    with pytest.raises(DgfError, match="metric_protocol must be one of .*got 'matlab'"):
        TrainConfig(metric_protocol="matlab")
    assert {"crop_border", "protocol", "y_channel"} <= set(SCORE_KEYS)
    flags = {key: (flag, flag_type(key)) for flag, key in train_flags()}
    assert flags["metric_protocol"][0] == "--metric-protocol"
    assert flags["y_channel"][0] == "--y-channel"
    cfg = TrainConfig.from_dict({"metric_protocol": flags["metric_protocol"][1]("basicsr"),
                                 "y_channel": flags["y_channel"][1]("on")})
    assert (cfg.metric_protocol, cfg.y_channel) == ("basicsr", True)
    pairs = [(flag, key) for key, (flag, _) in flags.items()]
    assert distributed.worker_argv({"metric_protocol": "basicsr", "y_channel": True}, pairs) == [
        "--metric-protocol", "basicsr", "--y-channel", "on"]
    # Refused before training: 48 - 2 x 19 = 10 pixels, less than the 11x11 window.
    with pytest.raises(DgfError, match=r"--crop-border: crop border 19 leaves 10x10 of a 48x48 "
                                       r"image, less than the 11x11 window of basicsr SSIM"):
        Scoring(_cfg(h5_file, tmp_path / "r", crop_border=19, metric_protocol="basicsr"))
    Scoring(_cfg(h5_file, tmp_path / "r", crop_border=19))  # 10x10 holds the 7x7 window

    score = {"psnr": 25.0, "ssim": 0.75, "blurred_psnr": 20.0}
    for named, folder in (({"crop_border": 8, "protocol": "basicsr", "y_channel": True}, "a"),
                          ({"crop_border": 0, "protocol": "skimage", "y_channel": True}, "b"),
                          ({"crop_border": 0, "protocol": "skimage", "y_channel": False}, "c")):
        log = MetricsLog(tmp_path / folder)
        log.log_scores(1, {**score, **named}, None)
        log.close()
    assert _event_tags(tmp_path / "a" / "tensorboard") == {
        "test/psnr_crop8_basicsr_y": 25.0, "test/ssim_crop8_basicsr_y": 0.75,
        "test/blurred_psnr_crop8_basicsr_y": 20.0}
    assert set(_event_tags(tmp_path / "b" / "tensorboard")) == {
        "test/psnr_y", "test/ssim_y", "test/blurred_psnr_y"}
    assert set(_event_tags(tmp_path / "c" / "tensorboard")) == {
        "test/psnr", "test/ssim", "test/blurred_psnr"}


@pytest.mark.slow
def test_training_with_a_crop_border_records_it_each_scored_epoch(h5_file, tmp_path, capsys):
    from conftest import plain
    from dgf.metrics import ScoreSettings
    from dgf.runtime import load_generator
    from dgf.scoring import EvalOptions, evaluate_split
    from dgf.session import train

    run = tmp_path / "run"
    train(_cfg(h5_file, run, epochs=2, crop_border=4), progress=False)
    said = capsys.readouterr()
    assert "on 2 pairs (crop border 4)" in said.out
    epochs = [r for r in _jsonl(run / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [(r["epoch"], r["crop_border"]) for r in epochs] == [(1, 4), (2, 4)]
    # The recorded score is the cropped one, not the whole image's.
    last = load_generator(run / "snapshots" / "generator_epoch_0002.keras")
    # The trainer's path (plain TensorFlow, FIXED_PATH, its batch of 8), so the scores
    # match to the bit.
    run_as_trainer = plain(last, batch=8)
    cropped, _ = evaluate_split(run_as_trainer, h5_file,
                                EvalOptions(limit=2, settings=ScoreSettings(crop_border=4)),
                                progress=False)
    whole, _ = evaluate_split(run_as_trainer, h5_file, EvalOptions(limit=2), progress=False)
    assert epochs[-1]["psnr"] == pytest.approx(cropped["psnr"], abs=1e-6)
    assert epochs[-1]["blurred_psnr"] == pytest.approx(cropped["blurred_psnr"], abs=1e-9)
    assert epochs[-1]["blurred_psnr"] != pytest.approx(whole["blurred_psnr"], abs=1e-6)
    tags = _event_tags(run / "tensorboard")
    assert "test/psnr_crop4" in tags and "test/psnr" not in tags
    # 48 px training images are too small to measure a blur on: the files record
    # none, and the run said so once.
    from dgf.metadata import read_metadata

    assert "training_blur" not in read_metadata(run / "generator.keras")
    assert said.err.count("note: the training blur of") == 1


def test_saved_generators_record_the_training_blur(generator, tmp_path):
    """generator.keras and generator_best.keras carry the blur of the training
    images, measured as dgf-deblur --scale auto measures a photo's."""
    import tensorflow as tf

    from conftest import make_h5
    from dgf.actions import ModelFiles
    from dgf.blur import ESTIMATOR, measure_training_blur
    from dgf.metadata import read_metadata, training_streak
    from dgf.schema import check_split, open_pairs_file

    h5 = make_h5(tmp_path / "pairs.h5", n_train=3, size=96)
    with open_pairs_file(h5) as handle:
        infos = [check_split(handle, split, h5) for split in ("train", "test")]
    cfg = _cfg(h5, tmp_path / "run", snapshots=False)
    files = ModelFiles(cfg, tf.Variable(-1.0), *infos)
    score = {"psnr": 20.0, "ssim": 0.5, "blurred_psnr": 19.0, "blurred_ssim": 0.4}
    assert files(generator, 0, score)
    blur = measure_training_blur(h5, limit=ModelFiles.TRAINING_BLUR_IMAGES)
    for name in ("generator.keras", "generator_best.keras"):
        record = read_metadata(tmp_path / "run" / name)
        assert record["training_blur"] == blur
        assert training_streak(record, ESTIMATOR) == blur["streak_px"] > 0


@pytest.mark.slow
def test_resolve_config_resume_rules(one_step_run, tmp_path):
    from dgf.config import resolve_config

    (tmp_path / "runs").mkdir()
    run = _copy_run(one_step_run, tmp_path / "runs" / "a")
    cfg, resuming = resolve_config({"run_dir": str(run), "epochs": 5})
    assert resuming and cfg.epochs == 5 and cfg.channel_rate == 8  # saved config is the base
    cfg, resuming = resolve_config({}, resume=True, runs_root=tmp_path / "runs")
    assert resuming and Path(cfg.run_dir) == run
    with pytest.raises(DgfError, match="cannot resume with channel_rate=16"):
        resolve_config({"run_dir": str(run), "channel_rate": 16})
    with pytest.raises(DgfError, match="trained with blocks=3; it cannot resume with blocks=10"):
        resolve_config({"run_dir": str(run), "blocks": 10})
    with pytest.raises(DgfError, match="trained with crop=32; this worker was started with "
                                       "crop=48"):
        resolve_config({"run_dir": str(run), "strategy": "multiworker", "crop": 48})
    cfg, _ = resolve_config({"run_dir": str(run), "crop": 48})  # one process: a new crop is fine
    assert cfg.crop == 48


@pytest.mark.slow
def test_a_refused_resume_answers_before_tensorflow_loads(one_step_run, tmp_path):
    """dgf-train compares a resume's flags with the run's config.json before it
    imports TensorFlow: a wrong flag is refused at once, not after the import."""
    run = _copy_run(one_step_run, tmp_path / "run")
    code = ("import sys; from dgf.cli import train_main; code = train_main(); "
            "print('tensorflow' in sys.modules); sys.exit(code)")
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["PYTHONPATH"] = str(REPO)
    for flags, message in (
            (["--channel-rate", "16"], "it cannot resume with channel_rate=16"),
            (["--strategy", "multiworker", "--batch-size", "4"],
             "was trained with batch_size=2 (the global batch, over all workers); this "
             "worker was started with batch_size=4")):
        done = subprocess.run([sys.executable, "-c", code, "--run-dir", str(run), *flags],
                              capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 2, done.stderr[-3000:]
        assert message in done.stderr, done.stderr[-3000:]
        assert done.stdout.strip().splitlines()[-1] == "False"  # TensorFlow never loaded


@pytest.mark.slow
def test_nan_guard_names_step_and_term_and_keeps_checkpoint(h5_file, one_step_run, tmp_path,
                                                            monkeypatch):
    import tensorflow as tf

    import dgf.losses
    from dgf.loop import NonFiniteLoss
    from dgf.session import train

    run = _copy_run(one_step_run, tmp_path / "run")
    before = sorted(p.name for p in (run / "checkpoints").iterdir())

    real_l1 = dgf.losses.l1_loss

    def poisoned(a, b):
        return real_l1(a, b) * tf.constant(np.nan, tf.float32)

    monkeypatch.setattr(dgf.losses, "l1_loss", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"g_l1 became nan at step 2"):
        train(_cfg(h5_file, run, **ONE_STEP), progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    latest = tf.train.latest_checkpoint(str(run / "checkpoints"))
    assert latest.endswith("ckpt-1")


@pytest.mark.slow
def test_a_step_record_logs_the_loss_tables_names(one_step_run):
    """metrics.jsonl and TensorBoard log each row of the loss table, g_loss and D's
    values, by name, and nothing else but the record's own fields."""
    from dgf.losses import logged_names

    losses = {*logged_names(), "d_loss", "d_real", "d_fake"}
    scalars = {*losses, "g_lr", "d_lr", "images_per_sec"}
    steps = [r for r in _jsonl(one_step_run / "metrics.jsonl") if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1]
    assert set(steps[0]) == {"kind", "step", "epoch", *scalars}
    tags = _event_tags(one_step_run / "tensorboard")
    assert set(tags) == {f"train/{name}" for name in scalars}


def test_bad_data_is_refused_before_training(h5_file, tmp_path):
    from dgf.session import train

    with pytest.raises(DgfError, match="does not exist"):
        train(_cfg(tmp_path / "missing.h5", tmp_path / "r1"), progress=False)
    with pytest.raises(DgfError, match="crop 64 is larger than the training images"):
        train(_cfg(h5_file, tmp_path / "r2", crop=64), progress=False)
    with pytest.raises(DgfError, match="batch size 8 is larger than the training split"):
        train(_cfg(h5_file, tmp_path / "r3", batch_size=8), progress=False)
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f.create_dataset("train_data_full", data=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(DgfError, match="train_data"):
        train(_cfg(empty, tmp_path / "r4"), progress=False)
    assert not (tmp_path / "r2" / "checkpoints").exists()


def test_offline_vgg_fails_before_training(h5_file, tmp_path, monkeypatch):
    from dgf.session import train

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))
    cfg = _cfg(h5_file, tmp_path / "run", perceptual_weight=145.0, vgg_weights="imagenet")
    notop = r"vgg16_weights_tf_dim_ordering_tf_kernels_notop\.h5"
    with pytest.raises(DgfError, match=notop) as info:
        train(cfg, progress=False)
    message = str(info.value)
    assert "--perceptual-weight 0" in message
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_perceptual_term_with_local_vgg_weights(h5_file, tmp_path):
    """--vgg-weights PATH loads a local file and the perceptual term is trained."""
    import keras

    from dgf.session import train

    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    weights = tmp_path / "vgg16_notop.weights.h5"
    vgg.save_weights(weights)
    cfg = _cfg(h5_file, tmp_path / "run", epochs=1, perceptual_weight=1.0, vgg_weights=str(weights))
    train(cfg, progress=False, max_steps=2)
    steps = [r for r in _jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "step"]
    assert all(r["g_perceptual"] > 0 for r in steps)


def _python_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _train_args(h5: Path, run: Path, *extra: str) -> list[str]:
    """dgf-train's arguments for a tiny run of ``h5`` into ``run``."""
    return ["--h5", str(h5), "--run-dir", str(run), "--channel-rate", "8", "--blocks", "3",
            "--patch", "16", "--crop", "32", "--batch-size", "1", "--perceptual-weight", "0",
            "--val-samples", "2", "--strip-pairs", "2", "--log-every", "1",
            "--eval-engine", "tensorflow", "--eval-jit", "off", *extra]


def _train_cli(h5: Path, run: Path, *extra: str) -> list[str]:
    """:func:`_train_args` as a dgf-train process."""
    return [sys.executable, "-c", "import sys; from dgf.cli import train_main; "
            "sys.exit(train_main())", *_train_args(h5, run, *extra)]


@pytest.mark.slow
def test_resume_after_sigkill_ends_at_same_step(h5_file, tmp_path, capsys):
    """Kill a run with SIGKILL mid-training, resume it (in this process), and end
    where an uninterrupted run ends: 3 epochs x 4 steps = step 12."""
    from dgf.cli import train_main

    run = tmp_path / "run"
    args = _train_cli(h5_file, run, "--epochs", "3", "--save-every", "1")
    proc = subprocess.Popen(args, env=_python_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    ckpt = run / "checkpoints" / "checkpoint"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file() and "ckpt-5" in ckpt.read_text():
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    text = ckpt.read_text()
    killed_at = int(text.split('model_checkpoint_path: "ckpt-')[1].split('"')[0])
    assert 5 <= killed_at < 12
    capsys.readouterr()
    status = train_main(_train_args(h5_file, run, "--epochs", "3", "--save-every", "1"))
    done = capsys.readouterr()
    assert status == 0, done.out[-2000:] + done.err[-2000:]
    assert f"resuming {run}" in done.out
    records = _jsonl(run / "metrics.jsonl")
    assert max(r["step"] for r in records) == 12
    # Steps redone after the kill are logged once: the log reads as one run.
    step_ids = [r["step"] for r in records if r["kind"] == "step"]
    assert step_ids == list(range(1, 13))
    assert [r["epoch"] for r in records if r["kind"] == "epoch"][-1] == 3
    import tensorflow as tf

    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("ckpt-12")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_saves_and_exits_cleanly(h5_file, tmp_path, signum):
    """Ctrl-C and SIGTERM (a scheduler) both save a checkpoint and exit with 130."""
    run = tmp_path / "run"
    proc = subprocess.Popen(_train_cli(h5_file, run, "--epochs", "50"), env=_python_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "checkpoint saved" in err and f"--run-dir {run}" in err
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(run / "checkpoints"))
    last_step = max(r["step"] for r in _jsonl(metrics))
    assert latest is not None and int(latest.rsplit("-", 1)[1]) >= last_step


@pytest.mark.slow
def test_cli_smoke_writes_run_folder(h5_file, tmp_path, capsys):
    """dgf-train's command line, run in this process (the interrupt, SIGKILL and error
    tests run it as a process of its own)."""
    from PIL import Image

    from dgf.cli import train_main

    run = tmp_path / "run"
    status = train_main(_train_args(h5_file, run, "--epochs", "3", "--eval-every", "2"))
    done = capsys.readouterr()
    assert status == 0, done.err[-3000:]

    cfg = json.loads((run / "config.json").read_text())
    assert cfg["channel_rate"] == 8 and cfg["epochs"] == 3 and cfg["h5"] == str(h5_file)
    assert cfg["eval_every"] == 2
    # Scored (with a strip) at epoch 2 and at the last; a snapshot every epoch.
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "epoch_0002.png", "epoch_0003.png"]
    for epoch in (2, 3):
        strip = Image.open(run / "samples" / f"epoch_{epoch:04d}.png")
        assert strip.size == (3 * 48, 2 * 48)  # sharp | blurred | deblurred, 2 rows
    for epoch in (1, 2, 3):
        assert (run / "snapshots" / f"generator_epoch_{epoch:04d}.keras").is_file()
    assert (run / "generator.keras").is_file() and (run / "generator_best.keras").is_file()
    records = _jsonl(run / "metrics.jsonl")
    assert sum(r["kind"] == "step" for r in records) == 12
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [("psnr" in r, "score" in r["end_parts"]) for r in epochs] == [
        (False, False), (True, True), (True, True)]
    assert all("model_files" in r["end_parts"] for r in epochs)
    assert "epoch 1: test PSNR" not in done.out and "epoch 2: test PSNR" in done.out
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    import keras

    import dgf.models  # noqa: F401  (registers the custom layers)

    g = keras.models.load_model(run / "generator.keras")
    assert g.output_shape[-1] == 3


@pytest.mark.slow
def test_cli_errors_are_clean(tmp_path):
    done = subprocess.run(_train_cli(tmp_path / "nope.h5", tmp_path / "run", "--epochs", "1"),
                          env=_python_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "error:" in done.stderr and "nope.h5" in done.stderr and "Traceback" not in done.stderr


# --strategy mirrored over two logical CPUs (--cpu-devices 2) is trained, and compared
# step by step with two multi-worker processes, in tests/test_multiworker.py.


@pytest.mark.slow
def test_recalibrate_batchnorm_matches_training_mode_statistics():
    """After re-estimating on one batch, inference mode reproduces training mode on
    that batch (both then normalise with the same statistics), even when the
    running averages started far off; BatchNorm momentum is restored."""
    import keras

    from dgf.models import build_generator
    from dgf.actions import recalibrate_batchnorm

    keras.utils.set_random_seed(1)
    g = build_generator(channel_rate=8, dropout=0.0)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 24, 24, 3)).astype(np.float32)
    bns = [layer for layer in g.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.moving_mean.assign(layer.moving_mean + 3.0)
    train_out = np.asarray(g(x, training=True))
    before = np.abs(np.asarray(g(x, training=False)) - train_out).max()
    assert recalibrate_batchnorm(g, [x, x, x]) == 3
    after = np.abs(np.asarray(g(x, training=False)) - train_out).max()
    assert before > 0.1 and after < 1e-4, (before, after)
    assert all(layer.momentum == 0.99 for layer in bns)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_resumes(h5_file, tmp_path, precision):
    """bf16 and fp16 (with loss scaling) run the step, keep float32 losses and
    restore the global dtype policy afterwards."""
    import keras

    from dgf.session import train

    run = tmp_path / "run"
    result = train(_cfg(h5_file, run, epochs=1, precision=precision, save_every=1),
                   progress=False, max_steps=2)
    assert result.step == 2
    assert keras.mixed_precision.dtype_policy().name == "float32"
    steps = [r for r in _jsonl(run / "metrics.jsonl") if r["kind"] == "step"]
    assert len(steps) == 2 and all(np.isfinite(r["g_loss"]) for r in steps)
    resumed = train(_cfg(h5_file, run, epochs=1, precision=precision), progress=False)
    assert resumed.step == 2 * 1  # 4 pairs / batch 2 = 2 steps: nothing left but the epoch end
    assert [r["epoch"] for r in _jsonl(run / "metrics.jsonl") if r["kind"] == "epoch"] == [1]


def test_fused_adam_takes_kerass_adam_steps_with_under_half_the_ops():
    """dgf.train.FusedAdam: the same weights and slots as keras.optimizers.Adam, step
    by step, from one fused kernel per variable, also compiled by XLA."""
    import keras
    import tensorflow as tf

    from dgf.train import FusedAdam

    rng = np.random.default_rng(0)
    starts = [rng.normal(size=shape).astype("float32") for shape in ((3, 3, 4, 8), (8,))]
    grads = [[rng.normal(size=w.shape).astype("float32") for w in starts] for _ in range(4)]
    results, op_counts = [], []
    # Keras's Adam, FusedAdam, and FusedAdam compiled by XLA (a --jit on training step).
    for kind, jit in ((keras.optimizers.Adam, False), (FusedAdam, False), (FusedAdam, True)):
        weights = [keras.Variable(w) for w in starts]
        optimizer = kind(learning_rate=1e-2, beta_1=0.5, beta_2=0.9)
        optimizer.build(weights)
        step = tf.function(lambda gs: optimizer.apply(gs, weights), jit_compile=jit)
        for gs in grads:
            step([tf.constant(g) for g in gs])
        graph = step.get_concrete_function([tf.TensorSpec(w.shape) for w in starts]).graph
        op_counts.append(len(graph.get_operations()))
        results.append([x.numpy() for x in (*weights, *optimizer._momentums,
                                             *optimizer._velocities)])
    for keras_value, fused_value, compiled_value in zip(*results):
        np.testing.assert_allclose(fused_value, keras_value, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(compiled_value, keras_value, rtol=1e-5, atol=1e-6)
    assert not np.allclose(results[1][0], starts[0])  # the steps moved the weights
    assert op_counts[1] < 0.5 * op_counts[0], op_counts


def test_linear_schedule_holds_then_decays_to_zero():
    from dgf.train import HoldThenLinearDecay

    schedule = HoldThenLinearDecay(1e-3, total_steps=100)
    values = [float(schedule(step)) for step in (0, 50, 75, 100, 150)]
    np.testing.assert_allclose(values, [1e-3, 1e-3, 5e-4, 0.0, 0.0], atol=1e-9)
    clone = type(schedule).from_config(schedule.get_config())
    assert float(clone(75)) == pytest.approx(5e-4)


def test_multiworker_without_tf_config_is_a_clear_error(monkeypatch):
    from dgf.distributed import select_strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(DgfError, match="TF_CONFIG"):
        select_strategy("multiworker")


# --- fine-tuning: --init-generator --------------------------------------------------
def _float_weights(model) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.weights if "seed_generator_state" not in w.path]


@pytest.mark.slow
def test_start_from_copies_the_weights_and_refuses_other_layouts(h5_file, tmp_path):
    import keras

    from dgf.models import build_generator
    from dgf.distributed import select_strategy
    from dgf.train import GANTrainer

    cfg = _cfg(h5_file, tmp_path / "run", residual=True, batchnorm=False)
    trainer = GANTrainer(cfg, select_strategy("one"), total_steps=4)
    keras.utils.set_random_seed(5)
    # Dropout differs (it has no weights); the layout matches.
    source = build_generator(channel_rate=8, blocks=3, residual=True, batchnorm=False,
                             dropout=0.0)
    for w in source.weights:
        if "seed_generator_state" not in w.path:
            w.assign(np.random.default_rng(1).normal(0, 0.1, w.shape).astype("float32"))
    trainer.start_from(source, "g.keras")
    for target in (trainer.generator, trainer.averaged):
        for mine, theirs in zip(_float_weights(target), _float_weights(source), strict=True):
            np.testing.assert_array_equal(mine, theirs)

    wider = build_generator(channel_rate=16, blocks=4, residual=False, batchnorm=False)
    with pytest.raises(DgfError, match=r"wide\.keras is a generator with channel rate 16, "
                       r"4 blocks, residual off, batchnorm off, space-to-depth 1; this run "
                       r"builds channel rate 8, 3 blocks, residual on, batchnorm off, "
                       r"space-to-depth 1\. Pass --channel-rate 16 --blocks 4 --residual off "
                       r"to fine-tune it"):
        trainer.start_from(wider, "wide.keras")
    inp = keras.Input((None, None, 3))
    with pytest.raises(DgfError, match=r"other\.keras is not a DGF generator"):
        trainer.start_from(keras.Model(inp, keras.layers.Identity()(inp)), "other.keras")


def test_init_generator_names_the_missing_file_and_finds_the_bundled_model(tmp_path):
    from dgf.session import _initial_generator
    from dgf.models import generator_layout

    missing = tmp_path / "nope.keras"
    with pytest.raises(DgfError, match=r"--init-generator: .*nope\.keras.*does not exist"):
        _initial_generator(TrainConfig(init_generator=str(missing)))
    bundled = _initial_generator(TrainConfig(init_generator="bundled"))
    assert generator_layout(bundled) == {"channel_rate": 32, "blocks": 10, "residual": True,
                                         "batchnorm": False, "space_to_depth": 4}
    assert _initial_generator(TrainConfig()) is None


@pytest.mark.slow
def test_fine_tuning_starts_from_the_given_generator(h5_file, tmp_path):
    """A run started from another run's generator, at a learning rate too small to
    move it, ends where that generator was, not where its own seed would start."""
    import keras

    from dgf.session import train

    # No BatchNorm: its moving statistics follow the data whatever the learning rate.
    first = _cfg(h5_file, tmp_path / "first", epochs=1, ema_decay=0.0, batchnorm=False)
    train(first, progress=False)
    trained = keras.models.load_model(tmp_path / "first" / "generator.keras")
    tuned = first.replace(run_dir=str(tmp_path / "tuned"), g_lr=1e-12,
                          init_generator=str(tmp_path / "first" / "generator.keras"))
    train(tuned, progress=False)
    ended = keras.models.load_model(tmp_path / "tuned" / "generator.keras")
    for mine, theirs in zip(_float_weights(ended), _float_weights(trained), strict=True):
        np.testing.assert_allclose(mine, theirs, atol=1e-6)
    # Two Adam steps move the trained generator about 2 x lr = 6e-4 from a fresh one
    # with the same seed, far outside the tolerance above: ignoring --init-generator
    # would have failed that check.
    from dgf.models import build_generator

    keras.utils.set_random_seed(first.seed)
    fresh = build_generator(channel_rate=8, blocks=first.blocks, dropout=first.dropout,
                            residual=first.residual, batchnorm=first.batchnorm)
    gaps = [np.abs(a - b).max() for a, b in zip(_float_weights(fresh), _float_weights(trained))]
    assert max(gaps) > 1e-4
    saved = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert saved["init_generator"] == str(tmp_path / "first" / "generator.keras")
