"""What a saved generator records about its training, inside its ``.keras`` file.

A ``.keras`` file is a zip archive; dgf-train adds one member, ``dgf.json``, beside
the ones Keras writes. Keras' loader reads only its own members, so the file still
loads everywhere, safe mode included, and the record is read straight from the
archive (:func:`read_metadata`) without TensorFlow. It holds:

* ``layout``: the architecture keys :func:`dgf.models.build_generator` takes;
* ``data``: the HDF5 file, its image size (``image_height``, ``image_width``) and
  the pair counts of the train and test splits;
* ``crop``: the training crop side (None: whole images);
* ``epoch``: the epoch the weights are from (1-based);
* ``score``: that epoch's test scores and ``best``: the best scored epoch's, each
  with the ``crop_border``, ``protocol`` and ``y_channel`` they were measured at
  (None when not scored; a record without ``protocol`` predates it: skimage, RGB);
* ``dgf_version`` and ``commit`` (the git commit of the source tree, when known).

A model saved before this record existed (or by plain Keras) has no ``dgf.json``:
:func:`read_metadata` returns None and the tools say the metadata is missing.
"""
from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import dgf

MEMBER = "dgf.json"
_SOURCE = Path(__file__).resolve().parents[1]


def source_commit() -> str | None:
    """The git commit of the tree dgf runs from (with ``+dirty`` when it has
    uncommitted changes), or None outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(_SOURCE), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "-C", str(_SOURCE), "status", "--porcelain",
                                "--untracked-files=no", "--", "dgf"],
                               capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def write_metadata(path: Path | str, record: dict[str, Any]) -> None:
    """Add ``record`` (JSON-serialisable) to the ``.keras`` archive at ``path`` as
    ``dgf.json``, with ``dgf_version`` set. Call it on the temporary file of an
    atomic save, before it is renamed into place."""
    full = {"dgf_version": dgf.__version__, **record}
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MEMBER, json.dumps(full, indent=1, sort_keys=True))


def read_metadata(path: Path | str) -> dict[str, Any] | None:
    """The training record of the ``.keras`` file at ``path``; None when the file has
    none (an older model, a plain Keras file, or not a zip archive)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if MEMBER not in archive.namelist():
                return None
            value = json.loads(archive.read(MEMBER).decode("utf-8"))
    except (OSError, zipfile.BadZipFile, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def training_side(record: dict[str, Any] | None) -> int | None:
    """The side in pixels of the images the model learned on: the shorter side of
    the training images (crops are cut from them, so the blur they show is the
    blur of images of that size); None when the record does not say."""
    data = (record or {}).get("data") or {}
    sides = [data.get("image_height"), data.get("image_width")]
    sides = [int(s) for s in sides if isinstance(s, (int, float)) and s > 0]
    return min(sides) if sides else None


def describe(record: dict[str, Any] | None) -> str:
    """One line on what the model learned on, for messages and reports."""
    if record is None:
        return "no training metadata (saved before dgf recorded it, or not by dgf-train)"
    data = record.get("data") or {}
    best = record.get("best") or {}
    parts = [f"trained on {data.get('h5', '?')} ({data.get('image_width', '?')}x"
             f"{data.get('image_height', '?')}, {data.get('train_pairs', '?')} train pairs)",
             f"crop {record.get('crop')}", f"epoch {record.get('epoch')}"]
    if best.get("psnr") is not None:
        channel = "Y" if best.get("y_channel") else "RGB"
        parts.append(f"best {best['psnr']:.2f} dB / {best.get('ssim', float('nan')):.4f} "
                     f"at crop border {best.get('crop_border', 0)}, "
                     f"{best.get('protocol', 'skimage')} protocol, {channel} "
                     f"(epoch {best.get('epoch')})")
    parts.append(f"dgf {record.get('dgf_version', '?')}"
                 + (f" ({record['commit']})" if record.get("commit") else ""))
    return ", ".join(parts)
