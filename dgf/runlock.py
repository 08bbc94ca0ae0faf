"""One writer per run folder: an OS-level lock that dgf-train holds while it trains.

The lock is ``fcntl.flock`` on ``RUN/.dgf-train.lock``. The kernel releases it when
the holding process ends, however it ends (SIGKILL, a crash, a power cut of a
container), so a stale lock never blocks a resume: there is nothing to clean up.
The file's content (``PID HOST``) only names the holder in the message a second
process gets. A trainer that ends normally removes the file; one killed leaves it,
unlocked, for the next to take.

Readers do not lock: ``dgf-eval --run`` reads the snapshots of a run being trained
and writes only ``RUN/eval``.
"""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from dgf.errors import DgfError
from dgf.fileio import os_reason, prepare_output

LOCK_NAME = ".dgf-train.lock"


class RunInUse(DgfError):
    """Another process holds the run folder's lock."""


class RunLock:
    """The lock on ``run_dir``, taken by :meth:`acquire` (or ``with``), released by
    :meth:`release` or when the process ends.

    The lock file is removed on release, and a run folder created here for it too
    if nothing else was written, so a run refused later (bad data) changes nothing.
    """

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> "RunLock":
        self._created = not self.run_dir.exists()
        prepare_output(self.run_dir, folder=True)
        for _ in range(10):
            fd = self._open_locked()
            # The holder before removed the file on release: this lock is on a file
            # nobody else can find, so take the one at the path now.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        else:
            raise DgfError(f"cannot lock {self.run_dir}: {self.path} keeps being replaced")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def _open_locked(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DgfError(f"cannot lock {self.run_dir}: cannot open {self.path} "
                           f"({os_reason(exc)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunInUse(f"{self.run_dir} is in use by {holder}; wait for it or stop it") from None
        except OSError as exc:  # a file system without flock (some network mounts)
            os.close(fd)
            raise DgfError(f"cannot lock {self.run_dir} ({os_reason(exc)}); put the run "
                           f"folder on a file system that supports locks") from None
        return fd

    def release(self) -> None:
        """Remove the lock file (still holding the lock, so no one else can have it
        meanwhile), then let go; and the run folder if it was made for the lock and
        nothing else was written."""
        if self._fd is None:
            return
        try:
            self.path.unlink()
            if self._created and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()
        except OSError:
            pass  # the folder went or changed meanwhile: nothing of ours to tidy
        os.close(self._fd)  # closing the last descriptor releases the lock
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _read_holder(fd: int) -> str:
    """``process PID on HOST`` from the lock file, as its holder wrote it."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        text = []
    if len(text) >= 2 and text[0].isdigit():
        return f"process {text[0]} on {text[1]}"
    return "another process"
