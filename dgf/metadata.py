"""What a saved generator records about its training, inside its ``.keras`` file.

A ``.keras`` file is a zip archive; dgf-train adds one member, ``dgf.json``, beside
the ones Keras writes. Keras' loader reads only its own members, so the file still
loads everywhere, safe mode included, and the record is read straight from the
archive (:func:`read_metadata`) without TensorFlow. It holds:

* ``layout``: the architecture keys :func:`dgf.models.build_generator` takes (files
  written before ``blocks`` was a setting leave it out: they have ten);
* ``data``: the HDF5 file, its image size (``image_height``, ``image_width``) and
  the pair counts of the train and test splits;
* ``crop``: the training crop side (None: whole images);
* ``epoch``: the epoch the weights are from (1-based);
* ``score``: that epoch's test scores and ``best``: the best scored epoch's, each
  with the ``crop_border``, ``protocol`` and ``y_channel`` they were measured at
  (None when not scored; a record without ``protocol`` predates it: skimage, RGB);
* ``dgf_version`` and ``commit`` (the git commit of the source tree, when known);
* ``evaluations``: what ``dgf-eval --model M --h5 H --record`` measured on a whole
  split afterwards (:func:`add_evaluation`), one entry per data file, split, pair
  count and metric settings;
* ``training_blur``: the streak length of the blurred training images
  (:func:`dgf.blur.measure_training_blur`: ``streak_px``, the median in pixels, its
  quartiles, the ``estimator``, the data file, split, image side and count), which
  ``--scale auto`` maps a photo's streaks onto (:func:`set_training_blur`).

Every score names the number of pairs it was measured on (``count``): the trainer
scores ``--val-samples`` pairs per epoch, often fewer than the whole test split.

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
from dgf.fileio import write_atomic

MEMBER = "dgf.json"
EVALUATIONS = "evaluations"
TRAINING_BLUR = "training_blur"
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


def training_streak(record: dict[str, Any] | None, estimator: str) -> float | None:
    """The median streak length in pixels of the blurred training images, as the
    record's ``training_blur`` states it, when measured by ``estimator``; None when
    the record does not say (or names another estimator)."""
    blur = (record or {}).get(TRAINING_BLUR) or {}
    value = blur.get("streak_px")
    if blur.get("estimator") != estimator or not isinstance(value, (int, float)) \
            or isinstance(value, bool) or not value > 0:
        return None
    return float(value)


def training_file(record: dict[str, Any] | None) -> Path | None:
    """The HDF5 file the record says the model was trained on, when it exists here
    (a relative path is taken from the current folder, where dgf-train ran); None
    otherwise."""
    name = ((record or {}).get("data") or {}).get("h5")
    if not isinstance(name, str) or not name:
        return None
    path = Path(name)
    return path if path.is_file() else None


def _pairs(score: dict[str, Any], split: str = "test") -> str:
    """``on N test pairs `` (an older record without the count: nothing)."""
    count = score.get("count")
    return f"on {count} {split} pairs " if isinstance(count, int) else ""


def _settings(score: dict[str, Any]) -> str:
    channel = "Y" if score.get("y_channel") else "RGB"
    return (f"crop border {score.get('crop_border', 0)}, "
            f"{score.get('protocol', 'skimage')} protocol, {channel}")


def describe(record: dict[str, Any] | None) -> str:
    """One line on what the model learned on, for messages and reports."""
    if record is None or "data" not in record:
        return "no training metadata (saved before dgf recorded it, or not by dgf-train)"
    data = record.get("data") or {}
    best = record.get("best") or {}
    parts = [f"trained on {data.get('h5', '?')} ({data.get('image_width', '?')}x"
             f"{data.get('image_height', '?')}, {data.get('train_pairs', '?')} train pairs)",
             f"crop {record.get('crop')}", f"epoch {record.get('epoch')}"]
    if best.get("psnr") is not None:
        parts.append(f"best {best['psnr']:.2f} dB / {best.get('ssim', float('nan')):.4f} "
                     f"{_pairs(best)}at {_settings(best)} (epoch {best.get('epoch')})")
    blur = record.get(TRAINING_BLUR) or {}
    if isinstance(blur.get("streak_px"), (int, float)):
        parts.append(f"training blur {blur['streak_px']:.1f} px (median of "
                     f"{blur.get('count', '?')} {blur.get('split', '?')} images)")
    parts.append(f"dgf {record.get('dgf_version', '?')}"
                 + (f" ({record['commit']})" if record.get("commit") else ""))
    return ", ".join(parts)


def describe_evaluations(record: dict[str, Any] | None) -> list[str]:
    """One line per entry of the record's ``evaluations`` (:func:`add_evaluation`)."""
    lines = []
    for entry in (record or {}).get(EVALUATIONS) or []:
        lines.append(
            f"{entry.get('psnr', float('nan')):.2f} dB / {entry.get('ssim', float('nan')):.4f} "
            f"{_pairs(entry, entry.get('split', 'test'))}of {entry.get('h5', '?')} at "
            f"{_settings(entry)}; blurred input "
            f"{entry.get('blurred_psnr', float('nan')):.2f} dB / "
            f"{entry.get('blurred_ssim', float('nan')):.4f} "
            f"(dgf-eval, {entry.get('precision', 'fp32')}, dgf {entry.get('dgf_version', '?')})")
    return lines


# What makes two evaluations the same measurement: a new one replaces the old.
_EVALUATION_KEY = ("h5", "split", "count", "crop_border", "protocol", "y_channel")
EVALUATION_FIELDS = _EVALUATION_KEY + ("psnr", "ssim", "blurred_psnr", "blurred_ssim",
                                       "precision")


def add_evaluation(path: Path | str, summary: dict[str, Any]) -> dict[str, Any]:
    """Record ``summary`` (dgf-eval's, for one model on one split) in the ``.keras``
    file at ``path`` as an entry of ``evaluations``, replacing an earlier entry of the
    same data file, split, pair count and metric settings; return the new record.
    The file is rewritten atomically (:func:`_rewrite`).
    """
    path = Path(path)
    record = read_metadata(path) or {}
    entry = {key: summary.get(key) for key in EVALUATION_FIELDS}
    entry["dgf_version"] = dgf.__version__
    kept = [old for old in record.get(EVALUATIONS) or []
            if any(old.get(key) != entry[key] for key in _EVALUATION_KEY)]
    record = {**record, EVALUATIONS: kept + [entry]}
    _rewrite(path, record)
    return record


def set_training_blur(path: Path | str, blur: dict[str, Any]) -> dict[str, Any]:
    """Record ``blur`` (:func:`dgf.blur.measure_training_blur`'s summary) as the
    ``training_blur`` of the ``.keras`` file at ``path``, replacing an earlier one,
    and return the new record; rewritten atomically as :func:`add_evaluation` does,
    Keras' members (the weights) copied unchanged."""
    path = Path(path)
    record = {**(read_metadata(path) or {}), TRAINING_BLUR: dict(blur)}
    _rewrite(path, record)
    return record


def _rewrite(path: Path, record: dict[str, Any]) -> None:
    """Replace the ``dgf.json`` of the archive at ``path`` with ``record``: the
    archive is written under a temporary name and renamed into place, so the model
    file is never left half-written; Keras' own members are copied unchanged."""

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(path) as source, \
                zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as target:
            for item in source.infolist():
                if item.filename != MEMBER:
                    target.writestr(item, source.read(item.filename))
            target.writestr(MEMBER, json.dumps(record, indent=1, sort_keys=True))

    write_atomic(path, write)
