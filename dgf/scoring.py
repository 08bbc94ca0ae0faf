"""Scoring a generator on a split of an HDF5 pairs file, as the trainer does every
epoch and dgf-eval does per model: choosing and reading the pairs, running them
through a :class:`dgf.predictor.Predictor` (its folded copy with the generator's
current weights, so the trainer's per-epoch scoring sees each epoch's), the sample
strip drawn from the same pass, and the per-image and summary scores
(:mod:`dgf.metrics`). No matplotlib: the plots live in :mod:`dgf.evaluate`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from dgf.checks import is_int
from dgf.errors import DgfError
from dgf.images import write_image
from dgf.metrics import ScoreSettings, mean_psnr
from dgf.options import DEFAULT_EVAL_SPLIT, DEFAULT_STRIPS
from dgf.predictor import Predictor
from dgf.schema import blurred_name, check_split, open_pairs_file, sharp_name, source_name

# What every stored score names: the crop border, protocol and channel it was taken at.
SETTING_KEYS = ("crop_border", "protocol", "y_channel")
SUMMARY_KEYS = ("count", "psnr", "ssim", "blurred_psnr", "blurred_ssim", "seconds_per_image",
                *SETTING_KEYS)
ROW_KEYS = ("index", "source", "psnr", "ssim", "blurred_psnr", "blurred_ssim", *SETTING_KEYS)


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


@dataclass(frozen=True)
class EvalOptions:
    """What a split's scoring covers, validated once: the ``split``, ``limit`` pairs
    evenly spread over it (None: every pair; :func:`scored_indices`), the ``strips``
    rows of the sample strip (:func:`strip_rows`) and how PSNR/SSIM are taken
    (:class:`dgf.metrics.ScoreSettings`)."""

    split: str = DEFAULT_EVAL_SPLIT
    limit: int | None = None
    strips: int = DEFAULT_STRIPS
    settings: ScoreSettings = ScoreSettings()

    def __post_init__(self) -> None:
        if self.limit is not None and (not is_int(self.limit) or self.limit < 1):
            raise DgfError(f"limit must be at least 1 pair; got {self.limit}")
        if not is_int(self.strips) or self.strips < 1:
            raise DgfError(f"number of strip rows must be at least 1; got {self.strips}")


def evaluate_split(
    predictor: Predictor,
    h5_path: Path | str,
    options: EvalOptions = EvalOptions(),
    *,
    progress: bool = True,
    weights_change: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score ``predictor`` on one split of an HDF5 file.

    Reads pairs in batches of the predictor's ``spec.batch`` (contiguous slices,
    constant memory), deblurs each batch (:meth:`Predictor.deblur_batch`) and scores
    the uint8 result against the sharp image as ``options.settings`` says (the summary
    and every row name them). ``options.limit`` scores ``strip_indices(count, limit)``:
    that many pairs evenly spread over the split, the same ones every call.
    ``weights_change`` (the trainer, whose weights change between calls) lets
    ``--engine auto`` count an engine's conversion spread over this call's batches.

    Returns ``(summary, rows)``. ``summary`` has ``count``, ``psnr``, ``ssim``,
    ``blurred_psnr``, ``blurred_ssim`` (means over images, PSNR capped at 100 dB
    per image) and ``seconds_per_image`` (wall-clock time of the generator alone,
    per image, including its first-call tracing). ``rows`` holds one dict per image:
    ``index``, ``source`` (from ``{split}_source`` if the file has it, else ""),
    ``psnr`` (``inf`` when identical), ``ssim``, ``blurred_psnr``, ``blurred_ssim``.

    The blurred-input scores depend only on the data, so they are cached in-process
    per (file, size, mtime, split, pairs, settings): the trainer calls this every epoch.
    """
    summary, rows, _ = _evaluate(predictor, h5_path, options, progress=progress,
                                 weights_change=weights_change)
    return summary, rows


