"""Scoring a generator on a split of an HDF5 pairs file, as the trainer does every
epoch and dgf-eval does per model: running the generator over uint8 images
(:func:`deblur_array`), choosing and reading the pairs, the sample strip drawn from
the same pass, and the per-image and summary scores (:mod:`dgf.metrics`). No
matplotlib: the plots live in :mod:`dgf.evaluate`.

Every generator runs through :func:`dgf.dispatch.inference_call`, its compiled
BatchNorm-folded copy with the generator's current weights (so the trainer's
per-epoch scoring sees each epoch's).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from dgf.errors import DgfError
from dgf.images import to_uint8, to_unit, write_image
from dgf.metrics import check_crop_border, check_protocol, check_window, mean_psnr, psnr, ssim
from dgf.options import (
    DEFAULT_EVAL_BATCH,
    DEFAULT_EVAL_SPLIT,
    DEFAULT_JIT,
    DEFAULT_PRECISION,
    DEFAULT_PROTOCOL,
    DEFAULT_STRIPS,
    DEFAULT_Y_CHANNEL,
)
from dgf.dispatch import inference_call
from dgf.schema import blurred_name, check_split, open_pairs_file, sharp_name, source_name

# What every stored score names: the crop border, protocol and channel it was taken at.
SETTING_KEYS = ("crop_border", "protocol", "y_channel")
SUMMARY_KEYS = ("count", "psnr", "ssim", "blurred_psnr", "blurred_ssim", "seconds_per_image",
                *SETTING_KEYS)
ROW_KEYS = ("index", "source", "psnr", "ssim", "blurred_psnr", "blurred_ssim", *SETTING_KEYS)


# --- running a generator --------------------------------------------------------------
def deblur_array(
    generator: Any,
    blurred: np.ndarray,
    batch_size: int = DEFAULT_EVAL_BATCH,
    precision: str = DEFAULT_PRECISION,
    jit: str = DEFAULT_JIT,
    engine: str = "tensorflow",
    refresh_calls: int | None = None,
) -> np.ndarray:
    """Run ``generator`` in inference mode over blurred images.

    ``generator``: a Keras model mapping (B, H, W, 3) float32 in [-1, 1] to the same
    shape in [-1, 1]; its BatchNorm-folded copy at ``precision`` (``"fp32"`` or
    ``"bf16"``) runs, compiled once per generator, with the generator's current
    weights (:func:`dgf.dispatch.inference_call`). ``blurred``: (B, H, W, 3) uint8.
    ``jit``: XLA or not (``"auto"``, ``"on"``, ``"off"``); ``engine``: which runs it
    (``"tensorflow"``, ``"onnxruntime"``, ``"openvino"``, ``"auto"``); ``refresh_calls``:
    how many calls one set of weights serves, for ``"auto"`` (the trainer); all as in
    :func:`dgf.dispatch.inference_call`.
    Returns (B, H, W, 3) uint8, rounded by :func:`to_uint8`.
    """
    blurred = np.asarray(blurred)
    if blurred.dtype != np.uint8 or blurred.ndim != 4 or blurred.shape[-1] != 3:
        raise DgfError(
            f"blurred images must be uint8 (B, H, W, 3); got {blurred.dtype} "
            f"{blurred.shape}"
        )
    if batch_size < 1:
        raise DgfError(f"batch size must be at least 1; got {batch_size}")
    out = np.empty_like(blurred)
    call = inference_call(generator, precision, jit, engine, refresh_calls)
    for start in range(0, len(blurred), batch_size):
        chunk = to_unit(blurred[start : start + batch_size])
        y = np.asarray(call(chunk), dtype=np.float32)
        if y.shape != chunk.shape:
            raise DgfError(
                f"generator returned shape {y.shape} for input {chunk.shape}; a "
                f"deblurring generator must keep the image size and 3 channels"
            )
        out[start : start + batch_size] = to_uint8(y)
    return out


# --- which pairs, and reading them -------------------------------------------------
def strip_indices(count: int, n: int) -> list[int]:
    """``n`` fixed, evenly spaced indices into a split of ``count`` pairs.

    Index ``k`` is the middle of the k-th of ``n`` equal parts
    (``(2k + 1) * count // (2n)``), so the choice is deterministic, spread over the
    whole split and the same every epoch. ``n >= count`` gives every index.
    """
    if count < 0:
        raise DgfError(f"pair count must be >= 0; got {count}")
    if n < 1:
        raise DgfError(f"number of strip rows must be at least 1; got {n}")
    if n >= count:
        return list(range(count))
    return [(2 * k + 1) * count // (2 * n) for k in range(n)]


def scored_indices(count: int, limit: int | None) -> list[int]:
    """The pairs a split's scoring covers: every one (``limit`` None), else
    ``strip_indices(count, limit)``."""
    return list(range(count)) if limit is None else strip_indices(count, limit)


def strip_rows(count: int, limit: int | None, n: int) -> list[int]:
    """The ``n`` pairs a strip shows: evenly spread over the pairs scored with
    ``limit`` (:func:`scored_indices`), so scoring deblurs them anyway and the strip
    costs no extra generator pass. With ``limit`` None this is
    ``strip_indices(count, n)``."""
    scored = scored_indices(count, limit)
    return [scored[k] for k in strip_indices(len(scored), n)]


def open_split(h5_path: Path | str, split: str):
    """Open ``h5_path`` read-only and validate ``split``; return (file, SplitInfo)."""
    h5 = open_pairs_file(h5_path)
    try:
        info = check_split(h5, split, Path(h5_path))
    except BaseException:
        h5.close()
        raise
    return h5, info


def _index_batches(indices: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), batch_size):
        yield list(indices[start : start + batch_size])


def _read(ds, idx: list[int]) -> np.ndarray:
    # A contiguous slice is one fast read; h5py fancy indexing is ~300x slower than
    # single-index reads, so anything else is read one index at a time.
    if idx == list(range(idx[0], idx[0] + len(idx))):
        return ds[idx[0] : idx[0] + len(idx)]
    return np.stack([ds[i] for i in idx])


def _sources(h5, split: str, indices: Sequence[int]) -> list[str]:
    name = source_name(split)
    if name not in h5:
        return [""] * len(indices)
    ds = h5[name]
    out = []
    for i in indices:
        value = ds[i] if i < len(ds) else b""
        if isinstance(value, np.ndarray):
            value = value.item() if value.size == 1 else value.tobytes()
        out.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value))
    return out


# --- strips -----------------------------------------------------------------------
def make_strip(sharp: np.ndarray, blurred: np.ndarray, deblurred: np.ndarray) -> np.ndarray:
    """Tile pairs into one image: one row per pair, sharp | blurred | deblurred.

    Each input is (n, H, W, 3) uint8. Returns (n*H, 3*W, 3) uint8 with no gaps or
    labels: row ``i`` occupies pixel rows ``i*H:(i+1)*H``; sharp is columns ``0:W``,
    blurred ``W:2W``, deblurred ``2W:3W``, each equal to its source exactly.
    """
    arrays = [np.asarray(a) for a in (sharp, blurred, deblurred)]
    for name, arr in zip(("sharp", "blurred", "deblurred"), arrays):
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
            raise DgfError(f"{name} must be uint8 (n, H, W, 3); got {arr.dtype} {arr.shape}")
    if not arrays[0].shape == arrays[1].shape == arrays[2].shape:
        raise DgfError(
            "sharp, blurred and deblurred must have the same shape; got "
            + ", ".join(str(a.shape) for a in arrays)
        )
    n, h, w, _ = arrays[0].shape
    return np.concatenate(arrays, axis=2).reshape(n * h, 3 * w, 3)


def save_png(path: Path | str, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as PNG, atomically."""
    write_image(path, np.ascontiguousarray(image), format="PNG")


def read_pairs(
    h5_path: Path | str, split: str, indices: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Read the given pairs: returns (sharp, blurred), each (n, H, W, 3) uint8."""
    h5, info = open_split(h5_path, split)
    with h5:
        bad = [i for i in indices if not 0 <= i < info.count]
        if bad:
            raise DgfError(
                f"{h5_path}: indices {bad} out of range for split '{split}' "
                f"({info.count} pairs)"
            )
        idx = list(indices)
        return _read(h5[sharp_name(split)], idx), _read(h5[blurred_name(split)], idx)


# --- scoring a split ---------------------------------------------------------------
_BASELINE_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _baseline_key(h5_path: Path | str, split: str, indices: Sequence[int]) -> tuple:
    path = Path(h5_path).resolve()
    stat = path.stat()
    # The file's size and mtime are part of the key: a rebuilt file is re-scored.
    return (str(path), stat.st_size, stat.st_mtime_ns, split, tuple(indices))


def evaluate_split(
    generator: Any,
    h5_path: Path | str,
    split: str = DEFAULT_EVAL_SPLIT,
    *,
    batch_size: int = DEFAULT_EVAL_BATCH,
    limit: int | None = None,
    progress: bool = True,
    precision: str = DEFAULT_PRECISION,
    jit: str = DEFAULT_JIT,
    engine: str = "tensorflow",
    weights_change: bool = False,
    crop_border: int = 0,
    protocol: str = DEFAULT_PROTOCOL,
    y_channel: bool = DEFAULT_Y_CHANNEL,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score ``generator`` on one split of an HDF5 file.

    Reads pairs in batches of ``batch_size`` (contiguous slices, constant memory),
    deblurs each batch in inference mode and scores the uint8 result against the
    sharp image (definitions in the module docstring). ``limit`` scores
    ``strip_indices(count, limit)``: that many pairs evenly spread over the split,
    the same ones every call; ``None`` scores every pair. ``precision``, ``jit`` and
    ``engine`` as in :func:`deblur_array`; ``weights_change`` (the trainer, whose
    weights change between calls) lets ``engine="auto"`` count an engine's conversion
    spread over this call's batches. ``crop_border``, ``protocol`` and ``y_channel`` as in
    :func:`psnr` and :func:`ssim`; the summary and every row name them.

    Returns ``(summary, rows)``. ``summary`` has ``count``, ``psnr``, ``ssim``,
    ``blurred_psnr``, ``blurred_ssim`` (means over images, PSNR capped at 100 dB
    per image) and ``seconds_per_image`` (wall-clock time of the generator alone,
    per image, including its first-call tracing). ``rows`` holds one dict per image:
    ``index``, ``source`` (from ``{split}_source`` if the file has it, else ""),
    ``psnr`` (``inf`` when identical), ``ssim``, ``blurred_psnr``, ``blurred_ssim``.

    The blurred-input scores depend only on the data, so they are cached in-process
    per (file, size, mtime, split, pairs, crop border, protocol, channel): the
    trainer calls this every epoch.
    """
    summary, rows, _ = _evaluate(generator, h5_path, split, batch_size=batch_size,
                                 limit=limit, progress=progress, precision=precision, jit=jit,
                                 engine=engine, weights_change=weights_change,
                                 crop_border=crop_border, protocol=protocol,
                                 y_channel=y_channel)
    return summary, rows


def evaluate_with_strip(
    generator: Any,
    h5_path: Path | str,
    split: str,
    strip_path: Path | str,
    *,
    strips: int = DEFAULT_STRIPS,
    batch_size: int = DEFAULT_EVAL_BATCH,
    limit: int | None = None,
    progress: bool = True,
    precision: str = DEFAULT_PRECISION,
    jit: str = DEFAULT_JIT,
    engine: str = "tensorflow",
    weights_change: bool = False,
    crop_border: int = 0,
    protocol: str = DEFAULT_PROTOCOL,
    y_channel: bool = DEFAULT_Y_CHANNEL,
) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray]:
    """:func:`evaluate_split` and the sample strip of the same pass.

    The strip's rows are ``strip_rows(count, limit, strips)``, pairs the scoring
    deblurs anyway, so the strip costs no generator pass of its own. Writes it to
    ``strip_path`` (PNG, atomically) and returns ``(summary, rows, strip)``; the
    summary gains ``strip_indices``.
    """
    summary, rows, kept = _evaluate(generator, h5_path, split, batch_size=batch_size,
                                    limit=limit, progress=progress, precision=precision, jit=jit,
                                 engine=engine, weights_change=weights_change,
                                    strips=strips, crop_border=crop_border,
                                    protocol=protocol, y_channel=y_channel)
    order = sorted(kept)
    strip = make_strip(*(np.stack([kept[i][part] for i in order]) for part in range(3)))
    save_png(strip_path, strip)
    summary["strip_indices"] = order
    return summary, rows, strip


def _evaluate(
    generator: Any,
    h5_path: Path | str,
    split: str,
    *,
    batch_size: int,
    limit: int | None,
    progress: bool,
    precision: str,
    jit: str = DEFAULT_JIT,
    engine: str = "tensorflow",
    weights_change: bool = False,
    strips: int | None = None,
    crop_border: int = 0,
    protocol: str = DEFAULT_PROTOCOL,
    y_channel: bool = DEFAULT_Y_CHANNEL,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[int, tuple[np.ndarray, ...]]]:
    """Both evaluations: the report, and the (sharp, blurred, deblurred) images of
    ``strip_rows(count, limit, strips)`` by index (none when ``strips`` is None)."""
    if batch_size < 1:
        raise DgfError(f"batch size must be at least 1; got {batch_size}")
    if limit is not None and limit < 1:
        raise DgfError(f"limit must be at least 1 pair; got {limit}")
    crop_border = check_crop_border(crop_border)
    check_protocol(protocol)
    y_channel = bool(y_channel)
    h5, info = open_split(h5_path, split)
    with h5:
        check_window(crop_border, info.height, info.width, protocol)
        indices = scored_indices(info.count, limit)
        keep = set() if strips is None else set(strip_rows(info.count, limit, strips))
        key = (*_baseline_key(h5_path, split, indices), crop_border, protocol, y_channel)
        cached = _BASELINE_CACHE.get(key)
        sources = _sources(h5, split, indices)
        scores = _score_pairs(
            generator, h5, split, indices, baseline=cached is None, batch_size=batch_size,
            progress=progress, precision=precision, jit=jit, engine=engine,
            weights_change=weights_change, keep=keep, crop_border=crop_border,
            protocol=protocol, y_channel=y_channel,
        )
    if cached is None:
        cached = (np.asarray(scores.blurred_psnr), np.asarray(scores.blurred_ssim))
        _BASELINE_CACHE[key] = cached
    summary, rows = _split_report(indices, sources, scores, cached, crop_border, protocol,
                                  y_channel)
    return summary, rows, scores.kept


@dataclass
class _Scores:
    """Per-image scores of one pass over a split, in the order of its indices."""

    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    blurred_psnr: list[float] = field(default_factory=list)  # empty without baseline
    blurred_ssim: list[float] = field(default_factory=list)
    generator_seconds: float = 0.0
    # index -> (sharp, blurred, deblurred) uint8 images of the pairs asked to be kept
    kept: dict[int, tuple[np.ndarray, ...]] = field(default_factory=dict)


def _score_pairs(
    generator: Any,
    h5,
    split: str,
    indices: Sequence[int],
    *,
    baseline: bool,
    batch_size: int,
    progress: bool,
    precision: str,
    jit: str = DEFAULT_JIT,
    engine: str = "tensorflow",
    weights_change: bool = False,
    keep: set[int] = frozenset(),
    crop_border: int = 0,
    protocol: str = DEFAULT_PROTOCOL,
    y_channel: bool = DEFAULT_Y_CHANNEL,
) -> _Scores:
    """Deblur and score the pairs ``indices`` of ``split`` in the open file ``h5``,
    ``batch_size`` at a time; with ``baseline`` the blurred inputs are scored too.
    The images of the indices in ``keep`` are kept (``_Scores.kept``)."""
    sharp_ds, blurred_ds = h5[sharp_name(split)], h5[blurred_name(split)]
    scores = _Scores()
    # The trainer's weights change every pass: one engine conversion serves its batches.
    refresh_calls = -(-len(indices) // batch_size) if weights_change else None
    bar = tqdm(
        total=len(indices),
        desc=f"eval {split}",
        unit="img",
        disable=not progress,
        leave=False,
    )
    with bar:
        for idx in _index_batches(indices, batch_size):
            sharp = _read(sharp_ds, idx)
            blurred = _read(blurred_ds, idx)
            t0 = time.perf_counter()
            deblurred = deblur_array(generator, blurred, batch_size=len(idx),
                                     precision=precision, jit=jit, engine=engine,
                                     refresh_calls=refresh_calls)
            scores.generator_seconds += time.perf_counter() - t0
            for i, s, b, d in zip(idx, sharp, blurred, deblurred):
                if i in keep:
                    scores.kept[i] = (s.copy(), b.copy(), d.copy())
                how = (crop_border, protocol, y_channel)
                scores.psnr.append(psnr(s, d, *how))
                scores.ssim.append(ssim(s, d, *how))
                if baseline:
                    scores.blurred_psnr.append(psnr(s, b, *how))
                    scores.blurred_ssim.append(ssim(s, b, *how))
            bar.update(len(idx))
    return scores


def _split_report(
    indices: Sequence[int],
    sources: Sequence[str],
    scores: _Scores,
    baseline: tuple[np.ndarray, np.ndarray],
    crop_border: int = 0,
    protocol: str = DEFAULT_PROTOCOL,
    y_channel: bool = DEFAULT_Y_CHANNEL,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``(summary, rows)`` of :func:`evaluate_split` from its scores and the
    blurred-input ``baseline`` (PSNR and SSIM arrays, one value per index)."""
    b_psnr_arr, b_ssim_arr = baseline
    settings = {"crop_border": crop_border, "protocol": protocol, "y_channel": bool(y_channel)}
    rows = [
        {
            "index": int(i),
            "source": src,
            "psnr": float(gp),
            "ssim": float(gs),
            "blurred_psnr": float(bp),
            "blurred_ssim": float(bs),
            **settings,
        }
        for i, src, gp, gs, bp, bs in zip(
            indices, sources, scores.psnr, scores.ssim, b_psnr_arr, b_ssim_arr
        )
    ]
    summary = {
        "count": len(indices),
        "psnr": mean_psnr(scores.psnr),
        "ssim": float(np.mean(scores.ssim)),
        "blurred_psnr": mean_psnr(list(b_psnr_arr)),
        "blurred_ssim": float(np.mean(b_ssim_arr)),
        "seconds_per_image": scores.generator_seconds / len(indices),
        **settings,
    }
    return summary, rows
