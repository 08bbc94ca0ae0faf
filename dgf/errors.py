"""The one exception type that the command-line tools turn into a clean message, the
one way such a message quotes a library's exception, and the one way a message says
what to install."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from dgf import DISTRIBUTION

#: The ``dgf`` package folder; the folder above it is a source checkout when it holds
#: this distribution's pyproject.toml.
PACKAGE_DIR = Path(__file__).resolve().parent


class DgfError(Exception):
    """A problem with the user's input or environment, explained in the message.

    Command-line entry points print the message (no traceback) and exit non-zero.
    """


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), or its type's
    name when it has none: what a one-line error quotes of a library's exception."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _normalized(name: str) -> str:
    """A distribution name as the package index compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_name(pyproject: str) -> str | None:
    """The ``name`` of a pyproject.toml's ``[project]`` table, or None. A line scan,
    not a TOML parser (tomllib is Python 3.11+): enough for a one-line string."""
    table = None
    for line in pyproject.splitlines():
        line = line.strip()
        if line.startswith("["):
            table = line.split("#", 1)[0].strip()
        elif table == "[project]":
            found = re.fullmatch(r"""name\s*=\s*(["'])([^"']+)\1\s*(#.*)?""", line)
            if found:
                return found.group(2)
    return None


def source_checkout(package_dir: Path | None = None) -> Path | None:
    """The source checkout dgf runs from (an editable install, or the repository on
    ``sys.path``): the folder above ``package_dir`` (default :data:`PACKAGE_DIR`) when
    its pyproject.toml names this distribution; None for an installed copy."""
    root = (package_dir or PACKAGE_DIR).parent
    try:
        text = (root / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    name = project_name(text)
    return root if name is not None and _normalized(name) == DISTRIBUTION else None


def install_hint(extra: str, package_dir: Path | None = None) -> str:
    """The command that installs the optional ``extra`` (``onnx``, ``openvino``): from
    the package index, or, when dgf runs from a source checkout, from that checkout
    (the index's copy would be a second dgf beside it)."""
    root = source_checkout(package_dir)
    if root is None:
        return f"pip install {shlex.quote(f'{DISTRIBUTION}[{extra}]')}"
    return f"pip install -e {shlex.quote(f'{root}[{extra}]')}"
