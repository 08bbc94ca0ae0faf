#!/usr/bin/env python
"""Pack sharp/blurred pairs into one HDF5 file; same as the `build-hdf5` command.

    python tools/build_hdf5.py JPEG_DIR [-o data/data.h5] [--size 256 | --native] ...
"""
import sys
from pathlib import Path

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dgf.cli import build_hdf5_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(build_hdf5_main())
