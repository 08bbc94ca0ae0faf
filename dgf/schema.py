"""The HDF5 schema in one place: dataset names, dtype, attributes.

Seed-compatible: ``{split}_data_full`` holds sharp images and ``{split}_data_blur``
the blurred ones, uint8 arrays of shape (N, H, W, 3). Files written by the seed's
own script (same names, no attributes, no chunking) stay readable.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import h5py
import numpy as np

from dgf.errors import DgfError

SCHEMA_VERSION = 1
SPLITS = ("train", "test", "val")
DTYPE = np.uint8

# File attributes written by `build-hdf5` (files made by the seed's script have none).
ATTR_SCHEMA_VERSION = "schema_version"  # int, SCHEMA_VERSION
ATTR_SIZE = "size"  # int N (each image resized to N x N) or the string "native"
ATTR_ORDER = "order"  # "sharp-blur" or "blur-sharp" (side-by-side halves)
ATTR_LAYOUT = "layout"  # "side-by-side", "paired" or "pairs-list"
ATTR_SPLITS = "splits"  # JSON list of the splits written, e.g. ["train", "test"]
ATTR_SKIPPED = "skipped"  # JSON list of [relative path, reason]
ATTR_DGF_VERSION = "dgf_version"  # dgf.__version__ of the writer
ATTR_COMPRESSION = "compression"  # "none", "lzf" or "gzip"
ATTR_BLUR_FOLDER = "blur_folder"  # "blur" or "blur_gamma": GOPRO folder used (paired only)
ATTR_PAIRS_LISTS = "pairs_lists"  # JSON {split: list file} (pairs-list builds only)


def count_attr(split: str) -> str:
    """Per-split pair count attribute, e.g. ``train_count`` (int)."""
    return f"{split}_count"


def sharp_name(split: str) -> str:
    return f"{split}_data_full"


def blurred_name(split: str) -> str:
    return f"{split}_data_blur"


def source_name(split: str) -> str:
    return f"{split}_source"


def open_pairs_file(path: Path | str) -> h5py.File:
    """Open a pairs file read-only, turning the usual mistakes into DgfError.

    Missing path, a directory, a file that is not HDF5 and any other open failure
    each get their own message naming the path. The caller closes the returned
    ``h5py.File`` (it is a context manager).
    """
    path = Path(path)
    if not path.exists():
        raise DgfError(
            f"{path}: no such file. Build it with `build-hdf5 JPEG_DIR` "
            f"(or pass the path of an existing HDF5 file)."
        )
    if path.is_dir():
        raise DgfError(f"{path}: is a directory; expected an HDF5 file built by `build-hdf5`.")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        if not h5py.is_hdf5(path):
            raise DgfError(
                f"{path}: not an HDF5 file. Build one from your JPEG pairs with "
                f"`build-hdf5 JPEG_DIR`."
            ) from exc
        raise DgfError(f"{path}: cannot open the HDF5 file ({exc}).") from exc


@dataclass(frozen=True)
class SplitInfo:
    """What a valid split of a file holds."""

    count: int
    height: int
    width: int


def check_split(h5file, split: str, path: Path | str = "") -> SplitInfo:
    """Validate one split of an open ``h5py.File``; return its shape.

    Raises DgfError naming the file, the dataset and what was expected.
    """
    where = f"{path}: " if path else ""
    found = sorted(k for k in h5file.keys())
    for name in (sharp_name(split), blurred_name(split)):
        if name not in h5file:
            raise DgfError(
                f"{where}no dataset '{name}' for split '{split}'. Expected "
                f"'{sharp_name(split)}' (sharp) and '{blurred_name(split)}' (blurred), "
                f"uint8 (N, H, W, 3); the file has {found or 'no datasets'}. "
                f"Build it with `build-hdf5 JPEG_DIR`."
            )
    shapes = {}
    for name in (sharp_name(split), blurred_name(split)):
        ds = h5file[name]
        if ds.dtype != DTYPE:
            raise DgfError(
                f"{where}dataset '{name}' has dtype {ds.dtype}; expected uint8 "
                f"(N, H, W, 3). Rebuild the file with `build-hdf5`."
            )
        if ds.ndim != 4 or ds.shape[-1] != 3:
            raise DgfError(
                f"{where}dataset '{name}' has shape {ds.shape}; expected "
                f"(N, H, W, 3) RGB images. Rebuild the file with `build-hdf5`."
            )
        shapes[name] = ds.shape
    a, b = shapes[sharp_name(split)], shapes[blurred_name(split)]
    if a != b:
        raise DgfError(
            f"{where}'{sharp_name(split)}' has shape {a} but '{blurred_name(split)}' "
            f"has {b}; sharp and blurred must pair up one to one."
        )
    if a[0] == 0:
        raise DgfError(f"{where}split '{split}' is empty (0 pairs).")
    return SplitInfo(count=int(a[0]), height=int(a[1]), width=int(a[2]))
