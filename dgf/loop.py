"""The training loop: :class:`Controller` runs the epochs of a run, the steps of
:class:`dgf.train.GANTrainer` and then the epoch-end actions of :mod:`dgf.actions`
(each owns one job: logs, checkpoints, BatchNorm re-estimation, scoring, strips,
model files), in that order. A signal stops it after the current step with a
checkpoint saved (:class:`TrainingInterrupted`); a loss that is not finite stops it
keeping the last good checkpoint (:class:`NonFiniteLoss`).
"""
from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import tensorflow as tf
from tqdm.auto import tqdm

from dgf.actions import BatchNormReestimation, Checkpoints, MetricsLog, ModelFiles, Scoring
from dgf.batching import BatchPlan
from dgf.config import RunDir, TrainConfig
from dgf.data import LoaderOptions, make_dataset
from dgf.errors import DgfError
from dgf.losses import GENERATOR_TERMS, TOTAL_LOSS
from dgf.schema import SplitInfo
from dgf.train import GANTrainer

# The generator's terms (the loss table's rows, in its order) come first, so that a NaN
# is reported by the term that made it, then D's loss and the generator's sum.
CHECKED_KEYS = (*(term.name for term in GENERATOR_TERMS), "d_loss", TOTAL_LOSS)


class NonFiniteLoss(DgfError):
    """A loss became NaN or infinite; the run stopped without saving over good state."""


