"""The work the training loop does around its steps, one owner per job.

:class:`dgf.loop.Controller` runs the steps and calls these where they belong:

- :class:`MetricsLog` owns ``metrics.jsonl`` and the TensorBoard event files: one
  record per logged step and per epoch, cut back to the checkpoint on resume.
- :class:`Checkpoints` owns ``RUN/checkpoints``: when to save, which checkpoint to
  resume from, and restoring it with errors that say what to do.
- :class:`BatchNormReestimation` sets BatchNorm's moving statistics of the scored
  generator from fresh batches at each epoch end.
- :class:`Scoring` scores the generator on the test split (PSNR/SSIM) every
  ``eval_every`` epochs and writes ``samples/epoch_NNNN.png`` (sharp | blurred |
  deblurred) from the same generator pass.
- :class:`ModelFiles` writes ``generator.keras``, ``generator_best.keras`` and the
  per-epoch snapshots.

Only the chief of a multi-worker run writes files; the others run the same actions
with writing turned off, so every worker does the same collective work.
"""
from __future__ import annotations

import json
import shutil
import sys
import weakref
from pathlib import Path
from typing import Any, Iterable, Mapping

import keras
import numpy as np
import tensorflow as tf

from dgf.blur import measure_training_blur
from dgf.config import GENERATOR_KEYS, RunDir, TrainConfig
from dgf.data import LoaderOptions, make_dataset
from dgf.errors import DgfError, first_line
from dgf.metrics import ScoreSettings, check_window
from dgf.options import DEFAULT_EVAL_BATCH
from dgf.predictor import Predictor, resolve
from dgf.scoring import EvalOptions, evaluate_split, evaluate_with_strip
from dgf.spec import InferenceSpec
from dgf.fileio import DiskFull, is_disk_full, output_error, write_atomic, write_text_atomic
from dgf.images import to_unit
from dgf.metadata import TRAINING_BLUR, read_metadata, source_commit, write_metadata
from dgf.schema import SplitInfo, check_split, open_pairs_file

# An epoch's scores, as metrics.jsonl's epoch records carry them: the crop border,
# protocol and channel (dgf.metrics.psnr/ssim) say what they measured.
SCORE_KEYS = ("psnr", "ssim", "blurred_psnr", "blurred_ssim", "count", "crop_border", "protocol", "y_channel")


# --------------------------------------------------------------------------- logs
class MetricsLog:
    """``RUN/metrics.jsonl`` (one JSON record per line) and ``RUN/tensorboard``."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.path = RunDir(run_dir).metrics_log
        self.enabled = enabled
        self._writer = (tf.summary.create_file_writer(str(RunDir(run_dir).tensorboard))
                        if enabled else None)

    def resume_at(self, step: int, epoch: int) -> None:
        """Drop records written after the checkpoint being resumed: those steps run
        again, and the log should read as one uninterrupted run. A last line cut
        short by a crash is dropped; anything else unreadable is damage, and said so."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line, record in self._records()
                if not _after(record, step, epoch)]
        write_text_atomic(self.path, "".join(f"{line}\n" for line in kept))

    def _records(self) -> list[tuple[str, dict]]:
        damaged = (f"{self.path} is damaged ({{}}); it is only a log: move it away to "
                   f"resume without the old records, or start a new --run-dir")
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise DgfError(damaged.format("not UTF-8 text")) from None
        records = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except ValueError:
                if number == len(lines):  # the line a crash cut short
                    continue
                raise DgfError(damaged.format(f"line {number} is not JSON")) from None
            if not isinstance(record, dict):
                raise DgfError(damaged.format(f"line {number} is not a record"))
            for key in ("step", "epoch"):
                if key in record and not isinstance(record[key], (int, float)):
                    raise DgfError(damaged.format(f"line {number} has {key}={record[key]!r}"))
            records.append((line, record))
        return records

    def append(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, sort_keys=True) + "\n")
                fh.flush()
        except OSError as exc:  # a line cut short is dropped on resume (_records)
            raise output_error(self.path, exc) from None

    def log_step(self, step: int, epoch: int, losses: Mapping[str, float],
                 learning_rates: tuple[float, float], images_per_sec: float) -> None:
        """One ``kind: step`` record, and the same values as TensorBoard scalars."""
        if not self.enabled:
            return
        g_lr, d_lr = learning_rates
        self.append({"kind": "step", "step": step, "epoch": epoch + 1, **losses,
                     "g_lr": g_lr, "d_lr": d_lr, "images_per_sec": images_per_sec})
        with self._writer.as_default(step=step):
            for key, value in losses.items():
                tf.summary.scalar(f"train/{key}", value)
            tf.summary.scalar("train/g_lr", g_lr)
            tf.summary.scalar("train/d_lr", d_lr)
            tf.summary.scalar("train/images_per_sec", images_per_sec)

    def log_scores(self, step: int, score: Mapping[str, Any], strip: np.ndarray | None) -> None:
        """The epoch's test scores and sample strip in TensorBoard; scores taken with
        a crop border N > 0 are named for it (``test/psnr_cropN``), then ``_basicsr``
        and ``_y`` for those settings, so curves of different settings never share a chart."""
        if not self.enabled:
            return
        crop, protocol = score.get("crop_border", 0), score.get("protocol", "skimage")
        suffix = (f"_crop{crop}" if crop else "") + ("" if protocol == "skimage" else f"_{protocol}") + ("_y" if score.get("y_channel") else "")
        with self._writer.as_default(step=step):
            for key in ("psnr", "ssim", "blurred_psnr"):
                tf.summary.scalar(f"test/{key}{suffix}", score[key])
            if strip is not None:
                tf.summary.image("samples/sharp_blurred_deblurred", np.asarray(strip)[None],
                                 max_outputs=1)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()


