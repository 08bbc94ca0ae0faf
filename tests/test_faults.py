"""Faults a long run meets on a shared machine: a full disk (a real, small tmpfs),
temporary files left by killed processes, a second process in the same run folder,
TensorFlow's start-up noise on the terminal, and model files that would run code.

Every case asserts the exit status, the one ``error:`` line, no traceback, and that
nothing partial is left under a real name or as a temporary file.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from conftest import (make_h5, processes_with, save_side_by_side, textured_photo,
                      workers_on_loopback_only)
from dgf import cli

REPO = Path(__file__).resolve().parents[1]
# Every model call runs TensorFlow's plain graph (deblur --engine/--jit, the trainer's
# per-epoch scoring --eval-engine/--eval-jit): the faults here do not depend on the
# path, and the default (auto) calibrates XLA, ONNX Runtime and OpenVINO on each new
# layout and shape, seconds per run (tests/test_engines.py, test_jit_cli.py test it).
FIXED_PATH = ["--engine", "tensorflow", "--jit", "off"]
TINY = ["--channel-rate", "8", "--blocks", "3", "--patch", "16", "--crop", "32",
        "--perceptual-weight", "0",
        "--val-samples", "2", "--strip-pairs", "2", "--log-every", "1",
        "--bn-recalibrate", "0", "--eval-engine", "tensorflow", "--eval-jit", "off"]
# dgf's temporary names (dgf.fileio.temp_path, write_folder_atomic) and TensorFlow's
# checkpoint temporaries.
TEMP_NAMES = re.compile(r"(^\..+\.(tmp|old)\d+)|(_temp$)|(\.tmp[0-9a-f]+$)")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "DGF_VERBOSE")}
    env.update(PYTHONPATH=str(REPO), **extra)
    return env


def _dgf(command: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """A dgf command in its own process, as a user runs it."""
    code = f"import sys; from dgf.cli import {command}; sys.exit({command}())"
    kwargs.setdefault("env", _env())
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=kwargs.pop("timeout", 600), **kwargs)


def _temps(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if TEMP_NAMES.search(p.name))


def _one_error(stderr: str, start: str) -> str:
    """The single ``error:`` line of ``stderr``, which must begin with ``start``."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert errors[0].startswith(start), errors[0]
    return errors[0]


# --------------------------------------------------------------------------- tmpfs
@contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A real file system of ``size`` (tmpfs) mounted at ``folder``; skips, saying
    why, where mounting is not permitted (not root, or no CAP_SYS_ADMIN)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the full-disk tests run as root in CI)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _grow(folder: Path, size: str) -> None:
    """Free space on the small disk: remount it larger, the files kept."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)


def _whole_images(folder: Path) -> list[Path]:
    """Every image under ``folder``, each opened and decoded completely."""
    found = sorted(p for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))
    for path in found:
        with Image.open(path) as img:
            img.load()
    return found


# --------------------------------------------------------------------------- full disk
@pytest.mark.slow
def test_train_on_a_full_disk_keeps_the_last_checkpoint_and_resumes_exactly(tmp_path, capsys):
    """The disk fills at a checkpoint: one error line with the kept checkpoint and
    its step and the resume command, exit 2, no ckpt-N_temp or temp files; after
    space is freed the run resumes to the step count of an uninterrupted run (in this
    process: what is checked there is the run folder, not a process's exit)."""
    h5 = make_h5(tmp_path / "data.h5", n_train=8, n_test=2, size=48)
    epochs, steps_per_epoch = 4, 2  # 8 pairs, batch 4
    args = ["--h5", str(h5), "--epochs", str(epochs), "--batch-size", "4",
            "--save-every", "1", *TINY]
    with small_disk(tmp_path / "disk", "2m") as disk:
        run = disk / "run"
        full = _dgf("train_main", "--run-dir", str(run), *args)
        assert full.returncode == 2, full.stderr[-3000:]
        line = _one_error(full.stderr, f"error: no space left on device writing {run}")
        kept = re.search(r"kept the last complete checkpoint (\S+) \(step (\d+)\); free "
                         r"space and resume with: dgf-train --run-dir (\S+)$", line)
        assert kept, line
        assert kept.group(3) == str(run)
        assert Path(f"{kept.group(1)}.index").is_file()
        assert 1 <= int(kept.group(2)) < epochs * steps_per_epoch
        assert _temps(disk) == []

        _grow(disk, "64m")
        capsys.readouterr()
        status = cli.train_main(["--run-dir", str(run), *args, "--no-progress"])
        again = capsys.readouterr()
        assert status == 0, again.err[-3000:]
        assert f"resuming {run} at epoch" in again.out
        assert f"step {kept.group(2)}" in again.out
        assert f"done: {epochs * steps_per_epoch} steps" in again.out
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in records if r["kind"] == "step"]
        assert steps == list(range(1, epochs * steps_per_epoch + 1))
        assert [r["epoch"] for r in records if r["kind"] == "epoch"] == list(range(1, epochs + 1))
        assert _temps(disk) == []