def evaluate_with_strip(
    predictor: Predictor,
    h5_path: Path | str,
    strip_path: Path | str,
    options: EvalOptions = EvalOptions(),
    *,
    progress: bool = True,
    weights_change: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray]:
    """:func:`evaluate_split` and the sample strip of the same pass.

    The strip's rows are ``strip_rows(count, limit, strips)``, pairs the scoring
    deblurs anyway, so the strip costs no generator pass of its own. Writes it to
    ``strip_path`` (PNG, atomically) and returns ``(summary, rows, strip)``; the
    summary gains ``strip_indices``.
    """
    summary, rows, kept = _evaluate(predictor, h5_path, options, progress=progress,
                                    weights_change=weights_change, strips=True)
    order = sorted(kept)
    strip = make_strip(*(np.stack([kept[i][part] for i in order]) for part in range(3)))
    save_png(strip_path, strip)
    summary["strip_indices"] = order
    return summary, rows, strip


def _evaluate(
    predictor: Predictor,
    h5_path: Path | str,
    options: EvalOptions,
    *,
    progress: bool,
    weights_change: bool = False,
    strips: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[int, tuple[np.ndarray, ...]]]:
    """Both evaluations: the report, and the (sharp, blurred, deblurred) images of
    ``strip_rows(count, limit, strips)`` by index (none without ``strips``)."""
    split, limit, settings = options.split, options.limit, options.settings
    h5, info = open_split(h5_path, split)
    with h5:
        settings.check_size(info.height, info.width)
        indices = scored_indices(info.count, limit)
        keep = set(strip_rows(info.count, limit, options.strips)) if strips else set()
        key = (*_baseline_key(h5_path, split, indices), settings)
        cached = _BASELINE_CACHE.get(key)
        sources = _sources(h5, split, indices)
        batch = predictor.spec.batch
        scores = _score_pairs(
            predictor, h5, indices, options, baseline=cached is None, progress=progress,
            keep=keep, calls_per_weights=-(-len(indices) // batch) if weights_change else None,
        )
    if cached is None:
        cached = (np.asarray(scores.blurred_psnr), np.asarray(scores.blurred_ssim))
        _BASELINE_CACHE[key] = cached
    summary, rows = _split_report(indices, sources, scores, cached, settings)
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
    predictor: Predictor,
    h5,
    indices: Sequence[int],
    options: EvalOptions,
    *,
    baseline: bool,
    progress: bool,
    keep: set[int] = frozenset(),
    calls_per_weights: int | None = None,
) -> _Scores:
    """Deblur and score the pairs ``indices`` of ``options.split`` in the open file
    ``h5``, ``predictor.spec.batch`` at a time; with ``baseline`` the blurred inputs are
    scored too. The images of the indices in ``keep`` are kept (``_Scores.kept``)."""
    split, settings = options.split, options.settings
    sharp_ds, blurred_ds = h5[sharp_name(split)], h5[blurred_name(split)]
    scores = _Scores()
    bar = tqdm(total=len(indices), desc=f"eval {split}", unit="img", disable=not progress,
               leave=False)
    with bar:
        for idx in _index_batches(indices, predictor.spec.batch):
            sharp = _read(sharp_ds, idx)
            blurred = _read(blurred_ds, idx)
            t0 = time.perf_counter()
            deblurred = predictor.deblur_batch(blurred, calls_per_weights)
            scores.generator_seconds += time.perf_counter() - t0
            for i, s, b, d in zip(idx, sharp, blurred, deblurred):
                if i in keep:
                    scores.kept[i] = (s.copy(), b.copy(), d.copy())
                scores.psnr.append(settings.psnr(s, d))
                scores.ssim.append(settings.ssim(s, d))
                if baseline:
                    scores.blurred_psnr.append(settings.psnr(s, b))
                    scores.blurred_ssim.append(settings.ssim(s, b))
            bar.update(len(idx))
    return scores


def _split_report(
    indices: Sequence[int],
    sources: Sequence[str],
    scores: _Scores,
    baseline: tuple[np.ndarray, np.ndarray],
    settings: ScoreSettings,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``(summary, rows)`` of :func:`evaluate_split` from its scores and the
    blurred-input ``baseline`` (PSNR and SSIM arrays, one value per index)."""
    b_psnr_arr, b_ssim_arr = baseline
    named = settings.as_dict()
    rows = [
        {
            "index": int(i),
            "source": src,
            "psnr": float(gp),
            "ssim": float(gs),
            "blurred_psnr": float(bp),
            "blurred_ssim": float(bs),
            **named,
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
        **named,
    }
    return summary, rows
