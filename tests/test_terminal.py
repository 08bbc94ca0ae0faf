"""A terminal that says only what is true: while a dgf command runs, TensorFlow's C++
log records (``E0000 ... meta_optimizer.cc:967] remapper failed: ...`` on a oneDNN
host, any ``W0000``/``I0000``) stay off the terminal (dgf.quiet's relay), and dgf's
own lines, the progress bar and real failures reach it; ``--verbose`` shows them.

The remapper's failure is printed wherever TensorFlow runs the folded generator
without XLA with oneDNN on: on CPUs with AVX512-VNNI/BF16 or AMX, where dgf-deblur's
default precision is bf16 (when calibration picks TensorFlow without XLA, and in
every calibration, which runs that path), and on any x86 CPU with
``TF_ENABLE_ONEDNN_OPTS=1`` at fp32 without XLA. The tests below force both paths on
every host.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dgf import quiet
from dgf.host import cpu_flags

REPO = Path(__file__).resolve().parents[1]
# A TensorFlow (absl) C++ log record's header, anywhere in the text.
TF_LOG = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^ \]]+:\d+\] ")
# tqdm's bar as dgf-deblur draws it ("deblur:  50%|#####     | 1/2 [00:01<00:01, ...]").
BAR = re.compile(r"^deblur: +\d+%\|[^|]*\| \d+/\d+ \[[^\]]*\]")
# The lines dgf itself writes to stderr in a run that succeeds.
DGF_LINE = re.compile(r"^(note|warning): \S")
REMAPPER = "remapper failed: INVALID_ARGUMENT: Mutation::Apply error"
# The CPU flags where dgf-deblur's --precision auto is bf16 (dgf.runtime).
NATIVE_BF16 = {"avx512_bf16", "amx_bf16"}


# --------------------------------------------------------------------------- the filter
TF_ERROR = (b"E0000 00:00:1796606496.060991   11081 meta_optimizer.cc:967] remapper failed: "
            b"INVALID_ARGUMENT: Mutation::Apply error: fanout 'generator_1/global_skip_1/"
            b"concat' exist for missing node 'generator_1/head_conv_1/BiasAdd'.\n")
TF_WARNING = b"W0000 00:00:1796606496.1   11081 op_kernel.cc:1857] OP_REQUIRES failed\n"
TF_INFO = b"I0000 00:00:1796606496.2   11081 port.cc:153] oneDNN custom operations are on.\n"
TF_FATAL = b"F0000 00:00:1796606496.3   11081 tensor.cc:42] Check failed: 1 == 2\n"
DGF_NOTE = b"note: inference runs on TensorFlow without XLA (oneDNN kernels) at bf16\n"
BAR_TEXT = "\rdeblur:  50%|█████     | 1/2 [00:01<00:01,  1.10s/img]".encode()
TRACEBACK = b"Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"


def test_runtime_filter_drops_tensorflows_log_and_keeps_the_rest():
    filt = quiet.RuntimeFilter()
    kept = filt.feed(TF_ERROR + DGF_NOTE + TF_WARNING + TF_INFO + TRACEBACK + BAR_TEXT)
    assert kept == DGF_NOTE + TRACEBACK  # the bar's partial line waits for more
    assert filt.holding
    assert filt.flush() == BAR_TEXT and not filt.holding
    # A record written after a bar's text on the same line: the text stays, open.
    assert filt.feed(BAR_TEXT + TF_ERROR + b"\n") == BAR_TEXT + b"\n"
    # A FATAL record says why the process is about to die: shown.
    assert filt.feed(TF_FATAL) == TF_FATAL
    # A record split over two writes is still one line.
    assert filt.feed(TF_ERROR[:20]) == b"" and filt.feed(TF_ERROR[20:]) == b""
    assert quiet.is_runtime_noise(TF_ERROR.decode().rstrip("\n"))
    assert not quiet.is_runtime_noise(DGF_NOTE.decode().rstrip("\n"))
    assert not quiet.is_runtime_noise(BAR_TEXT.decode())


def test_runtime_filter_with_verbose_drops_nothing():
    everything = TF_ERROR + DGF_NOTE + TF_WARNING + TF_INFO + BAR_TEXT
    filt = quiet.RuntimeFilter(verbose=True)
    assert filt.feed(everything) == everything
    assert filt.flush() == b""


def test_relay_passes_a_partial_line_on_without_waiting_for_its_end():
    """The relay process's loop (dgf.quiet._relay) on a pipe: a progress bar's update
    (no newline) reaches the terminal while the command still runs."""
    src_r, src_w = os.pipe()
    dst_r, dst_w = os.pipe()
    relay = threading.Thread(target=quiet._relay, args=(src_r, dst_w), daemon=True)
    relay.start()
    try:
        os.write(src_w, TF_ERROR + DGF_NOTE + BAR_TEXT)
        seen = b""
        while not seen.endswith(BAR_TEXT):  # no newline, no end of file: still shown
            seen += os.read(dst_r, 65536)
        assert seen == DGF_NOTE + BAR_TEXT
    finally:
        os.close(src_w)
        relay.join(timeout=10)
        os.close(src_r)
        os.close(dst_w)
        os.close(dst_r)
    assert not relay.is_alive()


# --------------------------------------------------------------------------- dgf-deblur
def _plain_env(**extra: str) -> dict[str, str]:
    """The environment of a user who set nothing (the tests' TF_CPP_MIN_LOG_LEVEL gone)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CONFIG", "DGF_VERBOSE", "TF_CPP_MIN_LOG_LEVEL",
                        "TF_ENABLE_ONEDNN_OPTS", quiet.DEFAULTED_ENV)}
    env.update(PYTHONPATH=str(REPO), **extra)
    return env