def _photo_inputs(folder: Path, count: int, size: int = 96) -> list[Path]:
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        path = folder / f"p{i:02d}.png"
        Image.fromarray(textured_photo(rng, size, size)).save(path)
        paths.append(path)
    return paths


@pytest.mark.slow  # runs the whole command end to end
def test_deblur_stops_at_the_first_full_disk_error(model_file, tmp_path, capsys):
    """Not one failure per file: the first ENOSPC ends the run with one line that
    says how many outputs were kept; every output there is whole, no temp files."""
    inputs = _photo_inputs(tmp_path / "in", 30)
    with small_disk(tmp_path / "disk", "200k") as disk:
        out = disk / "out"
        status = cli.deblur_main([str(tmp_path / "in"), "-o", str(out), "--model",
                                  str(model_file), "--quiet", "--scale", "1", *FIXED_PATH])
        err = capsys.readouterr().err
        assert status == 2, err
        line = _one_error(err, f"error: no space left on device writing {out}/p")
        assert "failed:" not in err
        written = _whole_images(out)
        assert 0 < len(written) < len(inputs)
        assert f"the {len(written)} image(s) deblurred before it are kept in {out}" in line
        assert _temps(disk) == []


def test_make_pairs_stops_at_the_first_full_disk_error(tmp_path, capsys):
    photos = _photo_inputs(tmp_path / "sharp", 12, size=300)
    with small_disk(tmp_path / "disk", "150k") as disk:
        out = disk / "pairs"
        status = cli.make_pairs_main([str(tmp_path / "sharp"), str(out), "--size", "128",
                                      "--no-progress", "--format", "png"])
        err = capsys.readouterr().err
        assert status == 2, err
        line = _one_error(err, f"error: no space left on device writing {out}/")
        assert f"the pairs written before it are kept in {out}" in line
        assert not (out / "make_pairs.json").exists()
        assert len(_whole_images(out)) < 4 * len(photos)
        assert _temps(disk) == []


def _pair_folder(folder: Path, count: int, size: int = 64) -> Path:
    rng = np.random.default_rng(9)
    for split in ("train", "test"):
        for i in range(count):
            sharp = textured_photo(rng, size, size)
            save_side_by_side(folder / split / f"{i:03d}.png", sharp, sharp[::-1])
    return folder


def test_build_hdf5_full_disk_mid_write_leaves_no_temp_file(tmp_path, capsys):
    """Compressed output is not sized up front: the disk fills while writing, and
    the temp file goes with the error."""
    src = _pair_folder(tmp_path / "pairs", 12)
    with small_disk(tmp_path / "disk", "60k") as disk:
        out = disk / "data.h5"
        status = cli.build_hdf5_main([str(src), "-o", str(out), "--native", "--workers", "1",
                                      "--compression", "gzip", "--no-progress"])
        err = capsys.readouterr().err
        assert status == 2, err
        _one_error(err, f"error: no space left on device writing {out}")
        assert not out.exists()
        assert _temps(disk) == []


