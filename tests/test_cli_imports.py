"""Every command's --help imports no TensorFlow and lists the choices of the module
that owns them; the modules that do the work use the same values."""
import dataclasses
import inspect
import json
import os
import subprocess
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from dgf import hdf5, options, sources, synth

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras")

# Runs one console command's function with --help in a fresh interpreter, then
# reports its output and which heavy packages ended up imported.
_PROBE = r"""
import contextlib, importlib, io, json, sys
module, function = sys.argv[1].split(":")
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        getattr(importlib.import_module(module), function)(["--help"])
        status = None
    except SystemExit as exc:
        status = exc.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras"})
print(json.dumps({"status": status, "help": out.getvalue(), "heavy": heavy}))
"""


def _scripts() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml: command -> "module:function"."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    table = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.]+:\w+)"', table, flags=re.M))


def _help(target: str) -> dict:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, target], capture_output=True, text=True,
        env=env, cwd=REPO, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    # argparse wraps help text; compare with single spaces.
    result["help"] = " ".join(result["help"].split())
    return result


def _choices(values) -> str:
    return "{" + ",".join(values) + "}"


def test_every_console_command_is_probed():
    assert set(_scripts()) == {
        "build-hdf5", "dgf-make-pairs", "dgf-train", "dgf-eval", "dgf-deblur", "dgf-export",
        "dgf-info",
    }


@pytest.mark.parametrize("command", sorted(_scripts()))
@pytest.mark.slow
def test_help_imports_no_tensorflow(command):
    result = _help(_scripts()[command])
    assert result["status"] == 0
    assert f"usage: {command}" in result["help"]
    assert result["heavy"] == [], f"{command} --help imported {result['heavy']}"


def test_build_hdf5_help_lists_the_owners_choices_and_defaults():
    text = _help(_scripts()["build-hdf5"])["help"]
    defaults = inspect.signature(hdf5.BuildOptions).parameters
    assert _choices(("auto", *sources.LAYOUTS)) in text
    assert _choices(sources.ORDERS) in text
    assert _choices(hdf5.COMPRESSIONS) in text
    assert _choices(hdf5.ON_ERROR) in text
    assert f"(default: {defaults['size'].default})" in text
    output = inspect.signature(hdf5.build_hdf5).parameters["output"].default
    assert f"(default: {output})" in text


def test_make_pairs_help_lists_the_owners_choices_and_defaults():
    text = _help(_scripts()["dgf-make-pairs"])["help"]
    defaults = inspect.signature(synth.MakePairsOptions).parameters
    assert _choices(synth.OUTPUT_FORMATS) in text
    assert f"(default: {synth.DEFAULT_STRENGTH})" in text
    for flag, name in (("--per-image", "per_image"), ("--kernel-size", "kernel_size"),
                       ("--test-fraction", "test_fraction"), ("--format", "fmt")):
        after_flag = text.split(f" {flag} ", 1)[1]
        assert f"(default: {defaults[name].default})" in after_flag.split(" --", 1)[0]