def _deblur(tmp_path: Path, *flags: str, **env: str) -> subprocess.CompletedProcess:
    """dgf-deblur on a 96x64 photo with the bundled model, in its own process."""
    photo = tmp_path / "photo.png"
    if not photo.exists():
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(photo)
    code = "import sys; from dgf.cli import deblur_main; sys.exit(deblur_main())"
    return subprocess.run(
        [sys.executable, "-c", code, str(photo), "-o", str(tmp_path / "out"), "--overwrite",
         *flags], env=_plain_env(**env), capture_output=True, text=True, timeout=600)


def _only_dgf(stderr: str) -> None:
    """Every piece of ``stderr`` (split at \\r and \\n) is the progress bar, dgf's own
    line, or the bar followed by dgf's line; nothing is TensorFlow's log."""
    assert TF_LOG.search(stderr) is None, stderr[-3000:]
    for piece in re.split(r"[\r\n]", stderr):
        rest = BAR.sub("", piece, count=1)
        assert rest == "" or DGF_LINE.match(rest), (piece, stderr[-3000:])


def _native_bf16() -> bool:
    return bool(cpu_flags() & NATIVE_BF16)


@pytest.mark.slow
@pytest.mark.parametrize("how", [
    "bf16",
    pytest.param("default", marks=pytest.mark.skipif(
        not _native_bf16(),
        reason="this CPU lacks avx512_bf16/amx_bf16: dgf-deblur's default is fp32 here, "
               "not the bf16 graph of an AVX512-BF16 host (the 'bf16' case forces it)")),
    "oneDNN fp32",
])
def test_deblur_stderr_holds_only_dgfs_lines(tmp_path, how):
    """The bf16 folded generator in TensorFlow without XLA, whose graph makes the
    remapper fail (forced here on every host); the default run of an AVX512-BF16 host
    (bf16, on whichever path its calibration measures fastest: OpenVINO or that
    TensorFlow graph); and the remapper's failure at fp32, made on any x86 host by
    turning oneDNN on."""
    ran_on = "note: inference runs on TensorFlow"
    if how == "bf16":
        done = _deblur(tmp_path, "--precision", "bf16", "--jit", "off", "--engine",
                       "tensorflow")
    elif how == "default":
        done = _deblur(tmp_path)
        ran_on = "note: inference runs on "
    else:
        done = _deblur(tmp_path, "--precision", "fp32", "--jit", "off", "--engine",
                       "tensorflow", TF_ENABLE_ONEDNN_OPTS="1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "deblurred 1 image(s)" in done.stdout
    assert (tmp_path / "out" / "photo.png").is_file()
    _only_dgf(done.stderr)
    pieces = re.split(r"[\r\n]", done.stderr)
    assert any(BAR.match(piece) for piece in pieces), done.stderr[-3000:]  # the bar is shown
    assert ran_on in done.stderr, done.stderr[-3000:]


@pytest.mark.slow
def test_verbose_shows_tensorflows_runtime_log(tmp_path):
    """The same oneDNN run with --verbose: the remapper's line the default run hid."""
    done = _deblur(tmp_path, "--precision", "fp32", "--jit", "off", "--engine", "tensorflow",
                   "--verbose", TF_ENABLE_ONEDNN_OPTS="1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert REMAPPER in done.stderr, (
        "TensorFlow no longer prints the remapper's failure here, so the hidden run of "
        "test_deblur_stderr_holds_only_dgfs_lines['oneDNN fp32'] has nothing to hide: "
        + done.stderr[-3000:])
    assert "note: inference runs on TensorFlow" in done.stderr


@pytest.mark.slow
def test_a_real_tensorflow_failure_still_reaches_the_terminal(tmp_path):
    """A model whose graph fails at run time (a Reshape to a fixed size): the
    InvalidArgumentError is a Python exception and its message is shown, while
    TensorFlow's own log record of it is not."""
    import keras

    inputs = keras.Input((None, None, 3), name="blurred")
    x = keras.layers.Conv2D(3, 3, padding="same", name="conv")(inputs)
    x = keras.layers.Reshape((64, 64, 3), name="fixed")(x)
    model = tmp_path / "fixed.keras"
    keras.Model(inputs, x).save(model)
    done = _deblur(tmp_path, "--model", str(model), "--precision", "fp32", "--jit", "off",
                   "--engine", "tensorflow", "--no-progress", "--scale", "1")
    assert done.returncode != 0
    assert "InvalidArgumentError" in done.stderr, done.stderr[-3000:]
    assert "Input to reshape is a tensor with 18432 values" in done.stderr
    assert TF_LOG.search(done.stderr) is None, done.stderr[-3000:]