def test_build_hdf5_free_space_message_shows_the_sizes(tmp_path, capsys):
    """Refused up front with sizes in a unit that shows them (not '0.0 GiB')."""
    src = _pair_folder(tmp_path / "pairs", 12)
    with small_disk(tmp_path / "disk", "40k") as disk:
        status = cli.build_hdf5_main([str(src), "-o", str(disk / "data.h5"), "--native",
                                      "--workers", "1", "--no-progress"])
        err = capsys.readouterr().err
        assert status == 2, err
        line = _one_error(err, f"error: {disk / 'data.h5'} would take about")
        # 24 pairs of 64x64: 2 * 64 * 64 * 3 bytes each = 576 KiB; 40 KiB free.
        assert "about 576.0 KiB uncompressed but 40.0 KiB is free there" in line, line
        assert list(disk.iterdir()) == []


# --------------------------------------------------------------------------- stale temps
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_of_gone_processes_are_removed_live_ones_kept(tmp_path, capsys):
    """build-hdf5 killed outright leaves .data.tmpPID.h5: the next command writing
    in that folder removes it (one line), never a live process's temp file."""
    src = _pair_folder(tmp_path / "pairs", 3, size=32)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dead = out_dir / f".data.tmp{_dead_pid()}.h5"
    dead.write_bytes(b"\0" * 4096)
    dead_folder = out_dir / f".export.savedmodel.tmp{_dead_pid()}"
    dead_folder.mkdir()
    (dead_folder / "saved_model.pb").write_bytes(b"x")
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = out_dir / f".data.tmp{live_proc.pid}.h5"
        live.write_bytes(b"\0" * 4096)
        other = out_dir / ".notes.txt"  # not one of dgf's temp names
        other.write_text("mine")
        status = cli.build_hdf5_main([str(src), "-o", str(out_dir / "data.h5"), "--native",
                                      "--workers", "1", "--no-progress"])
        err = capsys.readouterr().err
        assert status == 0, err
        notes = [line for line in err.splitlines() if line.startswith("note: removed")]
        names = ", ".join(sorted([dead.name, dead_folder.name]))
        assert notes == [f"note: removed 2 temporary file(s) in {out_dir} left by stopped "
                         f"processes: {names}"]
        assert not dead.exists() and not dead_folder.exists()
        assert live.read_bytes() == b"\0" * 4096 and other.read_text() == "mine"
        assert (out_dir / "data.h5").is_file()
    finally:
        live_proc.kill()
        live_proc.wait()


# --------------------------------------------------------------------------- one writer
_HOLD = ("import sys, time; from dgf.runlock import RunLock; RunLock(sys.argv[1]).acquire(); "
         "print('locked', flush=True); time.sleep(600)")


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def _names(folder: Path) -> list[str]:
    """Every entry under ``folder`` (relative), read while another process writes
    there: an entry renamed or removed during the walk is left out, not an error."""
    names = []
    for root, dirs, files in os.walk(folder):
        names += [str((Path(root) / name).relative_to(folder)) for name in dirs + files]
    return sorted(names)


