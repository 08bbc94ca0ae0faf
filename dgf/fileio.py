"""Files in and out: inputs that must be files, outputs that must be writable, and
writing so that nobody ever sees half of a file.

Every command checks its outputs with :func:`check_output` before any slow work and
writes them with :func:`write_atomic` (files) or :func:`write_folder_atomic`
(folders). Both turn an ``OSError`` into :class:`OutputError`, so the user reads
``error: cannot write PATH: reason`` instead of a traceback.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, TypeVar

from dgf.errors import DgfError

T = TypeVar("T")


class OutputError(DgfError):
    """An output cannot be written; the message names it and says why."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"cannot write {path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class DiskFull(OutputError):
    """The file system ran out of space (or quota) while ``path`` was written.

    A full disk is not a problem of one file: commands stop at the first one.
    ``kept`` says what the command kept (``keeping`` adds it where the command
    knows, e.g. dgf-train's last complete checkpoint)."""

    def __init__(self, path: Path | str, kept: str = "") -> None:
        super().__init__(path, "no space left on device")
        self.kept = kept
        self.args = (f"no space left on device writing {path}" + (f"; {kept}" if kept else ""),)

    def keeping(self, kept: str) -> "DiskFull":
        return DiskFull(self.path, kept)


# ENOSPC and EDQUOT, and how libraries that do not raise an OSError (TensorFlow's
# file system layer, HDF5) word them.
_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_NO_SPACE_WORDS = ("No space left on device", "Disk quota exceeded", "errno = 28", "errno = 122")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (an OSError or any library's error) means the disk is full."""
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS:
        return True
    text = str(exc)
    return any(words in text for words in _NO_SPACE_WORDS)


def output_error(path: Path | str, exc: OSError) -> OutputError:
    """The OutputError for ``exc`` raised while writing ``path``: DiskFull for a
    full disk, else ``cannot write PATH: reason``."""
    return DiskFull(path) if is_disk_full(exc) else OutputError(path, os_reason(exc))


def os_reason(exc: OSError) -> str:
    """The human part of an OSError ("Permission denied"), without its repr noise."""
    if exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def require_file(path: Path | str, what: str, hint: str = "") -> Path:
    """``path`` as a Path if it is an existing file; DgfError that says what it is
    otherwise (missing, or a folder), naming ``what`` ("HDF5 file", "model file")."""
    path = Path(path)
    if path.is_dir():
        problem = "is a folder, not a file"
    elif not path.exists():
        problem = "does not exist"
    elif not path.is_file():
        problem = "is not a regular file"
    else:
        return path
    raise DgfError(f"{what} {path} {problem}" + (f"; {hint}" if hint else ""))


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (a file or a folder)."""
    probe = path
    while not (probe.exists() or probe.is_symlink()):
        parent = probe.parent
        if parent == probe:  # reached the root or '.' without finding anything
            return probe
        probe = parent
    return probe


def check_output(path: Path | str, *, folder: bool = False) -> Path:
    """Raise OutputError unless ``path`` can be created (or written into) here.

    Creates nothing, so commands call it before any slow work. ``folder=True``:
    ``path`` is a folder that will hold outputs, so an existing file there is an
    error. The checks are what would make the later write fail: a file where a
    folder is needed on the way, no write permission in the folder that would
    receive the new entry.
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise OutputError(path, "it is a file, not a folder")
    # The folder that gets a new entry: path itself for an existing output folder,
    # else the nearest existing ancestor, where the first missing part is created.
    base = path if folder and path.is_dir() else nearest_existing(path.parent)
    if not base.is_dir():
        raise OutputError(path, f"{base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(path, f"no write permission in {base}")
    return path


def prepare_output(path: Path | str, *, folder: bool = False) -> Path:
    """:func:`check_output`, then create the folders the output needs
    (``path`` itself with ``folder=True``, its parent otherwise)."""
    path = check_output(path, folder=folder)
    remove_stale_temps(path if folder else path.parent)
    try:
        (path if folder else path.parent).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(path, exc) from None
    return path


def _umask() -> int:
    # Linux reports the umask without changing it; elsewhere set it and put it back.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _give_normal_mode(path: Path) -> None:
    """The mode a plain ``open(path, "w")`` or ``mkdir`` would have given: temp
    files and folders made by ``mkstemp`` / ``mkdtemp`` or libraries are private
    (0o600 / 0o700), and that would survive the rename."""
    base = 0o777 if path.is_dir() else 0o666
    os.chmod(path, base & ~_umask())


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def temp_path(path: Path | str, pid: int | None = None) -> Path:
    """The temp file :func:`write_atomic` writes ``path`` through, in process
    ``pid`` (this one by default): hidden (a leading '.'), beside ``path``, with
    its suffix kept (Keras and Pillow choose the format by it)."""
    path = Path(path)
    pid = os.getpid() if pid is None else pid
    return path.with_name(f".{path.stem}.tmp{pid}{path.suffix}")


# The names of :func:`temp_path` files and of :func:`write_folder_atomic`'s temp and
# set-aside folders: ``.NAME.tmpPID[.SUFFIX]`` and ``.NAME.oldPID``.
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)(?P<pid>[0-9]+)(?P<suffix>\.[^.]+)?$")
_SWEPT: set[Path] = set()


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    if pid <= 0:
        return True  # not a real process id: never treated as gone
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # it exists, owned by another user
    return True


def stale_temps(folder: Path | str) -> list[Path]:
    """The temporary files and folders in ``folder`` (this package's temp names,
    see :func:`temp_path`) whose writing process is gone: left by a process
    killed outright (SIGKILL, a power cut)."""
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    found = []
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match and not process_alive(int(match.group("pid"))):
            found.append(folder / entry.name)
    return sorted(found)


def remove_stale_temps(folder: Path | str) -> list[Path]:
    """Remove :func:`stale_temps` from ``folder`` (once per folder and process) and
    say so in one line on stderr; a live process's temp files are never touched.
    Returns what was removed."""
    folder = Path(folder)
    key = folder.resolve() if folder.exists() else folder.absolute()
    if key in _SWEPT:
        return []
    _SWEPT.add(key)
    removed = []
    for path in stale_temps(folder):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue  # another process removed it first
        except OSError:
            continue  # not ours to remove (permissions): left alone
        removed.append(path)
    if removed:
        names = ", ".join(p.name for p in removed)
        print(f"note: removed {len(removed)} temporary file(s) in {folder} left by stopped "
              f"processes: {names}", file=sys.stderr, flush=True)
    return removed


def write_atomic(path: Path | str, write: Callable[[Path], T]) -> T:
    """Call ``write(tmp)`` on a temp file beside ``path`` (:func:`temp_path`), then
    ``os.replace`` it; return what ``write`` returned.

    A crash or a reader (an image viewer, a second process) never sees a partial
    file under the real name; the temp file is removed if ``write`` fails or is
    interrupted (a process killed outright leaves it behind, under its hidden
    name). The result gets the mode a normal write would give. An OSError becomes
    OutputError naming ``path``.
    """
    path = Path(path)
    prepare_output(path)
    tmp = temp_path(path)
    try:
        result = write(tmp)
        _give_normal_mode(tmp)
        if path.exists():
            # Replacing a file: make the new one durable first, or a power cut right
            # after the rename could leave neither.
            _fsync(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise output_error(path, exc) from exc
    except Exception as exc:  # a library's own error type for ENOSPC (h5py, TensorFlow)
        if is_disk_full(exc):
            raise DiskFull(path) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return result


def write_text_atomic(path: Path | str, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes_atomic(path: Path | str, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_folder_atomic(path: Path | str, write: Callable[[Path], T]) -> T:
    """Like :func:`write_atomic` for a folder: ``write(tmp)`` fills a new temp
    folder beside ``path``, which then takes the place of ``path``.

    An existing folder at ``path`` is moved aside first and put back if the move
    fails, so ``path`` is always either the old folder or the complete new one
    (there is a moment without either: a folder cannot be replaced in one rename).
    Callers decide whether an existing ``path`` may be replaced. Returns what
    ``write`` returned.
    """
    path = Path(path)
    prepare_output(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process of this pid
        tmp.mkdir()
        result = write(tmp)
        _give_normal_mode(tmp)
        _replace_with_folder(tmp, path)
    except OSError as exc:
        raise output_error(path, exc) from exc
    except Exception as exc:
        if is_disk_full(exc):
            raise DiskFull(path) from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _replace_with_folder(tmp: Path, target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        old = target.with_name(f".{target.name}.old{os.getpid()}")
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    if target.exists() or target.is_symlink():
        target.unlink()  # rename cannot put a folder over a file
    os.replace(tmp, target)
