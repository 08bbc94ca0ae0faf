"""A terminal that shows only dgf: TensorFlow's C++ log lines hidden by default.

Importing TensorFlow prints, on every machine, lines a user has nothing to do
about: absl's ``WARNING: All log messages before absl::InitializeLog() ...``, the
oneDNN and CPU-instruction notices, "Could not find cuda drivers" and, on a machine
without a GPU, ``E0000 ... failed call to cuInit: ... (303)``. They are written by
C++ code before its logging is set up, so ``TF_CPP_MIN_LOG_LEVEL`` does not hide
them. :func:`install` (called by the CLI before anything imports TensorFlow) wraps
that import and the first device listing: file descriptor 2 goes to a temporary
file meanwhile, and afterwards every line that is not start-up noise is written to
the real stderr, so real errors still reach the user. From then on TensorFlow's
own ``TF_CPP_MIN_LOG_LEVEL`` (2 unless the user set it: warnings and info hidden)
filters its C++ log.

While a command runs, TensorFlow's C++ code still writes log records to file
descriptor 2 that report nothing the user can act on. On a oneDNN host (TensorFlow
turns oneDNN on for AVX512-VNNI/BF16 and AMX CPUs) Grappler's remapper fuses
``_FusedConv2D + LeakyRelu`` in its second pass without checking that the
convolution's output has no other reader; the generator's head convolution also
feeds the global skip, so that pass fails with ``E0000 ... meta_optimizer.cc:967]
remapper failed: INVALID_ARGUMENT: Mutation::Apply error: fanout
'generator_1/global_skip_1/concat' exist for missing node
'generator_1/head_conv_1/BiasAdd'`` and TensorFlow runs the graph of its first
pass: correct, every other fusion kept (benchmarks/bench_remapper.py). So when
``TF_CPP_MIN_LOG_LEVEL`` is dgf's choice (the user set none), the same import also
hands file descriptor 2 to a small relay process for the rest of the run
(:func:`_relay_stderr`): it drops every TensorFlow log record below FATAL
(:func:`is_runtime_noise`) and passes everything else on at once, so a crash's last
words (a FATAL line, Python's fatal-error dump, a child's traceback) still reach the
terminal even when this process dies. dgf's own lines, Python tracebacks and the
progress bar do not go through it: ``sys.stderr`` is pointed at the real stderr. A
real TensorFlow failure is a Python exception, shown either way.

``--verbose`` or ``DGF_VERBOSE=1`` turns all of this off. A user's own
``TF_CPP_MIN_LOG_LEVEL`` is kept, start-up lines below that level are hidden the
same way (0 shows them all), and TensorFlow's runtime lines are then left to it.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import io
import os
import re
import select
import sys
import tempfile
from pathlib import Path

VERBOSE_ENV = "DGF_VERBOSE"
LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
DEFAULT_LEVEL = 2  # hide INFO and WARNING, show ERROR and FATAL
# Set by install() next to TF_CPP_MIN_LOG_LEVEL when dgf chose the level (the user
# set none); inherited by worker processes, which then hide the runtime log too.
DEFAULTED_ENV = "DGF_TF_LOG_DEFAULTED"

# An absl/TensorFlow C++ log line: severity letter, date, time, thread, file:line].
_LOG_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^ \]]+:\d+\] (.*)$")
# The same record's header anywhere in a line (after a progress bar's text, say).
_RECORD = re.compile(rb"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^ \]]+:\d+\] ")
_PRE_INIT = "WARNING: All log messages before absl::InitializeLog() is called"
# The second line of cpu_feature_guard's notice, which has no log prefix.
_CPU_NOTICE = "To enable the following instructions:"
# Errors that only say "no GPU here" on a CPU-only machine; shown with --verbose.
_NO_GPU = re.compile(r"failed call to cuInit: .*\((100|303)\)")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _level() -> int:
    try:
        return int(os.environ.get(LEVEL_ENV, DEFAULT_LEVEL))
    except ValueError:
        return DEFAULT_LEVEL


def is_noise(line: str, level: int) -> bool:
    """Whether a line TensorFlow prints at start-up is hidden at ``level``."""
    if line.startswith(_PRE_INIT) or line.startswith(_CPU_NOTICE):
        return level >= 1
    match = _LOG_LINE.match(line)
    if match is None:
        return False  # not TensorFlow's log: always shown
    severity = _SEVERITY[match.group(1)]
    if severity == 2 and _NO_GPU.search(match.group(2)):
        return level >= 1
    return severity < level


def install(verbose_flag: bool = False) -> None:
    """Hide TensorFlow's start-up noise in this process (and, through the
    environment, in the worker processes it starts), unless ``verbose_flag`` or
    ``DGF_VERBOSE`` asks for everything. Call before TensorFlow is imported; later
    it changes nothing."""
    if verbose_flag:
        os.environ[VERBOSE_ENV] = "1"  # worker processes see it too
    if verbose() or "tensorflow" in sys.modules:
        return
    if LEVEL_ENV not in os.environ:
        os.environ[LEVEL_ENV] = str(DEFAULT_LEVEL)
        os.environ[DEFAULTED_ENV] = "1"
    if not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` through the other finders and wraps its loader."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the real import below, and never again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        with _filtered_stderr(_level()):
            self._loader.exec_module(module)
            # The device listing prints the GPU lines; it does not start the
            # runtime (a multi-worker strategy can still be created afterwards).
            module.config.list_physical_devices()
        if _runtime_log_is_ours():
            _relay_stderr()


class _filtered_stderr:
    """File descriptor 2 into a temporary file; on exit, what is not noise at
    ``level`` goes on to the real stderr."""

    def __init__(self, level: int) -> None:
        self.level = level

    def __enter__(self) -> "_filtered_stderr":
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._file = tempfile.TemporaryFile()
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        text = self._file.read().decode("utf-8", "replace")
        self._file.close()
        kept = [line for line in text.splitlines() if not is_noise(line, self.level)]
        if kept:
            os.write(2, ("\n".join(kept) + "\n").encode())


# --------------------------------------------------------------------------- while it runs
def _runtime_log_is_ours() -> bool:
    """Whether TensorFlow's runtime log lines are dgf's to hide: not verbose, and
    TF_CPP_MIN_LOG_LEVEL is the level dgf chose, not the user's."""
    return (not verbose() and os.environ.get(DEFAULTED_ENV) == "1"
            and os.environ.get(LEVEL_ENV) == str(DEFAULT_LEVEL))