def test_a_second_trainer_stops_before_touching_the_run_and_sigkill_frees_it(tmp_path, capsys):
    """The lock holder is named (process and host); the second process changes
    nothing; SIGKILL of the holder leaves no stale lock."""
    from dgf.runlock import RunLock

    h5 = make_h5(tmp_path / "data.h5", n_train=4, n_test=2, size=48)
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], env=_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (run / "notes.txt").write_text("the first trainer's folder")
        before = _tree(run)
        status = cli.train_main(["--h5", str(h5), "--run-dir", str(run), "--epochs", "1",
                                 "--batch-size", "2", *TINY])
        err = capsys.readouterr().err
        assert status == 2, err
        _one_error(err, f"error: {run} is in use by process {holder.pid} on "
                        f"{os.uname().nodename}; wait for it or stop it")
        assert _tree(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(run) as lock:  # the kernel released it with the process
        assert lock.path.read_text().split()[0] == str(os.getpid())
    assert not lock.path.exists()  # released: removed, the folder as it was
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_a_run_refused_before_training_leaves_no_folder(tmp_path, capsys):
    """The lock's folder goes again when the run stops before writing anything."""
    run = tmp_path / "new-run"
    status = cli.train_main(["--h5", str(tmp_path / "missing.h5"), "--run-dir", str(run),
                             *TINY])
    err = capsys.readouterr().err
    assert status == 2
    _one_error(err, f"error: HDF5 file {tmp_path / 'missing.h5'} does not exist")
    assert not run.exists()


@pytest.mark.slow
def test_eval_reads_a_run_while_it_trains_and_a_second_trainer_is_refused(tmp_path, capsys):
    """dgf-eval --run on a folder being trained scores its snapshots and writes only
    RUN/eval; a second dgf-train names the real trainer and stops. The trainer is a
    process of its own; the second trainer and dgf-eval run in this one."""
    h5 = make_h5(tmp_path / "data.h5", n_train=8, n_test=2, size=48)
    run = tmp_path / "run"
    args = ["--h5", str(h5), "--run-dir", str(run), "--batch-size", "4", *TINY]
    code = "import sys; from dgf.cli import train_main; sys.exit(train_main())"
    trainer = subprocess.Popen([sys.executable, "-c", code, *args, "--epochs", "200"],
                               env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        snapshot = run / "snapshots" / "generator_epoch_0001.keras"
        deadline = time.monotonic() + 300
        while not snapshot.is_file():
            assert trainer.poll() is None and time.monotonic() < deadline, "no snapshot"
            time.sleep(0.5)
        capsys.readouterr()
        status = cli.train_main([*args, "--epochs", "200"])
        err = capsys.readouterr().err
        assert status == 2, err[-3000:]
        _one_error(err, f"error: {run} is in use by process {trainer.pid} on "
                        f"{os.uname().nodename}; wait for it or stop it")

        status = cli.eval_main(["--run", str(run), "--no-progress", *FIXED_PATH])
        err = capsys.readouterr().err
        assert status == 0, err[-3000:]
        assert "Traceback" not in err
        rows = (run / "eval" / "metrics.csv").read_text().splitlines()
        assert rows[1].split(",")[0] == "1", rows  # epoch 1's snapshot, scored
        # Everything outside eval/ is what the trainer itself writes.
        trainer_names = re.compile(
            r"^(\.dgf-train\.lock|config\.json|metrics\.jsonl|generator(_best)?\.keras|"
            r"checkpoints(/.*)?|tensorboard(/.*)?|samples(/epoch_\d{4}\.png)?|"
            r"snapshots(/generator_epoch_\d{4}\.keras)?|eval(/.*)?|"
            r"([^/]+/)?\.[^/]+\.tmp\d+[^/]*)$")  # (or one of its files being written)
        strangers = [name for name in _names(run) if not trainer_names.match(name)]
        assert strangers == []
        assert trainer.poll() is None  # still training, undisturbed
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()


# --------------------------------------------------------------------------- quiet terminal
# What TensorFlow prints at start-up on a machine where nothing is wrong.
NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IW]\d{4} "
                   r"\d\d:\d\d:\d+\.\d+|E\d{4} .*failed call to cuInit|To enable the following)",
                   re.M)


def _plain_env(**extra: str) -> dict[str, str]:
    """The environment of a user who set nothing (the tests' own TF_CPP_MIN_LOG_LEVEL
    removed)."""
    env = _env(**extra)
    if "TF_CPP_MIN_LOG_LEVEL" not in extra:
        env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


_IMPORT_TF = ("import sys; from dgf import quiet; quiet.install('--verbose' in sys.argv); "
              "import tensorflow as tf; tf.constant(1.0) + 1")