@pytest.mark.slow
def test_inference_commands_help_lists_the_options_module():
    deblur = _help(_scripts()["dgf-deblur"])["help"]
    assert _choices(options.PRECISION_CHOICES) in deblur
    assert _choices(options.JIT_CHOICES) in deblur
    for flag, value in (("--precision", options.DEFAULT_DEBLUR_PRECISION),
                        ("--jit", options.DEFAULT_JIT)):
        described = deblur.split(f" {flag} ", 1)[1].split(" --", 1)[0]
        assert f"(default: {value})" in described
    for flag, value in (("--batch", options.DEFAULT_BATCH),
                        ("--quality", options.DEFAULT_QUALITY)):
        described = deblur.split(f" {flag} ", 1)[1].split(" --", 1)[0]
        assert f"(default: {value})" in described
    # Tiles follow the model's receptive field; the help gives the overlap that
    # dgf.tiling chooses for the paper's layout and for space-to-depth 4.
    from dgf.models import build_generator
    from dgf.tiling import seamless_tiling

    paper = seamless_tiling(build_generator(channel_rate=4, residual=False))[1]
    s2d4 = seamless_tiling(build_generator(channel_rate=4, space_to_depth=4))[1]
    assert (paper, s2d4) == (options.DEFAULT_OVERLAP, 216)
    for flag, text in (("--tile", f"(default: {options.DEFAULT_TILE}, or 4 overlaps"),
                       ("--overlap", f"{paper} for the paper's layout (35 px field), {s2d4} "
                                     "for space-to-depth 4")):
        described = " ".join(deblur.split(f" {flag} ", 1)[1].split(" --", 1)[0].split())
        assert text in described and "None" not in described, described
    evaluate = _help(_scripts()["dgf-eval"])["help"]
    assert _choices(options.PRECISION_CHOICES) in evaluate
    assert _choices(options.JIT_CHOICES) in evaluate
    assert "-o OUT, --out OUT" in evaluate
    assert f"(default: {options.DEFAULT_EVAL_BATCH})" in evaluate
    export = _help(_scripts()["dgf-export"])["help"]
    assert _choices(options.EXPORT_FORMATS) in export


def test_working_modules_use_the_options_module():
    from dgf import evaluate, export, infer, runtime, tiling

    assert runtime.PRECISIONS is options.PRECISIONS
    from dgf.config import settings

    # The trainer's choices are TensorFlow's float precisions, fp16 and its own auto
    # (dgf.runtime.training_precision: by the GPUs' compute capability); int8 is
    # inference only.
    assert settings()["precision"].choices == (*options.FLOAT_PRECISIONS, "fp16", "auto")
    assert export.EXPORT_FORMATS is options.EXPORT_FORMATS
    # One default per setting, in dgf.options, read by the spec and the options objects.
    from dgf.scoring import EvalOptions
    from dgf.spec import InferenceSpec

    spec = InferenceSpec()
    assert (spec.precision, spec.jit, spec.engine, spec.batch) == (
        options.DEFAULT_PRECISION, options.DEFAULT_JIT, options.DEFAULT_ENGINE,
        options.DEFAULT_BATCH)
    # dgf-deblur takes tile and overlap from the model (dgf.tiling.seamless_tiling) unless
    # given; its own defaults: precision auto, scale auto.
    assert spec.tile is None and spec.overlap is None
    assert infer.DEBLUR_SPEC == InferenceSpec(precision=options.DEFAULT_DEBLUR_PRECISION,
                                              scale=options.DEFAULT_SCALE)
    assert infer.WriteOptions().quality == options.DEFAULT_QUALITY
    assert evaluate.EVAL_SPEC == InferenceSpec(batch=options.DEFAULT_EVAL_BATCH)
    assert inspect.signature(evaluate.evaluate_model).parameters["spec"].default \
        is evaluate.EVAL_SPEC
    scoring = EvalOptions()
    assert (scoring.strips, scoring.split) == (options.DEFAULT_STRIPS,
                                               options.DEFAULT_EVAL_SPLIT)



def test_eval_protocols_and_info_help_come_from_the_options_module():
    from dgf import evaluate, metrics
    from dgf.config import TrainConfig
    from dgf.metrics import ScoreSettings

    text = _help(_scripts()["dgf-eval"])["help"]
    assert _choices(options.METRIC_PROTOCOLS) in text
    assert f"(default: {options.DEFAULT_PROTOCOL})" in text and "--y-channel" in text
    info = _help(_scripts()["dgf-info"])["help"]
    assert ("usage: dgf-info [-h] [--verbose] [--size H W] [--json] [--measure-blur [H5]] "
            "MODEL") in info
    assert f"(default: {list(options.DEFAULT_INFO_SIZE)})" in info

    assert ScoreSettings().protocol == options.DEFAULT_PROTOCOL
    assert ScoreSettings().y_channel is options.DEFAULT_Y_CHANNEL
    assert metrics.METRIC_PROTOCOLS is options.METRIC_PROTOCOLS
    assert TrainConfig().metric_protocol == options.DEFAULT_PROTOCOL
    assert TrainConfig().y_channel is options.DEFAULT_Y_CHANNEL