def is_runtime_noise(line: str) -> bool:
    """Whether a whole line written to file descriptor 2 while a command runs is
    hidden: a TensorFlow log record (``I``/``W``/``E`` + date, time, thread,
    ``file:line]``) below FATAL, or one of the start-up notices. A FATAL record, and
    anything that is not TensorFlow's log, is shown."""
    if line.startswith(_PRE_INIT) or line.startswith(_CPU_NOTICE):
        return True
    match = _LOG_LINE.match(line)
    return match is not None and match.group(1) != "F"


class RuntimeFilter:
    """Drops TensorFlow's runtime log records from a byte stream, line by line.

    :meth:`feed` returns what can be passed on now: the complete lines that are not
    noise, and of a line that holds a record after other text (a progress bar's
    ``\\r`` update, no newline), that text. A partial last line waits for its end
    (a record is written whole) or for :meth:`flush`. With ``verbose`` everything
    passes unchanged.
    """

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        if self.verbose:
            return data
        *lines, self._pending = (self._pending + data).split(b"\n")
        out = []
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if is_runtime_noise(line):
                continue
            record = _RECORD.search(raw)
            if record is not None and record.group(1) != b"F" and record.start() > 0:
                out.append(raw[:record.start()])  # the text before it keeps its line open
                continue
            out.append(raw + b"\n")
        return b"".join(out)

    @property
    def holding(self) -> bool:
        """Whether a partial line is held back."""
        return bool(self._pending)

    def flush(self) -> bytes:
        pending, self._pending = self._pending, b""
        return pending


# Run by the relay process: stdin is the command's file descriptor 2, stdout the
# terminal's stderr. It ignores Ctrl-C (the command decides what an interrupt does)
# and ends when every writer has closed the pipe, the command included.
_RELAY = (
    "import signal, sys\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from dgf.quiet import _relay\n"
    "_relay()\n"
)
# A partial line (no newline yet) waits this long for more before it is passed on.
_PARTIAL_WAIT_S = 0.05


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            data = data[os.write(fd, data):]
        except InterruptedError:
            continue
        except OSError:
            return  # the terminal is gone: keep draining, so the command never blocks


def _relay(src: int = 0, dst: int = 1) -> None:
    """Copy ``src`` to ``dst`` through a :class:`RuntimeFilter` until end of file."""
    filt = RuntimeFilter()
    waiting = False
    while True:
        ready, _, _ = select.select([src], [], [], _PARTIAL_WAIT_S if waiting else None)
        if not ready:  # a partial line and nothing more: not a record, pass it on
            _write_all(dst, filt.flush())
            waiting = False
            continue
        try:
            chunk = os.read(src, 65536)
        except InterruptedError:
            continue
        if not chunk:
            break
        _write_all(dst, filt.feed(chunk))
        waiting = filt.holding
    _write_all(dst, filt.flush())


def _relay_stderr() -> None:
    """File descriptor 2 into a pipe read by a relay process (:func:`_relay`) for
    the rest of this process; ``sys.stderr`` writes to the real stderr. Nothing
    changes where stderr is not file descriptor 2 (a caller captures it), is
    closed, or the relay cannot be started."""
    if os.name != "posix":
        return
    try:
        if sys.stderr is None or sys.stderr.fileno() != 2:
            return
        sys.stderr.flush()
        real = os.dup(2)
    except (OSError, ValueError, io.UnsupportedOperation):
        return
    read_end, write_end = os.pipe()  # both close on exec: the relay holds neither
    try:
        # posix_spawn, not Popen: no Popen object to warn, at exit, that the relay
        # still runs (it ends just after this process, when the pipe closes).
        os.posix_spawn(
            sys.executable,
            [sys.executable, "-I", "-S", "-c", _RELAY, str(Path(__file__).resolve().parents[1])],
            os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, read_end, 0), (os.POSIX_SPAWN_DUP2, real, 1),
                          (os.POSIX_SPAWN_DUP2, real, 2)],
            setsid=True,  # no Ctrl-C from the terminal, nor a signal to the job's group
        )
    except (OSError, AttributeError, NotImplementedError):  # no posix_spawn, or no setsid
        for fd in (real, read_end, write_end):
            os.close(fd)
        return
    os.close(read_end)
    old = sys.stderr
    sys.stderr = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(real, "w")),
        encoding=getattr(old, "encoding", None) or "utf-8",
        errors=getattr(old, "errors", None) or "backslashreplace",
        line_buffering=True, write_through=True,
    )
    os.dup2(write_end, 2)
    os.close(write_end)