def _after(record: Mapping[str, Any], step: int, epoch: int) -> bool:
    """Whether a metrics record was written after (step, epoch)."""
    if record.get("kind") == "epoch":
        return record.get("epoch", 0) > epoch
    if record.get("kind") == "step":
        return record.get("step", 0) > step
    return False


# --------------------------------------------------------------------------- checkpoints
class Checkpoints:
    """Saving and restoring the trainer's ``tf.train.Checkpoint`` in ``directory``.

    A checkpoint is saved every ``save_every`` steps, at each epoch end and when
    the run stops early; ``keep`` of them are kept, numbered by global step.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: Path, cfg: TrainConfig) -> None:
        self.directory = Path(directory)
        self.save_every = cfg.save_every
        self._manager = tf.train.CheckpointManager(checkpoint, str(directory),
                                                   max_to_keep=cfg.keep)
        self._checkpoint = checkpoint

    def due(self, step: int) -> bool:
        return step % self.save_every == 0

    def save(self, step: int) -> None:
        """Save ``ckpt-STEP``; on a full disk, remove what this save left (its
        ``_temp`` folder and partial files) and raise DiskFull."""
        try:
            self._manager.save(checkpoint_number=step)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            remove_partial_checkpoints(self.directory, step)
            raise DiskFull(self.directory / f"ckpt-{step}") from None

    def restore(self, path: str) -> None:
        """Restore ``path`` into the trainer; DgfError when damaged or mismatched."""
        try:
            status = self._checkpoint.restore(path)
            status.assert_existing_objects_matched()
        except (tf.errors.OpError, IndexError) as exc:
            # Truncated or overwritten files: TensorFlow says "not an sstable", "file is
            # too short" (the .index) or "Read less bytes than requested" (the data).
            raise DgfError(
                f"checkpoint {path} is damaged ({first_line(exc)}). Remove its files "
                f"({Path(path).name}.*) to resume from the checkpoint before it, or start a "
                f"new --run-dir"
            ) from None
        except (AssertionError, ValueError) as exc:
            raise DgfError(
                f"checkpoint {path} does not match this model ({first_line(exc)}). It was "
                f"made by a different architecture or version; start a new run folder instead"
            ) from None


def remove_partial_checkpoints(ckpt_dir: Path, step: int | None = None) -> list[Path]:
    """Remove the temporary folders TensorFlow saves checkpoints through
    (``ckpt-N_temp``) and, for a save of ``step`` that failed, its ``ckpt-STEP.*``
    files (they are incomplete, or not yet listed in the index). Only the run's
    owner calls this (it holds the run lock, :mod:`dgf.runlock`)."""
    ckpt_dir = Path(ckpt_dir)
    doomed = sorted(ckpt_dir.glob("ckpt-*_temp")) + sorted(ckpt_dir.glob("checkpoint.tmp*"))
    if step is not None:
        doomed += sorted(ckpt_dir.glob(f"ckpt-{step}.*"))
    for path in doomed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return doomed


def checkpoint_to_resume(ckpt_dir: Path) -> str:
    """The newest checkpoint listed in ``ckpt_dir/checkpoint`` whose files exist.

    Removing a damaged checkpoint's files (``ckpt-N.*``) thus falls back to the one
    before it; ``--keep`` of them are kept for this. DgfError, naming the file and
    what to do, when the index is damaged or no listed checkpoint is complete.
    """
    index = ckpt_dir / "checkpoint"
    try:
        # TensorFlow logs a warning and returns None for an index it cannot parse.
        state = tf.train.get_checkpoint_state(str(ckpt_dir))
    except (ValueError, tf.errors.OpError):
        state = None
    if state is None:
        raise DgfError(
            f"{index} (the list of checkpoints) is damaged; start a new --run-dir "
            f"(the checkpoint files beside it cannot be resumed without it)"
        )
    listed = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    for path in reversed(listed):
        if Path(f"{path}.index").is_file() and list(Path(path).parent.glob(f"{Path(path).name}.data-*")):
            if path != listed[-1]:
                print(f"note: the newest checkpoint {listed[-1]} is missing; resuming "
                      f"from {path}", file=sys.stderr, flush=True)
            return str(path)
    raise DgfError(
        f"no checkpoint listed in {index} has its files ({', '.join(listed)}); start a "
        f"new --run-dir"
    )


# --------------------------------------------------------------------------- BatchNorm
def recalibrate_batchnorm(model: keras.Model, batches: Iterable[np.ndarray]) -> int:
    """Set every BatchNormalization layer's moving mean and variance to the average
    of its batch statistics over ``batches`` (the "precise BN" estimate).

    During GAN training the weights move faster than BatchNorm's running averages
    (momentum 0.99) can follow, so inference-mode outputs drift (a colour cast)
    from what training-mode outputs are. Averaging fresh batch statistics of the
    current weights removes that drift. ``batches`` yields (B, H, W, 3) float32 in
    [-1, 1] of any size. Only the moving statistics change. Returns the batches used.
    """
    layers = [layer for layer in _all_layers(model)
              if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        return 0
    saved = [(layer.momentum, layer.moving_mean.numpy(), layer.moving_variance.numpy())
             for layer in layers]
    sums = [[0.0, 0.0] for _ in layers]
    count = 0
    try:
        # Momentum 0: after each call the moving statistics hold exactly that batch's
        # statistics, which are summed here. One compiled graph for any image size
        # keeps memory at inference-like levels.
        for layer in layers:
            layer.momentum = 0.0
        forward = _training_forward(model)
        for batch in batches:
            forward(tf.convert_to_tensor(batch, tf.float32))
            count += 1
            for acc, layer in zip(sums, layers):
                acc[0] = acc[0] + layer.moving_mean.numpy()
                acc[1] = acc[1] + layer.moving_variance.numpy()
    finally:
        for (momentum, mean, var), acc, layer in zip(saved, sums, layers):
            layer.momentum = momentum
            layer.moving_mean.assign(acc[0] / count if count else mean)
            layer.moving_variance.assign(acc[1] / count if count else var)
    return count


# One compiled training-mode forward per model, traced once (with every BatchNorm's
# momentum at 0, as it always is while the function runs) and reused at every
# epoch end instead of retraced.
_TRAINING_FORWARD: "weakref.WeakKeyDictionary[keras.Model, Any]" = weakref.WeakKeyDictionary()


def _training_forward(model: keras.Model):
    forward = _TRAINING_FORWARD.get(model)
    if forward is None:
        ref = weakref.ref(model)
        forward = tf.function(lambda x: ref()(x, training=True), autograph=False,
                              input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        _TRAINING_FORWARD[model] = forward
    return forward


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


class BatchNormReestimation:
    """Re-estimates the scored generator's BatchNorm statistics at each epoch end,
    from ``cfg.bn_recalibrate`` training batches (none when 0 or no BatchNorm)."""

    # Images up to this many pixels are re-estimated whole, as the generator sees
    # them when scoring and deblurring: statistics from small crops differ (zero
    # padding touches a larger share of a crop), measured 19.7 dB with 96x96 crops
    # against 21.7 dB with whole 256x256 images on pairs-small.
    MAX_PIXELS = 1024 * 1024

    def __init__(self, cfg: TrainConfig, train_info: SplitInfo) -> None:
        self.cfg = cfg
        self.train_info = train_info

    def __call__(self, generator: keras.Model, epoch: int) -> None:
        cfg, info = self.cfg, self.train_info
        if cfg.bn_recalibrate <= 0 or not cfg.batchnorm:
            return  # nothing to re-estimate: no need to open the split
        whole = info.height * info.width <= self.MAX_PIXELS
        crop = None if whole else min(info.height, info.width, 512)
        # Its own seed, so the training stream is untouched.
        options = LoaderOptions(crop=crop, seed=cfg.seed + 7919, augment=cfg.augment,
                                drop_remainder=False)
        dataset = make_dataset(cfg.h5, "train", cfg.batch_size, options, epoch=epoch)
        batches = (to_unit(blurred.numpy()) for blurred, _ in dataset.take(cfg.bn_recalibrate))
        recalibrate_batchnorm(generator, batches)


# --------------------------------------------------------------------------- epoch end
class Scoring:
    """PSNR/SSIM of the generator on ``cfg.val_samples`` test pairs (all if None)
    and, where ``strips`` (the chief), ``RUN/samples/epoch_NNNN.png``: the same
    ``cfg.strip_pairs`` test pairs each epoch, drawn from the scoring pass (see
    :func:`dgf.scoring.strip_rows`), so the strip costs no generator pass."""

    def __init__(self, cfg: TrainConfig, *, strips: bool = True) -> None:
        self.cfg = cfg
        self.run = RunDir(cfg.run_dir) if strips else None
        # How the scores are taken (dgf.metrics.psnr/ssim), named in every record.
        self.options = EvalOptions(
            limit=cfg.val_samples, strips=cfg.strip_pairs,
            settings=ScoreSettings(cfg.crop_border, cfg.metric_protocol, cfg.y_channel))
        _check_window(cfg)  # the SSIM window must fit the crop: refused before training
        # How the generator runs: fp32, the config's engine and XLA setting. A named
        # engine that is not installed is refused before training too.
        self.spec = InferenceSpec(precision="fp32", jit=cfg.eval_jit, engine=cfg.eval_engine,
                                  batch=DEFAULT_EVAL_BATCH)
        resolve(self.spec)
        self.predictor: Predictor | None = None

    def due(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) is scored: every ``eval_every``-th, and the last."""
        return (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs

    def __call__(self, generator: keras.Model, epoch: int
                 ) -> tuple[dict[str, Any], np.ndarray | None]:
        """The epoch's scores (``SCORE_KEYS``) and its strip (None without strips)."""
        cfg, strip = self.cfg, None
        if self.predictor is None or self.predictor.generator is not generator:
            # One predictor for the run: its folded copy, compiled graphs and choice of
            # engine serve every epoch, refilled with that epoch's weights.
            self.predictor = Predictor(generator, self.spec)
        if self.run is None:
            summary, _ = evaluate_split(self.predictor, cfg.h5, self.options, progress=False,
                                        weights_change=True)
        else:
            summary, _, strip = evaluate_with_strip(
                self.predictor, cfg.h5, self.run.sample(epoch + 1), self.options,
                progress=False, weights_change=True)
        named = self.options.settings.describe()
        crop = f" ({named})" if named else ""
        print(f"epoch {epoch + 1}: test PSNR {summary['psnr']:.2f} dB (blurred "
              f"{summary['blurred_psnr']:.2f}), SSIM {summary['ssim']:.4f} (blurred "
              f"{summary['blurred_ssim']:.4f}) on {summary['count']} pairs{crop}", flush=True)
        return {key: summary[key] for key in SCORE_KEYS}, strip


class ModelFiles:
    """The generator files users deblur with: ``generator.keras`` (latest),
    ``generator_best.keras`` (best test PSNR so far, tracked in ``best_psnr``, a
    checkpointed variable) and ``snapshots/generator_epoch_NNNN.keras``.

    Each file carries its training record (:mod:`dgf.metadata`): layout, data,
    crop, epoch, this epoch's score and the best one, with their crop border, and the
    blur of the training images (:func:`dgf.blur.measure_training_blur` on
    ``TRAINING_BLUR_IMAGES`` of them, measured once, at the first save), which
    ``dgf-deblur --scale auto`` maps each photo's streaks onto."""

    #: Evenly spaced blurred train images whose streaks the record summarises.
    TRAINING_BLUR_IMAGES = 256

    def __init__(self, cfg: TrainConfig, best_psnr: tf.Variable, train_info: SplitInfo,
                 test_info: SplitInfo) -> None:
        self.cfg = cfg
        self.run = RunDir(cfg.run_dir)
        self.snapshots = cfg.snapshots
        self.best_psnr = best_psnr
        self.train_info, self.test_info = train_info, test_info
        self._commit = source_commit()
        self._training_blur: dict[str, Any] | None = None

    def _blur(self) -> dict[str, Any] | None:
        # Measured once per process; a file without edges enough records none.
        if self._training_blur is None:
            try:
                self._training_blur = measure_training_blur(
                    self.cfg.h5, limit=self.TRAINING_BLUR_IMAGES)
            except DgfError as exc:
                print(f"note: the training blur of {self.cfg.h5} was not recorded "
                      f"({first_line(exc)}); dgf-deblur --scale auto measures it from the "
                      f"file when it is there", file=sys.stderr, flush=True)
                self._training_blur = {}
        return self._training_blur or None

    def _best_so_far(self) -> dict[str, Any] | None:
        # The best file's own record: it survives a resume with the file.
        return (read_metadata(self.run.best) or {}).get("best")

    def _record(self, epoch: int, score: dict[str, Any] | None,
                best: dict[str, Any] | None) -> dict[str, Any]:
        cfg = self.cfg
        blur = self._blur()
        return {
            "layout": {key: getattr(cfg, key) for key in GENERATOR_KEYS},
            "data": {"h5": str(cfg.h5), "image_height": self.train_info.height,
                     "image_width": self.train_info.width,
                     "train_pairs": self.train_info.count, "test_pairs": self.test_info.count},
            "crop": cfg.crop,
            "epoch": epoch + 1,
            "score": score,
            "best": best,
            "commit": self._commit,
            **({TRAINING_BLUR: blur} if blur else {}),
        }

    def __call__(self, generator: keras.Model, epoch: int,
                 score: Mapping[str, Any] | None) -> bool:
        """Write the files; True when this epoch is the best so far.

        The model is serialized once, to ``generator.keras``; the snapshot and the
        best are byte copies of it (each written atomically). ``score`` (the
        epoch's ``SCORE_KEYS``) is None on an epoch that was not scored
        (``eval_every``): it cannot become the best.
        """
        scored = None if score is None else {"epoch": epoch + 1, **dict(score)}
        is_best = scored is not None and scored["psnr"] > float(self.best_psnr.numpy())
        best = scored if is_best else self._best_so_far()
        record = self._record(epoch, scored, best)
        latest = self.run.generator
        save_model(generator, latest, record)
        if self.snapshots:
            copy_file(latest, self.run.snapshot(epoch + 1))
        if is_best:
            self.best_psnr.assign(scored["psnr"])
            copy_file(latest, self.run.best)
        return is_best


def _check_window(cfg: TrainConfig) -> None:
    """DgfError before training when ``cfg.crop_border`` leaves less than the SSIM
    window of ``cfg.metric_protocol`` of the test images."""
    with open_pairs_file(cfg.h5) as handle:
        info = check_split(handle, "test", Path(cfg.h5))
    try:
        check_window(cfg.crop_border, info.height, info.width, cfg.metric_protocol)
    except DgfError as exc:
        raise DgfError(f"--crop-border: {exc} (the test images of {cfg.h5}, metric "
                       f"protocol {cfg.metric_protocol})") from None


def copy_file(source: Path, target: Path) -> None:
    """A byte copy of ``source`` at ``target``, atomically."""
    write_atomic(target, lambda tmp: shutil.copyfile(source, tmp))


def save_model(model: keras.Model, path: Path, record: dict[str, Any] | None = None) -> None:
    """``model.save(path)``, atomically, with ``record`` as its training metadata
    (:func:`dgf.metadata.write_metadata`) when given."""
    def write(tmp: Path) -> None:
        model.save(tmp)
        if record is not None:
            write_metadata(tmp, record)

    write_atomic(path, write)
