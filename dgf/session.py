"""A training session: :func:`train` sets up one call of dgf-train on a run folder and
hands it to the training loop.

In order: the run folder's lock (:mod:`dgf.runlock`), what a resumed run recorded
(its checkpoint, its settings, checked against this call's), the strategy
(:mod:`dgf.distributed`), the precision policy and the global batch, the HDF5 file's
splits (:class:`dgf.loop.RunData`), the perceptual loss, the networks, optimizers and
step (:class:`dgf.train.GANTrainer`, started from ``--init-generator`` on a new run),
the checkpoint manager (:class:`dgf.actions.Checkpoints`, restored on resume), and
last the :class:`dgf.loop.Controller` that drives them all. A full disk or a peer
lost mid-collective becomes an error that says what the run kept.
"""
from __future__ import annotations

import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import keras
import tensorflow as tf

from dgf import distributed
from dgf.actions import Checkpoints, checkpoint_to_resume, remove_partial_checkpoints
from dgf.batching import AUTO_BATCH, BatchPlan, plan_batch
from dgf.config import (
    RunDir,
    TrainConfig,
    has_checkpoint,
    read_run_config,
    save_config,
)
from dgf.costs import cpu_warning, step_cost
from dgf.data import split_info, steps_per_epoch
from dgf.distributed import is_chief, select_strategy
from dgf.errors import DgfError
from dgf.fileio import DiskFull, check_output, is_disk_full, prepare_output, require_file
from dgf.host import device_description
from dgf.loop import Controller, RunData, TrainResult
from dgf.losses import PerceptualLoss
from dgf.metrics import check_crop_border
from dgf.models import check_discriminator_size
from dgf.resume import check_architecture, check_resume_settings
from dgf.runlock import RunLock
from dgf.runtime import gpu_capabilities, gpu_models, load_generator, training_precision
from dgf.train import GANTrainer
from dgf.weights import bundled_model


