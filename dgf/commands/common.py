"""What every command shares: its parser's help formatting (install hints included),
the keyword defaults it shows, and the one error boundary (:func:`run`) with its
interrupt handling.

Every entry point turns a DgfError into ``error: <message>`` on stderr and exit
status 2, so users see what to fix instead of a traceback.
"""
from __future__ import annotations

import argparse
import inspect
import signal
import sys
import threading
from contextlib import contextmanager
from types import FrameType
from pathlib import Path
from typing import Any, Callable, Iterator

from dgf import quiet, startup
from dgf.errors import DgfError, install_hint
from dgf.fileio import is_disk_full


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each default stated once: not when the help text states it already, nor for a
    required argument, a switch (``--overwrite``: off unless given), or a None
    default (the help says what its absence means)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("(default:" in text or action.required or action.nargs == 0
                or action.default in (None, argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action)


def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A command's parser, with :class:`HelpFormatter` and ``--verbose``."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--verbose", action="store_true",
                        help="also show TensorFlow's own C++ log lines (start-up notices, "
                        "info, warnings, errors), hidden by default; a real TensorFlow "
                        "failure stops the command with its message either way (as "
                        "DGF_VERBOSE=1 does)")
    return parser


def help_hint(extra: str) -> str:
    """:func:`dgf.errors.install_hint` for an argument's help, which argparse
    %-formats (a checkout's path may hold a %)."""
    return install_hint(extra).replace("%", "%%")


def add_inference_flags(p: argparse.ArgumentParser, *, precision: str, shape: str) -> None:
    """``--precision``, ``--jit``, ``--engine`` and ``--calibration``, the settings of
    an :class:`dgf.spec.InferenceSpec` that dgf-deblur and dgf-eval share; ``shape``
    names what auto measures on (a tile, a batch)."""
    from dgf import options  # the CLI layer: nothing heavy is imported for --help

    rows = options.ENGINE_TABLE
    int8 = " or ".join(row.name for row in rows if "int8" in row.precisions)
    p.add_argument("--precision", choices=options.PRECISION_CHOICES, default=precision,
                   help="inference precision: bf16 computes the body in bfloat16 (about 2x "
                   "faster on CPUs with AVX512_BF16 or AMX; outputs change by a level or "
                   f"two); int8 ({int8} only) quantises the folded generator, calibrated "
                   "on real images (--calibration), and is refused when it scores more "
                   "than 0.15 dB under fp32; auto: bf16 on a CPU with native bfloat16 and "
                   "no GPU, fp32 elsewhere, never int8 (the run says which)")
    p.add_argument("--jit", choices=options.JIT_CHOICES, default=options.DEFAULT_JIT,
                   help=f"compile TensorFlow's call with XLA: auto measures both on the first "
                   f"{shape} shape and keeps the faster on this host (cached in "
                   "~/.cache/dgf, or $DGF_CACHE_DIR)")
    engines = "; ".join(
        f"{row.name} ({', '.join(row.precisions)}"
        + (f"; {help_hint(row.extra)}" if row.extra else "") + ")" for row in rows)
    p.add_argument("--engine", choices=options.ENGINE_CHOICES, default=options.DEFAULT_ENGINE,
                   help=f"what runs the generator: {engines}; the ONNX engines run its "
                   "conversion, made once per model and cached. auto measures every "
                   f"installed one that runs the precision on the first {shape} shape and "
                   "keeps the fastest on this host (the run names it)")
    p.add_argument("--calibration", type=Path, default=None, metavar="H5|DIR",
                   help="--precision int8: the images that calibrate it, an HDF5 pairs "
                   "file (its test split, whose sharp images also check the result) or a "
                   f"folder of photos; {options.DEFAULT_CALIBRATION_COUNT} seeded "
                   f"{options.DEFAULT_CALIBRATION_SIDE} px crops (default: the HDF5 file "
                   "the model records it was trained on, when that file is there)")


def inference_spec(args: argparse.Namespace, **fields: Any):
    """The :class:`dgf.spec.InferenceSpec` of a command's parsed flags (``fields``
    adds the command's own, such as tiling and scale)."""
    from dgf.spec import InferenceSpec

    return InferenceSpec(precision=args.precision, jit=args.jit, engine=args.engine,
                         calibration=args.calibration, **fields)


def defaults_of(fn: Callable[..., Any]) -> dict[str, Any]:
    """The keyword defaults of ``fn``, the function a command calls: the one home of
    the defaults of the command's options."""
    return {
        name: param.default
        for name, param in inspect.signature(fn).parameters.items()
        if param.default is not inspect.Parameter.empty
    }


def run(fn: Callable[[], int | None], program: bool = False, verbose: bool = False) -> int:
    """Run a command's work at the one error boundary. ``program``: this process
    exists to run the command (a console script, argv from sys.argv), so after an
    interrupt nothing is left to protect and later signals stay ignored until exit.
    ``verbose`` (``--verbose``): TensorFlow's C++ log lines are shown, not hidden."""
    # TensorFlow's start-up noise and C++ log lines drown dgf's own output; a real
    # failure is a Python exception either way (dgf.quiet).
    quiet.install(verbose)
    if program:
        startup.install()  # Keras without scikit-learn, which no command uses
    # The handlers stay in place while the outcome is printed, so a second Ctrl-C
    # cannot turn the "interrupted" line into a traceback.
    with interrupts_stop_once(program):
        try:
            status = fn()
        except DgfError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            # Outputs already say "cannot write PATH" (dgf.fileio.OutputError); anything
            # else the file system refuses still gets one line, not a traceback.
            where = f"{exc.filename}: " if exc.filename else ""
            if is_disk_full(exc):  # one mechanism: dgf.fileio.DiskFull's words
                print(f"error: no space left on device writing {exc.filename or 'a file'}",
                      file=sys.stderr)
            else:
                print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    return int(status or 0)


@contextmanager
def interrupts_stop_once(program: bool = False) -> Iterator[None]:
    """Ctrl-C and SIGTERM (a job scheduler, ``kill``) both stop a command the same
    way: the first raises KeyboardInterrupt, so temporary files are removed and
    worker processes stopped on the way out; later ones are ignored, so the
    cleanup is not cut short (it takes well under a second). dgf-train installs
    its own handler around the training loop (stop after this step, save).
    With ``program``, signals stay ignored after an interrupt until the process
    exits, so a second Ctrl-C cannot kill it on its way out (status -2, not 130);
    called from Python with an argv list, the caller's handlers come back."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    stopping = False

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, signal.SIG_IGN if stopping and program else previous)
