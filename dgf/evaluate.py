"""``dgf-eval``'s work: one saved generator's report (:func:`evaluate_model`), a
whole run's snapshots scored incrementally (:func:`evaluate_run`), and the pictures
(matplotlib's metrics plot, the progress image). The metrics are
:mod:`dgf.metrics`'; the scoring of a split, shared with the trainer, is
:mod:`dgf.scoring`. The defaults of ``dgf-eval`` live in :mod:`dgf.options`.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from tqdm import tqdm

from dgf.config import RunDir
from dgf.errors import DgfError
from dgf.fileio import check_output, prepare_output, require_file, write_atomic, write_text_atomic
from dgf.metadata import read_metadata
from dgf.metrics import PSNR_CAP_DB, ScoreSettings, check_protocol
from dgf.options import DEFAULT_EVAL_BATCH, DEFAULT_PROTOCOL
from dgf.predictor import Predictor, resolve
from dgf.runtime import load_generator
from dgf.scoring import (
    ROW_KEYS, SETTING_KEYS, EvalOptions, evaluate_with_strip, open_split, save_png, strip_rows,
)
from dgf.spec import InferenceSpec

# A run evaluation's metrics.csv: the scores, and the settings they were taken at.
RUN_METRIC_KEYS = ("psnr", "ssim", "blurred_psnr", "blurred_ssim")
RUN_CSV_KEYS = ("epoch", *RUN_METRIC_KEYS, *SETTING_KEYS)
# progress.png puts this many pixels of label above each epoch's strip.
BAND_HEIGHT = 18
# progress.png shows at most this many epochs (evenly spaced, first and last kept),
# so a long run still gives a picture an image viewer can open.
MAX_PROGRESS_EPOCHS = 24


#: dgf-eval's inference settings: fp32 (so scores do not depend on the host), the
#: fastest engine measured here, ``DEFAULT_EVAL_BATCH`` images per generator call.
EVAL_SPEC = InferenceSpec(batch=DEFAULT_EVAL_BATCH)


# --- plots and pictures --------------------------------------------------------------
def plot_metrics(
    epochs: Sequence[int],
    psnr: Sequence[float],
    ssim: Sequence[float],
    blurred_psnr: float | Sequence[float],
    blurred_ssim: float | Sequence[float],
    path: Path | str,
    *,
    settings: ScoreSettings = ScoreSettings(),
) -> None:
    """Plot test PSNR and SSIM against epoch, blurred-input baselines dashed.

    Two stacked panels in an 800x600 px PNG (written atomically). A baseline given as
    one number, or as per-epoch numbers that are all equal (the usual case: it
    depends only on the data), is drawn as a horizontal dashed line; differing
    per-epoch baselines are drawn as a dashed line over the epochs. The scores'
    ``settings`` that differ from the defaults (a crop border, the basicsr protocol,
    the Y channel: :meth:`ScoreSettings.describe`) are named in the title and the
    axis labels.
    """
    epochs = [int(e) for e in epochs]
    if not (len(epochs) == len(psnr) == len(ssim)) or not epochs:
        raise DgfError(
            f"plot_metrics needs one PSNR and one SSIM per epoch; got {len(epochs)} "
            f"epochs, {len(psnr)} PSNR, {len(ssim)} SSIM values"
        )
    # Figure + Agg canvas directly: no pyplot global state, no display needed.
    fig = Figure(figsize=(8, 6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1, sharex=True)
    named = settings.describe()
    crop = f", {named}" if named else ""
    panels = (
        (axes[0], psnr, blurred_psnr, f"PSNR (dB){crop}"),
        (axes[1], ssim, blurred_ssim, f"SSIM{crop}"),
    )
    for ax, values, baseline, label in panels:
        ax.plot(epochs, [min(float(v), PSNR_CAP_DB) for v in values], "o-", label="deblurred")
        base = np.atleast_1d(np.asarray(baseline, dtype=np.float64))
        if base.size == 1 or np.allclose(base, base[0]):
            ax.axhline(float(base[0]), linestyle="--", color="gray", label="blurred input")
        else:
            if base.size != len(epochs):
                raise DgfError(f"{label} baseline needs 1 or {len(epochs)} values; got {base.size}")
            ax.plot(epochs, base, "--", color="gray", label="blurred input")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")
    axes[1].set_xlabel("epoch")
    axes[0].set_title(f"test metrics per epoch{crop}")
    if len(epochs) < 20:
        axes[1].set_xticks(epochs)
    fig.tight_layout()
    write_atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def _progress_image(strips: Sequence[np.ndarray], labels: Sequence[str]) -> np.ndarray:
    """Stack strips vertically, each under a BAND_HEIGHT-pixel white band with its label.

    Strip ``k`` starts at pixel row ``(k + 1) * BAND_HEIGHT + sum of the heights of
    strips before it``; narrower strips are padded on the right with white.
    """
    width = max(s.shape[1] for s in strips)
    blocks = []
    for strip, label in zip(strips, labels):
        band = Image.new("RGB", (width, BAND_HEIGHT), (255, 255, 255))
        ImageDraw.Draw(band).text((4, 3), label, fill=(0, 0, 0))
        blocks.append(np.asarray(band))
        if strip.shape[1] < width:
            pad = np.full((strip.shape[0], width - strip.shape[1], 3), 255, np.uint8)
            strip = np.concatenate([strip, pad], axis=1)
        blocks.append(strip)
    return np.concatenate(blocks, axis=0)


def _progress_epochs(epochs: Sequence[int]) -> list[int]:
    if len(epochs) <= MAX_PROGRESS_EPOCHS:
        return list(epochs)
    n = MAX_PROGRESS_EPOCHS
    # Evenly spaced, first and last always shown: the start and the end of learning.
    picks = {round(k * (len(epochs) - 1) / (n - 1)) for k in range(n)}
    return [epochs[i] for i in sorted(picks)]


# --- whole model / whole run -------------------------------------------------------
def _write_csv(path: Path, keys: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(keys), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    write_atomic(path, write)


def evaluate_model(
    model_path: Path | str,
    h5_path: Path | str,
    out_dir: Path | str | None = None,
    *,
    spec: InferenceSpec = EVAL_SPEC,
    options: EvalOptions = EvalOptions(),
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Score one saved generator on a split and write its report.

    Writes ``out_dir/summary.json`` (the :func:`evaluate_split` summary plus
    ``model``, ``h5``, ``split``, ``strip_indices``, the ``precision`` run, the
    ``engine`` asked and ``ran_on``, the paths that ran it), ``out_dir/per_image.csv``
    (one row per scored pair) and ``out_dir/strip.png`` (``options.strips`` rows of
    sharp | blurred | deblurred). ``out_dir`` defaults to ``<model stem>_eval/``
    next to the model. Existing outputs are an error unless ``overwrite``. ``spec``
    says how the generator runs (:class:`dgf.predictor.Predictor`), ``options`` what
    is scored and how (:class:`dgf.scoring.EvalOptions`); settings that cannot work
    (a missing engine, a crop that leaves less than the SSIM window of the split's
    images) are refused before the model loads. Returns the summary.
    """
    precision = resolve(spec)
    model_path, h5_path = Path(model_path), Path(h5_path)
    out = Path(out_dir) if out_dir is not None else model_path.parent / f"{model_path.stem}_eval"
    targets = [out / "summary.json", out / "per_image.csv", out / "strip.png"]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise DgfError(
            f"would overwrite {', '.join(existing)}; pass --overwrite or choose "
            f"another --out"
        )
    check_output(out, folder=True)
    h5, info = open_split(h5_path, options.split)
    h5.close()
    options.settings.check_size(info.height, info.width)
    predictor = Predictor(load_generator(model_path), spec, source=model_path)
    summary, rows, _ = evaluate_with_strip(predictor, h5_path, out / "strip.png", options,
                                           progress=progress)
    _write_csv(out / "per_image.csv", ROW_KEYS, rows)
    summary = {
        **summary,
        "model": str(model_path),
        "h5": str(h5_path),
        "split": options.split,
        "precision": precision,
        "engine": spec.engine,
        # The paths that ran it: "plain" and "xla" are TensorFlow without and with XLA.
        "ran_on": sorted(predictor.ran_on),
        # What the model file records of its training (None: it records nothing).
        "model_metadata": read_metadata(model_path),
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    summary["out_dir"] = str(out)
    return summary


def resolve_run_h5(run_dir: Path | str, h5_path: Path | str | None = None) -> Path:
    """The HDF5 file of a run: ``h5_path`` if given, else the ``h5`` of the run's
    config (:meth:`RunDir.read_config`).

    A relative path from the config is tried from the working directory, then from
    the run folder. DgfError, naming what was tried, when nothing exists.
    """
    if h5_path is not None:
        return require_file(h5_path, "HDF5 file")
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise DgfError(f"{run.config} not found, so the run's HDF5 file is unknown; "
                       f"pass --h5 PATH")
    try:
        value = run.read_config().h5
    except DgfError as exc:
        raise DgfError(f"{exc}; or pass --h5 PATH") from None
    tried = [Path(value)]
    if not tried[0].is_absolute():
        tried.append(run.path / value)
    for path in tried:
        if path.is_file():
            return path
    raise DgfError(
        f"the run's HDF5 file ({run.config}: h5 = {value!r}) was not found at "
        f"{' or '.join(str(p) for p in tried)}; pass --h5 PATH"
    )


_BOOLS = {"True": True, "False": False}  # how csv writes a bool


def _read_run_csv(path: Path) -> dict[int, dict[str, float]]:
    # A table with other columns (one written before metrics.csv named its crop
    # border, protocol and channel) is not trusted: {} scores every epoch again.
    if not path.is_file():
        return {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != RUN_CSV_KEYS:
                return {}
            return {
                int(row["epoch"]): {**{k: float(row[k]) for k in RUN_METRIC_KEYS},
                                    "crop_border": int(row["crop_border"]),
                                    "protocol": check_protocol(row["protocol"]),
                                    "y_channel": _BOOLS[row["y_channel"]]}
                for row in reader
            }
    except (ValueError, KeyError, TypeError, DgfError):
        # A damaged table is rebuilt rather than trusted.
        return {}


def evaluate_run(
    run_dir: Path | str,
    *,
    h5_path: Path | str | None = None,
    out_dir: Path | str | None = None,
    spec: InferenceSpec = EVAL_SPEC,
    options: EvalOptions = EvalOptions(),
    force: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Score every per-epoch snapshot of a training run and draw its progress.

    For each ``RUN/snapshots/generator_epoch_NNNN.keras`` in epoch order: writes
    ``out/strips/epoch_NNNN.png`` (the same ``options.strips`` test pairs every epoch,
    :func:`strip_rows`: the trainer's own samples show the same pairs when
    ``options.limit`` is the run's ``val_samples``) and scores the split. Then writes
    ``out/metrics.csv`` (epoch, psnr, ssim, blurred_psnr, blurred_ssim, crop_border,
    protocol, y_channel), ``out/metrics.png`` (:func:`plot_metrics`) and
    ``out/progress.png`` (each epoch's strip under a labelled band, see
    :func:`_progress_image`; at most ``MAX_PROGRESS_EPOCHS`` epochs, evenly spaced).
    ``out`` defaults to ``RUN/eval/``.

    Epochs already in ``out/metrics.csv`` are not re-scored, unless ``force``, the
    snapshot file changed, its strip is missing, or the HDF5 file, split, strips,
    limit, precision or score settings differ from the previous evaluation (kept in
    ``out/eval_state.json``). ``spec`` says how each snapshot runs (as in
    :func:`evaluate_model`). Returns one dict per epoch with the ``metrics.csv``
    columns.
    """
    precision = resolve(spec)
    run_dir = Path(run_dir)
    snapshots = _run_snapshots(run_dir)
    h5 = resolve_run_h5(run_dir, h5_path)
    handle, info = open_split(h5, options.split)
    handle.close()
    options.settings.check_size(info.height, info.width)
    out = check_output(Path(out_dir) if out_dir is not None else RunDir(run_dir).eval,
                       folder=True)
    indices = strip_rows(info.count, options.limit, options.strips)
    settings = _run_settings(h5, indices, options, precision)
    results, seen, todo = _previous_results(out, settings, snapshots, force)
    prepare_output(out, folder=True)
    for epoch in tqdm(todo, desc="epochs", unit="epoch", disable=not progress):
        path = snapshots[epoch]
        stamp = path.stat().st_mtime_ns
        results[epoch] = _score_snapshot(path, _strip_path(out, epoch), h5, spec, options,
                                         progress)
        seen[str(epoch)] = stamp
        # Saved after every epoch: an interrupted evaluation keeps what it finished.
        _save_run_tables(out, results, settings, seen)
    _save_run_tables(out, results, settings, seen)
    _draw_run(out, results, options.settings)
    return [{"epoch": e, **results[e]} for e in sorted(results)]


def _run_snapshots(run_dir: Path) -> dict[int, Path]:
    """The run's snapshots (:meth:`RunDir.find_snapshots`); DgfError when there are
    none."""
    if not run_dir.is_dir():
        raise DgfError(f"run folder not found: {run_dir}")
    run = RunDir(run_dir)
    snapshots = run.find_snapshots()
    if not snapshots:
        raise DgfError(
            f"no snapshots in {run.snapshots} (expected "
            f"generator_epoch_0001.keras, ...); train with snapshots on, or score a "
            f"single model with --model"
        )
    return snapshots


def _run_settings(h5: Path, indices: Sequence[int], options: EvalOptions,
                  precision: str) -> dict[str, Any]:
    """What a run's scores depend on besides the snapshots (``eval_state.json``)."""
    stat = h5.stat()
    settings = {
        "h5": str(h5.resolve()),
        "h5_size": stat.st_size,
        "h5_mtime_ns": stat.st_mtime_ns,
        "split": options.split,
        "strip_indices": list(indices),
        "limit": options.limit,
    }
    # Each of these only when not the default, so evaluations made before the option
    # existed still match and are not re-scored.
    if precision != "fp32":
        settings["precision"] = precision
    score = options.settings
    if score.crop_border:
        settings["crop_border"] = score.crop_border
    if score.protocol != DEFAULT_PROTOCOL:
        settings["protocol"] = score.protocol
    if score.y_channel:
        settings["y_channel"] = True
    return settings


def _strip_path(out: Path, epoch: int) -> Path:
    return out / "strips" / f"epoch_{epoch:04d}.png"


def _previous_results(
    out: Path, settings: dict[str, Any], snapshots: dict[int, Path], force: bool
) -> tuple[dict[int, dict[str, float]], dict[str, int], list[int]]:
    """What an earlier evaluation into ``out`` already scored and still holds.

    Returns ``(results, seen, todo)``: the metrics of each epoch kept (epoch ->
    ``metrics.csv`` row without the epoch), the snapshot modification times they
    were scored at (epoch as text -> ns), and the epochs to score again.
    """
    try:
        state = json.loads((out / "eval_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    if not isinstance(state, dict):  # damaged: everything is scored again
        state = {}
    same_settings = state.get("settings") == settings
    done = _read_run_csv(out / "metrics.csv") if same_settings and not force else {}
    seen = state.get("snapshots", {}) if same_settings else {}
    if not isinstance(seen, dict):
        seen = {}
    results: dict[int, dict[str, float]] = {}
    todo = []
    for epoch, path in snapshots.items():
        if (
            epoch in done
            and seen.get(str(epoch)) == path.stat().st_mtime_ns
            and _strip_path(out, epoch).is_file()
        ):
            results[epoch] = done[epoch]
        else:
            todo.append(epoch)
    seen = {k: v for k, v in seen.items() if str(k).isdigit() and int(k) in results}
    return results, seen, todo


def _score_snapshot(path: Path, strip: Path, h5: Path, spec: InferenceSpec,
                    options: EvalOptions, progress: bool) -> dict[str, float]:
    """Score one snapshot and draw its strip into ``strip`` (one generator pass);
    its ``metrics.csv`` row (without the epoch)."""
    try:
        generator = load_generator(path)
    except DgfError as exc:
        raise DgfError(
            f"{exc} Snapshot {path.name} is damaged: remove it to score the other "
            f"epochs, or start a new --run-dir"
        ) from None
    predictor = Predictor(generator, spec, source=path)
    summary, _, _ = evaluate_with_strip(predictor, h5, strip, options, progress=progress)
    return {**{k: float(summary[k]) for k in RUN_METRIC_KEYS},
            **{k: summary[k] for k in SETTING_KEYS}}


def _save_run_tables(
    out: Path,
    results: dict[int, dict[str, float]],
    settings: dict[str, Any],
    seen: dict[str, int],
) -> None:
    """Write ``metrics.csv`` and ``eval_state.json`` of a run's evaluation."""
    rows = [{"epoch": e, **results[e]} for e in sorted(results)]
    _write_csv(out / "metrics.csv", RUN_CSV_KEYS, rows)
    write_text_atomic(
        out / "eval_state.json",
        json.dumps({"settings": settings, "snapshots": seen}, indent=2) + "\n",
    )


def _draw_run(out: Path, results: dict[int, dict[str, float]],
              settings: ScoreSettings) -> None:
    """Write ``metrics.png`` and ``progress.png`` from every epoch's scores and strip,
    scored with ``settings`` (named in the plot and the labels when not the defaults,
    :meth:`ScoreSettings.describe`)."""
    epochs = sorted(results)
    plot_metrics(
        epochs,
        [results[e]["psnr"] for e in epochs],
        [results[e]["ssim"] for e in epochs],
        [results[e]["blurred_psnr"] for e in epochs],
        [results[e]["blurred_ssim"] for e in epochs],
        out / "metrics.png",
        settings=settings,
    )
    shown = _progress_epochs(epochs)
    strip_images = []
    for e in shown:
        try:
            with Image.open(_strip_path(out, e)) as img:
                strip_images.append(np.asarray(img.convert("RGB")))
        except (OSError, ValueError, SyntaxError) as exc:
            raise DgfError(
                f"{_strip_path(out, e)} is damaged ({exc}); remove it and run dgf-eval "
                f"again to draw it anew"
            ) from None
    named = settings.describe()
    crop = f" ({named})" if named else ""
    labels = [
        f"epoch {e}: PSNR {results[e]['psnr']:.2f} dB, SSIM {results[e]['ssim']:.4f}{crop}"
        f"   (sharp | blurred | deblurred)"
        for e in shown
    ]
    save_png(out / "progress.png", _progress_image(strip_images, labels))