def _policy_name(precision: str) -> str:
    """The Keras dtype policy a run of ``precision`` (fp32, bf16, fp16) trains under."""
    return {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[precision]


def _initial_generator(cfg: TrainConfig) -> keras.Model | None:
    """The model ``cfg.init_generator`` names (``"bundled"``: the shipped one), loaded."""
    if not cfg.init_generator:
        return None
    path = bundled_model() if cfg.init_generator == "bundled" else Path(cfg.init_generator)
    try:
        return load_generator(path)
    except DgfError as exc:
        raise DgfError(f"--init-generator: {exc}") from None


def _check_data(cfg: TrainConfig, batch: BatchPlan) -> RunData:
    """The HDF5 file's splits checked against ``cfg`` (whose ``batch_size`` is
    ``batch``'s global batch)."""
    h5 = require_file(cfg.h5, "HDF5 file", "build it with `build-hdf5 JPEG_DIR`")
    train_info = split_info(h5, "train")
    test_info = split_info(h5, "test")
    height, width = train_info.height, train_info.width
    if cfg.crop is not None:
        if cfg.crop > min(height, width):
            raise DgfError(
                f"crop {cfg.crop} is larger than the training images of {h5} "
                f"({height}x{width}); use --crop {min(height, width) // cfg.patch * cfg.patch} "
                f"or smaller"
            )
    else:
        check_discriminator_size(height, width, cfg.patch)
    try:  # refused now, not at the first epoch's end
        check_crop_border(cfg.crop_border, test_info.height, test_info.width)
    except DgfError as exc:
        raise DgfError(f"--crop-border: {exc} (the test images of {h5})") from None
    if cfg.batch_size > train_info.count:
        auto = (f"; --batch-size auto trains 1 pair on each of {batch.replicas} replicas: use "
                f"fewer replicas or more pairs" if batch.setting == AUTO_BATCH else "")
        raise DgfError(
            f"batch size {cfg.batch_size} is larger than the training split of {h5} "
            f"({train_info.count} pairs){auto}"
        )
    steps = steps_per_epoch(train_info.count, cfg.batch_size, True, 1)
    return RunData(train_info, test_info, steps, batch)


def _disk_full(exc: DiskFull, run_dir: Path) -> DiskFull:
    """``exc`` saying what the run keeps: its last complete checkpoint, and how to
    resume once space is free (the steps after that checkpoint run again)."""
    ckpt_dir = run_dir / "checkpoints"
    if not has_checkpoint(run_dir):
        return exc.keeping("no checkpoint was saved yet; free space and start again")
    try:  # the failed save removed its own partial files (Checkpoints.save)
        path = checkpoint_to_resume(ckpt_dir)
    except DgfError:
        return exc.keeping("no complete checkpoint was kept; free space and start a new --run-dir")
    step = Path(path).name.rpartition("-")[2]
    return exc.keeping(f"kept the last complete checkpoint {path} (step {step}); free "
                       f"space and resume with: dgf-train --run-dir {run_dir}")


def _say_hardware(setting: TrainConfig, cfg: TrainConfig, data: RunData, gpus: list[str],
                  config_file: str | None) -> None:
    """What ``--precision auto`` came to, and for a run meant for a GPU
    (``accelerator: gpu``) where TensorFlow sees none, the one warning line with the
    step time to expect on this CPU (:mod:`dgf.costs`); the run goes on."""
    if setting.precision == "auto":
        where = device_description(gpus)["accelerator"] if gpus else "the CPU (no GPU)"
        print(f"note: --precision auto: {cfg.precision} on {where}", file=sys.stderr, flush=True)
    if cfg.accelerator != "gpu" or gpus:
        return
    height, width = ((cfg.crop, cfg.crop) if cfg.crop else
                     (data.train.height, data.train.width))
    cost = step_cost(cfg, height, width)
    print(cpu_warning(config_file or "this run", cost, cfg.batch_size // data.batch.workers,
                      crops=cfg.crop is not None), file=sys.stderr, flush=True)


def build_perceptual(cfg: TrainConfig):
    """The VGG16 perceptual loss, or None when its weight is 0 (no VGG is built)."""
    if cfg.perceptual_weight <= 0:
        return None
    return PerceptualLoss(weights=cfg.vgg_weights)


def train(cfg: TrainConfig, *, resume: bool | None = None, progress: bool = True,
          perceptual_override=None, max_steps: int | None = None,
          config_file: str | None = None) -> TrainResult:
    """Train (or resume) the run described by ``cfg``; return where it ended.

    ``resume=None`` resumes when ``cfg.run_dir`` already holds a checkpoint.
    ``perceptual_override`` replaces the VGG loss object (tests pass one built with
    random weights). ``max_steps`` stops after that many steps in this call, as an
    interruption would (for tests and benchmarks). ``config_file``: the file that
    set ``accelerator: gpu``, named in the warning when no GPU is visible.
    """
    if cfg.run_dir is None:
        raise DgfError("train(): cfg.run_dir is not set; use resolve_config()")
    run_dir = check_output(cfg.run_dir, folder=True)
    with ExitStack() as owner:
        if cfg.strategy != "multiworker":  # the chief locks once the cluster has formed
            owner.enter_context(_owning(run_dir))
        return _train(cfg, run_dir, resume, progress, perceptual_override, max_steps, owner,
                      config_file)


@contextmanager
def _owning(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock (:mod:`dgf.runlock`) while training: a run of one
    process before anything else, the chief of a multi-worker run as soon as its
    strategy exists (a worker whose peers never start is stopped while it waits,
    and leaves nothing). The owner then clears what a killed predecessor left in
    the checkpoints folder (TensorFlow's ``ckpt-N_temp`` folders)."""
    with RunLock(run_dir):
        left = remove_partial_checkpoints(run_dir / "checkpoints")
        if left:
            print(f"note: removed {len(left)} unfinished checkpoint file(s) left in "
                  f"{run_dir / 'checkpoints'}: {', '.join(p.name for p in left)}",
                  file=sys.stderr, flush=True)
        yield


def _train(cfg: TrainConfig, run_dir: Path, resume: bool | None, progress: bool,
           perceptual_override, max_steps: int | None, owner: ExitStack,
           config_file: str | None) -> TrainResult:
    resuming = has_checkpoint(run_dir) if resume is None else resume
    if resuming and not has_checkpoint(run_dir):
        raise DgfError(f"{run_dir} has no checkpoint to resume from")
    # Before any slow setup: a damaged index, missing files or other network shapes
    # are found here.
    run = RunDir(run_dir)
    checkpoint = checkpoint_to_resume(run.checkpoints) if resuming else None
    recorded = None  # the batch a resumed run recorded: an auto run keeps its global batch
    if resuming and run.config.is_file():
        saved, recorded = read_run_config(run.config)
        check_architecture(saved, cfg.to_dict(), run_dir)
        check_resume_settings(cfg, saved, run_dir)
    # The strategy first: a multi-worker strategy must set up TensorFlow's
    # collectives before anything else starts TensorFlow.
    strategy = select_strategy(cfg.strategy, cfg.collective_timeout)
    if distributed.is_multiworker(strategy) and is_chief(strategy):
        owner.enter_context(_owning(run_dir))

    gpus = gpu_models()
    precision = training_precision(cfg.precision, gpu_capabilities())
    previous_policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(_policy_name(precision))
    scratch = None
    try:
        # The global batch over every replica of every worker (auto: 1 per replica)
        # and the precision (auto: by the GPUs); from here on cfg holds what the run
        # trains with, config.json keeps the settings.
        batch = plan_batch(cfg.batch_size, strategy.num_replicas_in_sync,
                           workers=distributed.num_workers(strategy), recorded=recorded)
        setting, cfg = cfg, cfg.replace(batch_size=batch.global_batch, precision=precision)
        distributed.check_workers_agree(strategy, cfg)
        data = _check_data(cfg, batch)
        if is_chief(strategy):
            _say_hardware(setting, cfg, data, gpus, config_file)
        # Fail before any training if the VGG weights cannot be had.
        with strategy.scope():
            perceptual = perceptual_override if perceptual_override is not None else build_perceptual(cfg)
        if not resuming:
            keras.utils.set_random_seed(cfg.seed)
        init = None if resuming else _initial_generator(cfg)
        trainer = GANTrainer(cfg, strategy, data.steps * cfg.epochs, perceptual)
        if init is not None:
            trainer.start_from(init, str(cfg.init_generator))
        chief = is_chief(strategy)
        # Multi-worker: every worker saves, only the chief's checkpoints are kept.
        ckpt_dir, scratch = distributed.checkpoint_dir(run_dir, strategy)
        if chief:
            prepare_output(run_dir, folder=True)
        checkpoints = Checkpoints(trainer.checkpoint, ckpt_dir, cfg)
        if resuming:
            checkpoints.restore(checkpoint)
        distributed.check_same_start(strategy, int(trainer.step_var.numpy()),
                                     int(trainer.epoch_var.numpy()), run_dir)
        # The Controller reads the run's metrics log first: a damaged one stops the
        # run before config.json is rewritten.
        controller = Controller(cfg, trainer, strategy, data, checkpoints,
                                chief=chief, progress=progress)
        if chief:
            save_config(setting, run.config, batch)
            for folder in (run.samples, run.snapshots):
                folder.mkdir(exist_ok=True)
        return controller.run(max_steps)
    except DiskFull as exc:
        raise _disk_full(exc, run_dir) from None
    except tf.errors.OpError as exc:
        if is_disk_full(exc):  # TensorFlow's own writers: the event files
            raise _disk_full(DiskFull(run_dir / "tensorboard"), run_dir) from None
        if distributed.is_multiworker(strategy):  # a peer died or hung mid-collective
            raise distributed.collective_failure(exc, strategy) from None
        raise
    finally:
        distributed.remove_scratch(scratch)
        keras.mixed_precision.set_dtype_policy(previous_policy)
