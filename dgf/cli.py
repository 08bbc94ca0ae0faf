"""Command-line entry points: argument parsing only; the work lives in the package.

Every entry point turns a DgfError into ``error: <message>`` on stderr and exit
status 2, so users see what to fix instead of a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from dgf.errors import DgfError


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def _run(fn: Callable[[], int | None]) -> int:
    try:
        status = fn()
    except DgfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


# --- build-hdf5 -------------------------------------------------------------
def build_hdf5_main(argv: Sequence[str] | None = None) -> int:
    raise NotImplementedError  # filled in by the build-hdf5 work


# --- dgf-make-pairs ---------------------------------------------------------
def make_pairs_main(argv: Sequence[str] | None = None) -> int:
    raise NotImplementedError  # filled in by the make-pairs work


# --- dgf-train --------------------------------------------------------------
def train_main(argv: Sequence[str] | None = None) -> int:
    raise NotImplementedError  # filled in by the trainer work


# --- dgf-eval ---------------------------------------------------------------
def eval_main(argv: Sequence[str] | None = None) -> int:
    raise NotImplementedError  # filled in by the eval work


# --- dgf-deblur -------------------------------------------------------------
def deblur_main(argv: Sequence[str] | None = None) -> int:
    raise NotImplementedError  # filled in by the deblur work


# --- dgf-export -------------------------------------------------------------
def export_main(argv: Sequence[str] | None = None) -> int:
    raise NotImplementedError  # filled in by the export work