# --- every command's parser, as dgf.cli.parsers() gives them -----------------------
def _expanded_help(parser, action) -> str:
    """The help line argparse prints for ``action``, defaults filled in."""
    return parser._get_formatter()._expand_help(action) if action.help else ""


def test_parsers_cover_every_console_command_and_build_without_tensorflow():
    code = ("import json, sys; from dgf.cli import parsers; "
            "found = {name: p.prog for name, p in parsers().items()}; "
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras'}); "
            "print(json.dumps([found, heavy]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    found, heavy = json.loads(done.stdout)
    assert found == {name: name for name in _scripts()}
    assert heavy == []


def test_each_default_is_stated_once_and_never_on_a_required_argument():
    from dgf.cli import parsers

    checked = 0
    for name, parser in parsers().items():
        for action in parser._actions:
            text = _expanded_help(parser, action)
            label = f"{name} {'/'.join(action.option_strings) or action.dest}: {text}"
            assert text.count("(default:") <= 1, label
            assert "(default: None)" not in text, label
            if action.required or not action.option_strings and action.nargs is None:
                assert "default:" not in text, label
            checked += 1
    assert checked > 80  # all seven commands' arguments were looked at


def test_every_command_that_draws_a_bar_takes_no_progress():
    from dgf.cli import parsers

    found = parsers()
    for name in ("build-hdf5", "dgf-make-pairs", "dgf-train", "dgf-eval", "dgf-deblur"):
        flags = {flag: action.dest for action in found[name]._actions
                 for flag in action.option_strings}
        assert flags.get("--no-progress") == "no_progress", name
    deblur = found["dgf-deblur"]
    assert deblur.parse_args(["a.jpg", "-o", "out", "--quiet"]).no_progress is True
    assert deblur.parse_args(["a.jpg", "-o", "out"]).no_progress is False
    for name in ("dgf-export", "dgf-info"):  # no bar to hide
        assert "--no-progress" not in found[name].format_help()


def test_train_no_progress_reaches_the_training_loop(tmp_path, monkeypatch):
    import dgf.session
    from dgf.cli import train_main

    seen = []

    def fake_train(cfg, *, resume=None, progress=True, config_file=None):
        seen.append((cfg.run_dir, progress))
        return SimpleNamespace(run_dir=cfg.run_dir)

    monkeypatch.setattr(dgf.session, "train", fake_train)
    run = str(tmp_path / "run")
    assert train_main(["--run-dir", run, "--no-progress"]) == 0
    assert train_main(["--run-dir", run]) == 0
    assert seen == [(run, False), (run, True)]


def test_train_flags_are_the_config_fields():
    from dgf.cli import parsers
    from dgf.config import GROUPS, TrainConfig, on_off, settings

    parser = parsers()["dgf-train"]
    by_dest = {action.dest: action for action in parser._actions}
    about = settings()
    assert list(about) == [f.name for f in dataclasses.fields(TrainConfig)]
    groups = {g.title: {a.dest for a in g._group_actions} for g in parser._action_groups}
    for key, setting in about.items():
        action = by_dest[key]
        assert action.option_strings == [setting.flag]
        assert key in groups[f"{setting.group} settings"]
        assert setting.group in GROUPS
        text = _expanded_help(parser, action)
        assert text.startswith(setting.help), key
        default = getattr(TrainConfig(), key)
        if isinstance(default, bool):
            assert text.endswith(f"(default: {on_off(default)})"), key
        elif default is not None and "(default:" not in setting.help:
            assert text.endswith(f"(default: {default})"), key
    assert about["beta_1"].flag == "--beta1" and about["crop_border"].flag == "--crop-border"
    assert about["pixel_loss"].choices and about["precision"].choices


# Keras itself imports matplotlib when it is installed (keras.visualization, inside a
# try), so "not in sys.modules" cannot tell; the probe hides matplotlib instead, as on
# a machine without it, and imports the trainer.
_NO_MATPLOTLIB = r"""
import importlib.abc, json, sys

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "matplotlib":
            raise ImportError(f"No module named {name!r} (hidden)")
        return None

sys.meta_path.insert(0, Hide())
import dgf.session, dgf.train, dgf.actions, dgf.scoring, dgf.metrics
try:
    import dgf.evaluate
    plots = "imported"
except ImportError as exc:
    plots = str(exc)
print(json.dumps({"plots": plots, "trainer": "dgf.train" in sys.modules}))
"""


@pytest.mark.slow  # a process of its own that starts TensorFlow
def test_the_trainer_imports_no_matplotlib():
    """matplotlib is dgf-eval's (its plots); training and scoring never need it."""
    done = subprocess.run([sys.executable, "-c", _NO_MATPLOTLIB], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["trainer"] is True
    # The probe does hide matplotlib: dgf-eval's module, which draws, cannot load.
    assert "matplotlib" in result["plots"] and "hidden" in result["plots"]


def test_local_workers_get_no_progress_and_every_setting_flag(tmp_path, monkeypatch):
    from dgf import launcher
    from dgf.cli import train_main

    launched = []
    monkeypatch.setattr(launcher, "launch_private",
                        lambda count, argv: launched.append((count, argv)) or 0)
    run = str(tmp_path / "run")
    assert train_main(["--local-workers", "2", "--run-dir", run, "--pixel-weight", "3",
                       "--augment", "off", "--no-progress"]) == 0
    assert train_main(["--local-workers", "2", "--run-dir", run]) == 0
    (count, quiet), (_, shown) = launched
    assert count == 2
    flags = dict(zip(quiet[::2], quiet[1::2]))
    assert flags["--pixel-weight"] == "3.0" and flags["--augment"] == "off"
    assert flags["--strategy"] == "multiworker" and flags["--run-dir"] == run
    assert quiet[-1] == "--no-progress" and "--no-progress" not in shown


_STARTUP = r"""
import json, sys
from dgf.commands.common import run
seen = {}
def work():
    import keras  # as a command's work does, through TensorFlow or directly
    seen["keras"] = "keras" in sys.modules
    seen["sklearn_loaded"] = "sklearn" in sys.modules
    from keras.src.wrappers import fixes
    seen["wrappers_without"] = fixes.sklearn is None
    import sklearn  # any other import of it still succeeds
    seen["later"] = sklearn.__name__
    seen["matplotlib_loaded"] = "matplotlib" in sys.modules
    from keras.src.visualization import plot_image_gallery
    seen["plots_without"] = plot_image_gallery.plt is None
    from dgf.evaluate import plot_metrics  # dgf's own curves still draw
    plot_metrics([1, 2], [20.0, 21.0], [0.5, 0.6], 19.0, 0.4, sys.argv[2])
    import matplotlib.pyplot  # and any other import of it still succeeds
    seen["pyplot"] = matplotlib.pyplot.__name__
run(work, program=sys.argv[1] == "program")
print(json.dumps(seen))
"""


@pytest.mark.slow  # two processes of their own that import Keras
@pytest.mark.parametrize("how", ["program", "library"])
def test_a_command_process_imports_keras_without_scikit_learn_or_matplotlib(how, tmp_path):
    """dgf.startup: in a process that exists to run a command, Keras's scikit-learn
    wrappers do not load scikit-learn and its plots do not load matplotlib (0.6 s and
    0.45 s of every command's start); a library caller's Keras is left as it is, both
    stay importable, and dgf's own curves still draw."""
    import importlib.util

    # The test extra installs nncf, which brings scikit-learn.
    assert importlib.util.find_spec("sklearn") is not None
    picture = tmp_path / "metrics.png"
    done = subprocess.run([sys.executable, "-c", _STARTUP, how, str(picture)],
                          capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["keras"] and seen["later"] == "sklearn"
    assert seen["sklearn_loaded"] is (how == "library")
    assert seen["wrappers_without"] is (how == "program")
    assert seen["matplotlib_loaded"] is (how == "library")
    assert seen["plots_without"] is (how == "program")
    assert seen["pyplot"] == "matplotlib.pyplot"
    with Image.open(picture) as img:
        assert img.width > 0 and img.height > 0
