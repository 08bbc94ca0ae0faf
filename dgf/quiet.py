"""A terminal that shows only dgf: TensorFlow's start-up lines hidden by default.

Importing TensorFlow prints, on every machine, lines a user has nothing to do
about: absl's ``WARNING: All log messages before absl::InitializeLog() ...``, the
oneDNN and CPU-instruction notices, "Could not find cuda drivers" and, on a machine
without a GPU, ``E0000 ... failed call to cuInit: ... (303)``. They are written by
C++ code before its logging is set up, so ``TF_CPP_MIN_LOG_LEVEL`` does not hide
them. :func:`install` (called by the CLI before anything imports TensorFlow) wraps
that import and the first device listing: file descriptor 2 goes to a temporary
file meanwhile, and afterwards every line that is not start-up noise is written to
the real stderr, so real errors still reach the user. From then on TensorFlow's
own ``TF_CPP_MIN_LOG_LEVEL`` (2 unless the user set it: warnings and info hidden,
errors shown) filters its C++ log.

``--verbose`` or ``DGF_VERBOSE=1`` turns all of this off. A user's own
``TF_CPP_MIN_LOG_LEVEL`` is kept, and start-up lines below that level are hidden
the same way (0 shows them all).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

VERBOSE_ENV = "DGF_VERBOSE"
LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
DEFAULT_LEVEL = 2  # hide INFO and WARNING, show ERROR and FATAL

# An absl/TensorFlow C++ log line: severity letter, date, time, thread, file:line].
_LOG_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^ \]]+:\d+\] (.*)$")
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
    os.environ.setdefault(LEVEL_ENV, str(DEFAULT_LEVEL))
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
