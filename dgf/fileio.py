"""Writing files so that nobody ever sees half of one."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomic(path: Path | str, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temp file beside ``path``, then ``os.replace`` it.

    The temp name keeps the suffix (Keras and Pillow choose the format by it), so a
    crash or a reader (an image viewer, a second process) never sees a partial file
    under the real name; the temp file is removed if ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path | str, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