class TrainingInterrupted(DgfError):
    """Ctrl-C or SIGTERM: a checkpoint was saved and the run can be resumed."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)  # per-epoch records



class _StopFlag:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum
        print("\nstopping after this step and saving a checkpoint (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _check_finite(step: int, logs: Mapping[str, float]) -> None:
    for key in CHECKED_KEYS:
        if not math.isfinite(logs[key]):
            values = ", ".join(f"{k}={logs[k]:.4g}" for k in CHECKED_KEYS)
            raise NonFiniteLoss(
                f"loss term {key} became {logs[key]} at step {step} ({values}). Training "
                f"stopped; the last good checkpoint is kept. Try a lower learning rate "
                f"(--g-lr/--d-lr), --precision fp32, or smaller loss weights."
            )


class _Progress:
    """The epoch's progress bar, and the image rate over the last steps, timed where
    each step is launched (the launch waits for the device, so this tracks the real
    step rate)."""

    def __init__(self, epoch: int, cfg: TrainConfig, steps: int, done: int, show: bool) -> None:
        self.batch_size = cfg.batch_size
        self.bar = tqdm(total=steps, initial=done, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                        unit="step", disable=not show, dynamic_ncols=True)
        self.launched: deque[float] = deque(maxlen=20)

    def launched_step(self) -> None:
        self.launched.append(time.perf_counter())

    def rate(self) -> float:
        span = self.launched[-1] - self.launched[0] if len(self.launched) > 1 else 0.0
        return (len(self.launched) - 1) * self.batch_size / span if span > 0 else 0.0

    def finished_step(self, values: Mapping[str, float], rate: float) -> None:
        """The bar's numbers: ``g`` (the generator's sum), the loss table's rows that
        name a label, ``d`` (D's loss) and ``img_s`` (tqdm shows them sorted)."""
        terms = {term.bar[0]: format(values[term.name], term.bar[1])
                 for term in GENERATOR_TERMS if term.bar is not None}
        self.bar.set_postfix(g=f"{values[TOTAL_LOSS]:.3g}", **terms,
                             d=f"{values['d_loss']:.3g}", img_s=f"{rate:.1f}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


@dataclass
class RunData:
    """What the loop needs to know about the HDF5 file it trains on, and the batch."""

    train: SplitInfo
    test: SplitInfo
    steps: int  # steps per epoch
    batch: BatchPlan  # how the global batch (cfg.batch_size) splits over the replicas


class Controller:
    """Runs the epochs: the steps, then each epoch-end action in order.

    Per step: the trainer's step, the NaN guard, the progress bar, a metrics record
    every ``log_every`` steps and a checkpoint every ``save_every``. Per epoch end:
    BatchNorm re-estimation, scoring, the sample strip, the model files, the epoch
    record, and the checkpoint that moves the run on to the next epoch. Only the
    chief writes files (see :mod:`dgf.actions`).
    """

    def __init__(self, cfg: TrainConfig, trainer: GANTrainer, strategy, data: RunData,
                 checkpoints: Checkpoints, *, chief: bool = True, progress: bool = True) -> None:
        self.cfg, self.trainer, self.strategy, self.data = cfg, trainer, strategy, data
        self.run_dir = Path(cfg.run_dir)
        self.chief, self.show_progress = chief, progress and chief
        self.checkpoints = checkpoints
        self.log = MetricsLog(self.run_dir, enabled=chief)
        self.reestimate = BatchNormReestimation(cfg, data.train)
        self.score = Scoring(cfg, strips=chief)
        self.model_files = ModelFiles(cfg, trainer.best_psnr, data.train, data.test)
        self.history: list[dict[str, Any]] = []
        self.steps_this_call = 0
        # A resumed run's log is checked (and a record cut short by a crash dropped)
        # now, so a damaged one stops the run before anything else is written.
        epoch = int(trainer.epoch_var.numpy())
        if epoch or self.global_step:
            self.log.resume_at(self.global_step, epoch)

    @property
    def global_step(self) -> int:
        return int(self.trainer.step_var.numpy())

    def run(self, max_steps: int | None = None) -> TrainResult:
        """Train to ``cfg.epochs``, or stop early after ``max_steps`` steps or a signal."""
        cfg, trainer = self.cfg, self.trainer
        start_epoch = int(trainer.epoch_var.numpy())
        if start_epoch or self.global_step:
            print(f"resuming {self.run_dir} at epoch {start_epoch + 1}, step "
                  f"{self.global_step}: {self.data.batch.describe()}, {self.data.steps} "
                  f"steps per epoch", flush=True)
        else:
            print(f"training into {self.run_dir}: {self.data.batch.describe()}, "
                  f"{self.data.steps} steps per epoch", flush=True)
        with _StopFlag() as stop:
            for epoch in range(start_epoch, cfg.epochs):
                started = time.perf_counter()
                self._run_steps(epoch, stop, max_steps)
                if int(trainer.batch_var.numpy()) < self.data.steps:  # stopped inside it
                    return self._stop_early(epoch, stop)
                ended = time.perf_counter()
                record = self._end_epoch(epoch)
                # Where the epoch's time went: its steps, and the work at its end.
                record["train_seconds"] = round(ended - started, 2)
                record["end_seconds"] = round(time.perf_counter() - ended, 2)
                self.history.append(record)
                self.log.append(record)
                trainer.epoch_var.assign(epoch + 1)
                trainer.batch_var.assign(0)
                self.checkpoints.save(self.global_step)
        self.log.close()
        print(f"done: {self.global_step} steps; generator in "
              f"{RunDir(self.run_dir).generator}", flush=True)
        return TrainResult(self.run_dir, self.global_step, cfg.epochs, self.history)

    def _run_steps(self, epoch: int, stop: _StopFlag, max_steps: int | None) -> None:
        """The rest of ``epoch``'s steps, until it ends, a signal, or ``max_steps``.

        Each step's losses are read back while the next step runs (one step late),
        so the host never waits for the device just to print a number.
        """
        cfg, trainer = self.cfg, self.trainer
        done = int(trainer.batch_var.numpy())
        batches = iter(_epoch_batches(cfg, self.strategy, epoch, done))
        progress = _Progress(epoch, cfg, self.data.steps, done, self.show_progress)
        pending = None
        try:
            for _ in range(done, self.data.steps):
                if stop.signum is not None or (max_steps is not None
                                               and self.steps_this_call >= max_steps):
                    break
                logs = trainer.step(next(batches), warmup=epoch < cfg.warmup_epochs)
                progress.launched_step()
                step_no = self.global_step
                self.steps_this_call += 1
                if pending is not None:
                    self._settle(epoch, progress, *pending)
                pending = (step_no, logs)
                if self.checkpoints.due(step_no):
                    self._settle(epoch, progress, *pending)
                    pending = None
                    self.checkpoints.save(step_no)
            if pending is not None:
                self._settle(epoch, progress, *pending)
        finally:  # the bar ends before any error line is printed
            progress.close()

    def _settle(self, epoch: int, progress: _Progress, step_no: int, logs) -> None:
        """A finished step's losses: the NaN guard, the bar, the metrics record."""
        values = {k: float(v) for k, v in logs.items()}
        _check_finite(step_no, values)
        rate = progress.rate()
        progress.finished_step(values, rate)
        if step_no % self.cfg.log_every == 0 or step_no == 1:
            self.log.log_step(step_no, epoch, values, self.trainer.learning_rates(), rate)

    def _stop_early(self, epoch: int, stop: _StopFlag) -> TrainResult:
        self.checkpoints.save(self.global_step)
        self.log.close()
        if stop.signum is not None:
            raise TrainingInterrupted(
                f"stopped at step {self.global_step}; checkpoint saved in "
                f"{self.checkpoints.directory}. Resume with: dgf-train --run-dir {self.run_dir}"
            )
        return TrainResult(self.run_dir, self.global_step, epoch, self.history)

    def _end_epoch(self, epoch: int) -> dict[str, Any]:
        """The epoch-end actions, on the averaged generator (what is scored and saved).

        Scoring (with the strip drawn from its pass) runs on the epochs
        ``Scoring.due`` names; the model files are written every epoch. The record's
        ``end_parts`` says how many seconds each action took.
        """
        generator = self.trainer.averaged
        parts: dict[str, float] = {}
        record: dict[str, Any] = {"kind": "epoch", "epoch": epoch + 1, "step": self.global_step}
        score = strip = None
        with _timed(parts, "reestimate"):  # every epoch: the snapshots are saved with it
            self.reestimate(generator, epoch)
        if self.score.due(epoch):
            with _timed(parts, "score"):
                score, strip = self.score(generator, epoch)
            record.update(score)
        if self.chief:
            if score is not None:
                with _timed(parts, "tensorboard"):
                    self.log.log_scores(self.global_step, score, strip)
            with _timed(parts, "model_files"):
                if self.model_files(generator, epoch, score):
                    record["best"] = True
        record["end_parts"] = parts
        return record


@contextmanager
def _timed(parts: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        parts[name] = round(time.perf_counter() - started, 3)


def _plain_input(strategy) -> bool:
    """Whether the step can take the loader's batches as they are.

    A single replica on the CPU needs no distributed input: the distributed iterator's
    per-step bookkeeping was measured at about 0.45 s a step on 2 cores (2.15 s
    against 1.71 s for plain batches, cr 16, 96x96 crops, batch 4). Several replicas
    or a GPU (where the iterator prefetches to the device) keep it.
    """
    return (strategy.num_replicas_in_sync == 1
            and not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and not tf.config.list_logical_devices("GPU"))


def _epoch_batches(cfg: TrainConfig, strategy, epoch: int, done: int) -> Iterator:
    """The rest of epoch ``epoch`` after ``done`` steps, as the step takes it."""
    options = LoaderOptions(crop=cfg.crop, seed=cfg.seed, cache=cfg.cache,
                            augment=cfg.augment, edge_crops=cfg.edge_crops)

    def dataset(ctx=None):
        skip = done if ctx is None else done * (
            strategy.num_replicas_in_sync // ctx.num_input_pipelines)
        return make_dataset(cfg.h5, "train", cfg.batch_size, options, epoch=epoch,
                            skip_batches=skip, input_context=ctx)

    if _plain_input(strategy):
        return dataset()
    return strategy.distribute_datasets_from_function(dataset)