@pytest.mark.slow
def test_a_command_shows_none_of_tensorflows_start_up_lines(model_file):
    done = _dgf("info_main", str(model_file), env=_plain_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "channel rate" in done.stdout.lower() or "channel_rate" in done.stdout
    assert NOISE.findall(done.stderr) == [], done.stderr[-3000:]
    assert done.stderr.strip() == ""


# Each way to show TensorFlow's start-up lines: (arguments, environment).
_SHOW = {"flag": (["--verbose"], {}), "env": ([], {"DGF_VERBOSE": "1"}),
         "user level 0": ([], {"TF_CPP_MIN_LOG_LEVEL": "0"})}


@pytest.fixture(scope="module")
def start_ups() -> dict[str, subprocess.CompletedProcess]:
    """TensorFlow started in a fresh process for each way of :data:`_SHOW`, and once
    with none of them ("hidden"): four processes side by side."""
    cases = {**_SHOW, "hidden": ([], {})}
    procs = {how: subprocess.Popen([sys.executable, "-c", _IMPORT_TF, *argv],
                                   env=_plain_env(**extra), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
             for how, (argv, extra) in cases.items()}
    try:
        done = {}
        for how, proc in procs.items():
            out, err = proc.communicate(timeout=300)
            done[how] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        return done
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("how", list(_SHOW))
def test_verbose_or_a_users_own_level_shows_them(how, start_ups):
    shown, hidden = start_ups[how], start_ups["hidden"]
    assert shown.returncode == 0 and hidden.returncode == 0, shown.stderr + hidden.stderr
    assert NOISE.findall(shown.stderr), shown.stderr  # TensorFlow does print them here
    assert NOISE.findall(hidden.stderr) == [], hidden.stderr


def test_real_errors_and_other_output_still_reach_the_user():
    """Inside the filtered start-up: an ERROR line and plain text pass, INFO and
    the absl pre-init warning do not; a user's level 3 hides errors too."""
    lines = ("WARNING: All log messages before absl::InitializeLog() is called are written "
             "to STDERR\nI0000 00:00:1796232603.967219   27067 port.cc:153] oneDNN custom "
             "operations are on.\nE0000 00:00:1796232603.9 27067 op_kernel.cc:12] real "
             "failure: cannot open libfoo\nplain text from a library\n")
    child = ("import os, sys; from dgf import quiet\n"
             "with quiet._filtered_stderr(int(sys.argv[1])):\n"
             f"    os.write(2, {lines.encode()!r})\n")
    for level, expected in ((2, ["E0000 00:00:1796232603.9 27067 op_kernel.cc:12] real "
                                 "failure: cannot open libfoo", "plain text from a library"]),
                            (3, ["plain text from a library"]),
                            (0, lines.splitlines())):
        done = subprocess.run([sys.executable, "-c", child, str(level)], env=_plain_env(),
                              capture_output=True, text=True, timeout=60)
        assert done.stderr.splitlines() == expected, (level, done.stderr)


# --------------------------------------------------------------------------- no one in
def test_a_model_file_holding_python_code_is_refused(tmp_path, capsys):
    """Keras safe mode: a .keras file with a Lambda layer cannot run its code."""
    import keras

    marker = tmp_path / "ran"
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    model_path = tmp_path / "shared.keras"
    keras.Model(inputs, outputs).save(model_path)
    _photo_inputs(tmp_path / "in", 1, size=32)
    for name, argv in (("deblur", ["dgf-deblur", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                                   "--model", str(model_path), "--quiet"]),
                       ("info", ["dgf-info", str(model_path)])):
        main = cli.deblur_main if name == "deblur" else cli.info_main
        status = main(argv[1:])
        err = capsys.readouterr().err
        assert status == 2, err
        _one_error(err, f"error: model file {model_path} holds Python code (a Lambda "
                        f"layer), which could run anything; dgf loads model files in Keras "
                        f"safe mode and refuses it")
    assert not (tmp_path / "out").exists() and not marker.exists()


def test_a_config_file_cannot_run_code(tmp_path, capsys):
    """YAML is read with safe_load: a python/object tag is an error, not a call."""
    marker = tmp_path / "ran"
    config = tmp_path / "evil.yaml"
    config.write_text(f"epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    status = cli.train_main(["--config", str(config), "--h5", str(tmp_path / "x.h5"),
                             "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2, err
    line = _one_error(err, f"error: config file {config} could not be parsed: ")
    assert "could not determine a constructor for the tag" in line and "python/object" in line
    assert not marker.exists() and not (tmp_path / "run").exists()


# Loaded by every Python process of the test below (through PYTHONPATH): a process
# started as a worker (it has TF_CONFIG) listens on every interface, as TensorFlow's
# gRPC server does, says so, and waits; a signal ends it, noted in a file.
FAKE_WORKER_HOOK = """
import json, os, signal, socket, sys, time
if os.environ.get("DGF_TEST_FAKE_WORKERS") and os.environ.get("TF_CONFIG"):
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen()

    def stop(signum, frame):
        path = os.path.join(os.environ["DGF_TEST_FAKE_WORKERS"], f"stopped-{index}")
        with open(path, "w") as fh:
            fh.write(str(signum))
        os._exit(130)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"worker {index} listening on port {server.getsockname()[1]}", flush=True)
    while True:
        time.sleep(1)
"""


def test_sigterm_to_local_workers_stops_every_worker_in_their_private_network(tmp_path):
    """--local-workers runs its workers in a private network namespace whose only
    interface is loopback (what real TensorFlow workers there listen on is checked in
    test_multiworker.py); SIGTERM to the command stops every worker and exits 130.
    The workers are stand-ins that listen on 0.0.0.0 as TensorFlow's servers do."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(FAKE_WORKER_HOOK)
    h5 = make_h5(tmp_path / "data.h5", n_train=8, n_test=2, size=48)
    run = tmp_path / "run-loopback"
    code = "import sys; from dgf.cli import train_main; sys.exit(train_main())"
    env = _env(DGF_TEST_FAKE_WORKERS=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join([str(hooks), str(REPO)])
    launcher = subprocess.Popen(
        [sys.executable, "-c", code, "--local-workers", "2", "--h5", str(h5), "--run-dir",
         str(run), "--epochs", "100", "--batch-size", "4", "--no-progress", *TINY],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        first = launcher.stdout.readline()
        lines.append(first)
        assert "in a private network namespace (loopback only" in first, first
        while sum("listening on port" in line for line in lines) < 2:
            line = launcher.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        workers_on_loopback_only(str(run), launcher.pid)
    finally:
        launcher.send_signal(signal.SIGTERM)
        try:
            rest, _ = launcher.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            launcher.kill()
            raise
    assert launcher.returncode == 130, "".join(lines) + rest
    assert "interrupted: stopped the workers" in rest
    for index in (0, 1):
        assert (tmp_path / f"stopped-{index}").read_text() == str(int(signal.SIGTERM))
    time.sleep(0.5)
    assert processes_with(str(run)) == []


@pytest.mark.slow
def test_a_sigkilled_build_leaves_a_temp_file_that_the_next_build_removes(tmp_path):
    """The case as it happens: build-hdf5 killed outright mid-write leaves
    .data.tmpPID.h5; the next build into that folder removes it and says so."""
    src = _pair_folder(tmp_path / "pairs", 150, size=128)
    out = tmp_path / "out" / "data.h5"
    args = [str(src), "-o", str(out), "--native", "--workers", "1", "--no-progress",
            "--compression", "gzip"]
    code = "import sys; from dgf.cli import build_hdf5_main; sys.exit(build_hdf5_main())"
    first = subprocess.Popen([sys.executable, "-c", code, *args], env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    temp = out.parent / f".data.tmp{first.pid}.h5"
    try:
        deadline = time.monotonic() + 120
        while not temp.is_file():
            assert first.poll() is None and time.monotonic() < deadline, "no temp file seen"
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert temp.is_file() and not out.exists()
    again = _dgf("build_hdf5_main", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (f"note: removed 1 temporary file(s) in {out.parent} left by stopped processes: "
            f"{temp.name}") in again.stderr
    assert not temp.exists() and out.is_file()
    assert _temps(out.parent) == []
