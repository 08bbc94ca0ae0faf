"""Training the DGF GAN: the compiled step, checkpoints and resume, the loop.

One compiled step per batch: the generator runs once, the discriminator is updated
on real versus generated images, then the generator is updated through the
(updated) discriminator. Two optimizers, two tapes; the discriminator is "frozen"
for the generator update simply by not applying its gradients.

Everything that decides what happens next is in the checkpoint: both networks,
both optimizers (slots and iteration counts), the global step, and the loader's
position (epoch and batches done in it). The loader derives every random choice
from ``(seed, epoch)``, so a resumed run sees exactly the batches an uninterrupted
one would have seen.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dgf import distributed
from dgf.config import (
    ARCHITECTURE_KEYS,
    TrainConfig,
    load_config_file,
    read_config,
    save_config,
)
from dgf.errors import DgfError
from dgf.fileio import check_output, prepare_output, require_file, write_atomic, write_text_atomic

RUNS_ROOT = Path("runs")
LOSS_KEYS = ("g_loss", "g_perceptual", "g_pixel", "g_l1", "g_ssim", "g_adv", "d_loss",
             "d_real", "d_fake")
# The components come first so that a NaN is reported by the term that made it.
CHECKED_KEYS = ("g_perceptual", "g_l1", "g_pixel", "g_ssim", "g_adv", "d_loss", "g_loss")


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


# --------------------------------------------------------------------------- config
def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / "checkpoints" / "checkpoint").is_file()


def latest_run(root: Path = RUNS_ROOT) -> Path:
    """The most recently modified run folder under ``root`` that has a checkpoint."""
    runs = [p for p in Path(root).glob("*") if has_checkpoint(p)] if Path(root).is_dir() else []
    if not runs:
        raise DgfError(
            f"--resume: no run with a checkpoint under {root}/; pass --run-dir RUN"
        )
    return max(runs, key=lambda p: (p / "checkpoints" / "checkpoint").stat().st_mtime)


def resolve_config(
    overrides: Mapping[str, Any] | None = None,
    config_file: Path | str | None = None,
    *,
    resume: bool = False,
    runs_root: Path = RUNS_ROOT,
) -> tuple[TrainConfig, bool]:
    """Merge defaults, a config file and explicit overrides; decide new run or resume.

    Returns ``(config, resuming)``. A run folder that already has a checkpoint is
    resumed: its saved config is the base, and overrides may change anything but
    the architecture (``channel_rate``, ``patch``).
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(load_config_file(config_file))
    values.update({k: v for k, v in (overrides or {}).items()})
    run_dir = values.get("run_dir")
    if run_dir is None and resume:
        run_dir = str(latest_run(runs_root))
    if run_dir is not None:
        check_output(run_dir, folder=True)  # a file there, or no permission: say so now
    resuming = run_dir is not None and has_checkpoint(Path(run_dir))
    if resume and not resuming:
        raise DgfError(f"--resume: {run_dir} has no checkpoint to resume from")
    if resuming:
        saved_path = Path(run_dir) / "config.json"
        if not saved_path.is_file():
            raise DgfError(f"{run_dir} has checkpoints but no config.json; cannot resume")
        saved = read_config(saved_path).to_dict()
        for key in ARCHITECTURE_KEYS:
            if key in values and values[key] != saved[key]:
                raise DgfError(
                    f"{run_dir} was trained with {key}={saved[key]}; it cannot resume "
                    f"with {key}={values[key]}. Start a new run folder instead."
                )
        saved.update(values)
        values = saved
    if run_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = str(runs_root / stamp)
        n = 1
        while Path(run_dir).exists():
            n += 1
            run_dir = str(runs_root / f"{stamp}-{n}")
    values["run_dir"] = str(run_dir)
    return TrainConfig.from_dict(values), resuming


# --------------------------------------------------------------------------- TF setup
# Strategy creation and who owns the run folder live in dgf.distributed; the names
# stay importable from here.
select_strategy = distributed.select_strategy
_is_chief = distributed.is_chief


def _policy_name(precision: str) -> str:
    return {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[precision]


def _make_schedule(lr: float, cfg: TrainConfig, total_steps: int):
    import keras

    if cfg.lr_schedule == "constant":
        return lr
    if cfg.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, total_steps))
    return hold_then_linear_decay_class()(lr, total_steps)


_SCHEDULE_CLASS = None


def hold_then_linear_decay_class():
    """The registered ``HoldThenLinearDecay`` schedule class (defined on first use,
    so importing this module does not import Keras)."""
    global _SCHEDULE_CLASS
    if _SCHEDULE_CLASS is not None:
        return _SCHEDULE_CLASS
    import keras

    @keras.saving.register_keras_serializable(package="dgf")
    class HoldThenLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
        """Constant for the first half of training, then linear decay to zero.

        The schedule DeblurGAN uses (constant, then linear decay over the second half).
        """

        def __init__(self, initial_learning_rate: float, total_steps: int, hold_fraction: float = 0.5):
            self.initial_learning_rate = float(initial_learning_rate)
            self.total_steps = int(total_steps)
            self.hold_fraction = float(hold_fraction)

        def __call__(self, step):
            from keras import ops

            step = ops.cast(step, "float32")
            hold = self.hold_fraction * self.total_steps
            span = max(1.0, self.total_steps - hold)
            frac = ops.clip((step - hold) / span, 0.0, 1.0)
            return self.initial_learning_rate * (1.0 - frac)

        def get_config(self):
            return {
                "initial_learning_rate": self.initial_learning_rate,
                "total_steps": self.total_steps,
                "hold_fraction": self.hold_fraction,
            }

    _SCHEDULE_CLASS = HoldThenLinearDecay
    return HoldThenLinearDecay


def _make_optimizer(lr: float, cfg: TrainConfig, total_steps: int, name: str):
    import keras

    opt = keras.optimizers.Adam(
        learning_rate=_make_schedule(lr, cfg, total_steps),
        beta_1=cfg.beta_1,
        beta_2=cfg.beta_2,
        name=name,
    )
    if cfg.precision == "fp16":
        opt = keras.optimizers.LossScaleOptimizer(opt, name=f"{name}_loss_scale")
    return opt


# --------------------------------------------------------------------------- the GAN
class GANTrainer:
    """Both networks, both optimizers, the losses and the compiled training step.

    Build it inside ``strategy.scope()``. ``step(batch)`` runs one distributed
    training step on a ``(blurred, sharp)`` uint8 batch and returns the losses,
    averaged over replicas; ``step(batch, warmup=True)`` trains the generator on the
    content loss alone (the discriminator is neither run nor updated).

    ``averaged`` is a second generator holding an exponential moving average of the
    trained one's weights (decay ``cfg.ema_decay``, or an exact copy when it is 0),
    updated at every step; it is what gets scored, snapshotted and saved.
    """

    def __init__(self, cfg: TrainConfig, strategy, total_steps: int, perceptual=None):
        import keras
        import tensorflow as tf

        from dgf.models import build_discriminator, build_generator

        self.cfg = cfg
        self.strategy = strategy
        with strategy.scope():
            layout = dict(channel_rate=cfg.channel_rate, dropout=cfg.dropout,
                          residual=cfg.residual, batchnorm=cfg.batchnorm)
            self.generator = build_generator(**layout)
            self.averaged = build_generator(**layout)
            self.averaged.set_weights(self.generator.get_weights())
            self.discriminator = build_discriminator(channel_rate=cfg.channel_rate, patch=cfg.patch)
            self.g_optimizer = _make_optimizer(cfg.g_lr, cfg, total_steps, "g_optimizer")
            self.d_optimizer = _make_optimizer(cfg.d_lr, cfg, total_steps, "d_optimizer")
            # Keras 3 under tf.distribute: optimizers must own their variables before
            # the first (traced) step, or they are created in the wrong context.
            self.g_optimizer.build(self.generator.trainable_variables)
            self.d_optimizer.build(self.discriminator.trainable_variables)
            self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.batch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="batch_in_epoch")
            self.best_psnr = tf.Variable(-np.inf, dtype=tf.float64, trainable=False, name="best_psnr")
        from dgf.losses import LossWeights

        self.perceptual = perceptual
        self.loss_weights = LossWeights(perceptual=cfg.perceptual_weight, l1=cfg.l1_weight,
                                        adversarial=cfg.adversarial_weight,
                                        pixel_loss=cfg.pixel_loss, ssim=cfg.ssim_weight)
        # Every float weight (BatchNorm statistics included) is averaged; the dropout
        # seed states are integers and stay out.
        self._ema_pairs = [
            (a, g) for a, g in zip(self.averaged.weights, self.generator.weights)
            if "seed_generator_state" not in g.path
        ]
        # Dropout draws from Keras seed generators whose state variables are not
        # part of the model's checkpoint graph; saving them keeps a resumed run on
        # the same random stream as an uninterrupted one.
        rng_state = [
            v.value for m in (self.generator, self.discriminator) for v in m.variables
            if "seed_generator_state" in v.path
        ]
        self.checkpoint = tf.train.Checkpoint(
            rng_state=rng_state,
            generator=self.generator,
            averaged_generator=self.averaged,
            discriminator=self.discriminator,
            g_optimizer=self.g_optimizer,
            d_optimizer=self.d_optimizer,
            step=self.step_var,
            epoch=self.epoch_var,
            batch_in_epoch=self.batch_var,
            best_psnr=self.best_psnr,
        )
        self._step_fns = {False: self._build_step(self._replica_step, jit=cfg.jit),
                          True: self._build_step(self._replica_content_step, jit=cfg.jit)}
        del keras

    # The per-replica step. Losses are per-replica means; gradients are summed
    # across replicas by the optimizer, so they are scaled by 1/replicas.
    def _replica_step(self, blurred_u8, sharp_u8):
        import tensorflow as tf

        from dgf.losses import discriminator_loss, generator_loss_terms, patch_probability

        cfg = self.cfg
        G, D = self.generator, self.discriminator
        scale = 1.0 / self.strategy.num_replicas_in_sync
        fp16 = cfg.precision == "fp16"
        blurred = tf.cast(blurred_u8, tf.float32) / 127.5 - 1.0
        sharp = tf.cast(sharp_u8, tf.float32) / 127.5 - 1.0

        with tf.GradientTape() as g_tape:
            deblurred = tf.cast(G(blurred, training=True), tf.float32)
            with g_tape.stop_recording():
                fake = tf.stop_gradient(deblurred)
                for _ in range(cfg.critic_steps):
                    with tf.GradientTape() as d_tape:
                        real_logits = tf.cast(D(sharp, training=True), tf.float32)
                        fake_logits = tf.cast(D(fake, training=True), tf.float32)
                        d_loss = discriminator_loss(real_logits, fake_logits)
                        d_obj = d_loss * scale
                        if fp16:
                            d_obj = self.d_optimizer.scale_loss(d_obj)
                    d_grads = d_tape.gradient(d_obj, D.trainable_variables)
                    self.d_optimizer.apply(d_grads, D.trainable_variables)
            g_fake_logits = tf.cast(D(deblurred, training=True), tf.float32)
            terms = generator_loss_terms(sharp, deblurred, g_fake_logits, self.perceptual,
                                         self.loss_weights)
            g_obj = terms["g_loss"] * scale
            if fp16:
                g_obj = self.g_optimizer.scale_loss(g_obj)
        g_grads = g_tape.gradient(g_obj, G.trainable_variables)
        self.g_optimizer.apply(g_grads, G.trainable_variables)
        return {
            **{k: tf.cast(v, tf.float32) for k, v in terms.items()},
            "d_loss": d_loss,
            "d_real": tf.reduce_mean(patch_probability(real_logits)),
            "d_fake": tf.reduce_mean(patch_probability(fake_logits)),
        }

    def _replica_content_step(self, blurred_u8, sharp_u8):
        """Warm-up: the generator alone on the content loss (no D, no adversarial)."""
        import tensorflow as tf

        from dgf.losses import generator_loss_terms

        G = self.generator
        scale = 1.0 / self.strategy.num_replicas_in_sync
        blurred = tf.cast(blurred_u8, tf.float32) / 127.5 - 1.0
        sharp = tf.cast(sharp_u8, tf.float32) / 127.5 - 1.0
        with tf.GradientTape() as g_tape:
            deblurred = tf.cast(G(blurred, training=True), tf.float32)
            terms = generator_loss_terms(sharp, deblurred, None, self.perceptual,
                                         self.loss_weights)
            g_obj = terms["g_loss"] * scale
            if self.cfg.precision == "fp16":
                g_obj = self.g_optimizer.scale_loss(g_obj)
        g_grads = g_tape.gradient(g_obj, G.trainable_variables)
        self.g_optimizer.apply(g_grads, G.trainable_variables)
        zero = tf.zeros((), tf.float32)
        return {**{k: tf.cast(v, tf.float32) for k, v in terms.items()},
                "d_loss": zero, "d_real": zero, "d_fake": zero}

    def _update_average(self) -> None:
        """averaged <- d * averaged + (1 - d) * generator, with d warming up as
        (1 + n) / (10 + n) over the first steps so early weights fade quickly."""
        import tensorflow as tf

        decay = self.cfg.ema_decay
        if decay > 0:
            n = tf.cast(self.step_var, tf.float32)
            d = tf.minimum(tf.constant(decay, tf.float32), (1.0 + n) / (10.0 + n))
        for avg, live in self._ema_pairs:
            if decay > 0:
                d_cast = tf.cast(d, avg.dtype)
                avg.assign(d_cast * avg + (1 - d_cast) * live)
            else:
                avg.assign(live)

    def _build_step(self, replica_fn, jit: bool):
        import tensorflow as tf

        replica_step = tf.function(replica_fn, jit_compile=jit) if jit else replica_fn
        strategy = self.strategy

        @tf.function
        def step(batch):
            blurred, sharp = batch
            per_replica = strategy.run(replica_step, args=(blurred, sharp))
            logs = {
                k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                for k, v in per_replica.items()
            }
            # The position counters move with the weights, inside the same step,
            # so a checkpoint always pairs weights with the batches they have seen.
            self.step_var.assign_add(1)
            self.batch_var.assign_add(1)
            self._update_average()
            return logs

        return step

    def step(self, batch, warmup: bool = False) -> dict:
        return self._step_fns[bool(warmup)](batch)

    def learning_rates(self) -> tuple[float, float]:
        from keras import ops

        return (float(ops.convert_to_numpy(self.g_optimizer.learning_rate)),
                float(ops.convert_to_numpy(self.d_optimizer.learning_rate)))


# --------------------------------------------------------------------------- helpers
def _save_keras_atomic(model, path: Path) -> None:
    write_atomic(path, model.save)


def _append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()


def _truncate_metrics(path: Path, step: int, epoch: int) -> None:
    """Drop records written after the checkpoint being resumed: those steps run
    again, and the log should read as one uninterrupted run. A last line cut
    short by a crash is dropped; anything else unreadable is damage, and said so."""
    if not path.is_file():
        return
    damaged = (f"{path} is damaged ({{}}); it is only a log: move it away to resume "
               f"without the old records, or start a new --run-dir")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DgfError(damaged.format("not UTF-8 text")) from None
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):  # the line a crash cut short
                continue
            raise DgfError(damaged.format(f"line {number} is not JSON")) from None
        if not isinstance(record, dict):
            raise DgfError(damaged.format(f"line {number} is not a record"))
        if record.get("kind") == "epoch" and record.get("epoch", 0) > epoch:
            continue
        if record.get("kind") == "step" and record.get("step", 0) > step:
            continue
        kept.append(line)
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))


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


def _check_data(cfg: TrainConfig, strategy):
    from dgf.data import split_info
    from dgf.models import check_discriminator_size

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
    if cfg.batch_size > train_info.count:
        raise DgfError(
            f"batch size {cfg.batch_size} is larger than the training split of {h5} "
            f"({train_info.count} pairs)"
        )
    if cfg.batch_size % strategy.num_replicas_in_sync:
        raise DgfError(
            f"batch size {cfg.batch_size} does not split evenly over "
            f"{strategy.num_replicas_in_sync} replicas"
        )
    return train_info, test_info


def build_perceptual(cfg: TrainConfig):
    """The VGG16 perceptual loss, or None when its weight is 0 (no VGG is built)."""
    if cfg.perceptual_weight <= 0:
        return None
    from dgf.losses import PerceptualLoss

    return PerceptualLoss(weights=cfg.vgg_weights)


# --------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig, *, resume: bool | None = None, progress: bool = True,
          perceptual_override=None, max_steps: int | None = None) -> TrainResult:
    """Train (or resume) the run described by ``cfg``; return where it ended.

    ``resume=None`` resumes when ``cfg.run_dir`` already holds a checkpoint.
    ``perceptual_override`` replaces the VGG loss object (tests pass one built with
    random weights). ``max_steps`` stops after that many steps in this call, as an
    interruption would (for tests and benchmarks).
    """
    import keras
    import tensorflow as tf

    from dgf.data import steps_per_epoch

    if cfg.run_dir is None:
        raise DgfError("train(): cfg.run_dir is not set; use resolve_config()")
    run_dir = check_output(cfg.run_dir, folder=True)
    resuming = has_checkpoint(run_dir) if resume is None else resume
    if resuming and not has_checkpoint(run_dir):
        raise DgfError(f"{run_dir} has no checkpoint to resume from")
    # Before any slow setup: a damaged index or missing files are found here.
    checkpoint = _checkpoint_to_resume(run_dir / "checkpoints") if resuming else None
    if resuming:
        distributed.check_resume_settings(cfg, run_dir)
    # The strategy first: a multi-worker strategy must set up TensorFlow's
    # collectives before anything else starts TensorFlow.
    strategy = select_strategy(cfg.strategy, cfg.collective_timeout)

    previous_policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(_policy_name(cfg.precision))
    scratch = None
    try:
        distributed.check_workers_agree(strategy, cfg)
        train_info, test_info = _check_data(cfg, strategy)
        steps = steps_per_epoch(train_info.count, cfg.batch_size, True, 1)
        total_steps = steps * cfg.epochs
        # Fail before any training if the VGG weights cannot be had.
        with strategy.scope():
            perceptual = perceptual_override if perceptual_override is not None else build_perceptual(cfg)
        if not resuming:
            keras.utils.set_random_seed(cfg.seed)
        trainer = GANTrainer(cfg, strategy, total_steps, perceptual)
        chief = _is_chief(strategy)
        # Multi-worker: every worker saves, only the chief's checkpoints are kept.
        ckpt_dir, scratch = distributed.checkpoint_dir(run_dir, strategy)
        if chief:
            prepare_output(run_dir, folder=True)
        manager = tf.train.CheckpointManager(trainer.checkpoint, str(ckpt_dir), max_to_keep=cfg.keep)
        if resuming:
            _restore(trainer, checkpoint, run_dir)
        distributed.check_same_start(strategy, int(trainer.step_var.numpy()),
                                     int(trainer.epoch_var.numpy()), run_dir)
        if chief:
            save_config(cfg, run_dir / "config.json")
            for sub in ("samples", "snapshots"):
                (run_dir / sub).mkdir(exist_ok=True)
        return _loop(cfg, trainer, manager, strategy, steps, train_info, test_info, chief,
                     progress, max_steps)
    except tf.errors.OpError as exc:
        if distributed.is_multiworker(strategy):  # a peer died or hung mid-collective
            raise distributed.collective_failure(exc, strategy) from None
        raise
    finally:
        distributed.remove_scratch(scratch)
        keras.mixed_precision.set_dtype_policy(previous_policy)


def _checkpoint_to_resume(ckpt_dir: Path) -> str:
    """The newest checkpoint listed in ``ckpt_dir/checkpoint`` whose files exist.

    Removing a damaged checkpoint's files (``ckpt-N.*``) thus falls back to the one
    before it; ``--keep`` of them are kept for this. DgfError, naming the file and
    what to do, when the index is damaged or no listed checkpoint is complete.
    """
    import tensorflow as tf

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


def _restore(trainer: GANTrainer, path: str, run_dir: Path) -> None:
    import tensorflow as tf

    saved_cfg = run_dir / "config.json"
    if saved_cfg.is_file():
        saved = read_config(saved_cfg)
        for key in ARCHITECTURE_KEYS:
            if getattr(saved, key) != getattr(trainer.cfg, key):
                raise DgfError(
                    f"checkpoint {path} was made with {key}={getattr(saved, key)}, this run "
                    f"asks for {key}={getattr(trainer.cfg, key)}; start a new run folder instead"
                )
    try:
        status = trainer.checkpoint.restore(path)
        status.assert_existing_objects_matched()
    except (tf.errors.OpError, IndexError) as exc:
        # Truncated or overwritten files: TensorFlow says "not an sstable", "file is
        # too short" (the .index) or "Read less bytes than requested" (the data).
        raise DgfError(
            f"checkpoint {path} is damaged ({_first_line(exc)}). Remove its files "
            f"({Path(path).name}.*) to resume from the checkpoint before it, or start a "
            f"new --run-dir"
        ) from None
    except (AssertionError, ValueError) as exc:
        raise DgfError(
            f"checkpoint {path} does not match this model ({_first_line(exc)}). It was "
            f"made by a different architecture or version; start a new run folder instead"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _loop(cfg, trainer, manager, strategy, steps, train_info, test_info, chief, progress,
          max_steps) -> TrainResult:
    import tensorflow as tf
    from tqdm.auto import tqdm

    from dgf.evaluate import strip_indices

    run_dir = Path(cfg.run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    writer = tf.summary.create_file_writer(str(run_dir / "tensorboard")) if chief else None
    history: list[dict[str, Any]] = []
    strip_rows = strip_indices(test_info.count, cfg.strip_pairs)
    start_epoch = int(trainer.epoch_var.numpy())
    global_step = int(trainer.step_var.numpy())
    if start_epoch or global_step:
        print(f"resuming {run_dir} at epoch {start_epoch + 1}, step {global_step}", flush=True)
        if chief:
            _truncate_metrics(metrics_path, global_step, start_epoch)
    else:
        print(f"training into {run_dir} ({strategy.num_replicas_in_sync} replica(s), "
              f"{steps} steps per epoch)", flush=True)
    steps_this_call = 0

    def save() -> None:
        manager.save(checkpoint_number=int(trainer.step_var.numpy()))

    with _StopFlag() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            done = int(trainer.batch_var.numpy())
            epoch_started = time.perf_counter()
            iterator = iter(_epoch_batches(cfg, strategy, epoch, done))
            bar = tqdm(total=steps, initial=done, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       unit="step", disable=not progress or not chief, dynamic_ncols=True)
            pending = None  # the previous step's losses, read while this step runs
            # Throughput over the last steps, timed where each step is launched: the
            # launch waits for the device, so this tracks the real step rate.
            launched: deque[float] = deque(maxlen=20)

            def settle(item) -> None:
                step_no, logs = item
                values = {k: float(v) for k, v in logs.items()}
                _check_finite(step_no, values)
                span = launched[-1] - launched[0] if len(launched) > 1 else 0.0
                rate = (len(launched) - 1) * cfg.batch_size / span if span > 0 else 0.0
                bar.set_postfix(g=f"{values['g_loss']:.3g}", l1=f"{values['g_l1']:.3f}",
                                adv=f"{values['g_adv']:.3g}", d=f"{values['d_loss']:.3g}",
                                img_s=f"{rate:.1f}", refresh=False)
                bar.update(1)
                if chief and (step_no % cfg.log_every == 0 or step_no == 1):
                    g_lr, d_lr = trainer.learning_rates()
                    record = {"kind": "step", "step": step_no, "epoch": epoch + 1,
                              **values, "g_lr": g_lr, "d_lr": d_lr, "images_per_sec": rate}
                    _append_jsonl(metrics_path, record)
                    with writer.as_default(step=step_no):
                        for k, v in values.items():
                            tf.summary.scalar(f"train/{k}", v)
                        tf.summary.scalar("train/g_lr", g_lr)
                        tf.summary.scalar("train/d_lr", d_lr)
                        tf.summary.scalar("train/images_per_sec", rate)

            for _ in range(done, steps):
                if stop.signum is not None or (max_steps is not None and steps_this_call >= max_steps):
                    break
                logs = trainer.step(next(iterator), warmup=epoch < cfg.warmup_epochs)
                launched.append(time.perf_counter())
                step_no = int(trainer.step_var.numpy())
                steps_this_call += 1
                if pending is not None:
                    settle(pending)
                pending = (step_no, logs)
                if step_no % cfg.save_every == 0:
                    settle(pending)
                    pending = None
                    save()
            if pending is not None:
                settle(pending)
            bar.close()
            if int(trainer.batch_var.numpy()) < steps:  # stopped inside the epoch
                save()
                step_no = int(trainer.step_var.numpy())
                if stop.signum is not None:
                    raise TrainingInterrupted(
                        f"stopped at step {step_no}; checkpoint saved in {manager.directory}. "
                        f"Resume with: dgf-train --run-dir {run_dir}"
                    )
                return TrainResult(run_dir, step_no, epoch, history)

            # End of epoch: score, picture, snapshot, then the checkpoint that moves on.
            end_started = time.perf_counter()
            record = _end_of_epoch(cfg, trainer, epoch, strip_rows, chief, writer, train_info)
            # Where the epoch's time went: its steps, and the work at its end
            # (BatchNorm re-estimation, scoring, strip, TensorBoard, snapshots).
            record["train_seconds"] = round(end_started - epoch_started, 2)
            record["end_seconds"] = round(time.perf_counter() - end_started, 2)
            history.append(record)
            if chief:
                _append_jsonl(metrics_path, record)
            trainer.epoch_var.assign(epoch + 1)
            trainer.batch_var.assign(0)
            save()
    if writer is not None:
        writer.flush()
    step_no = int(trainer.step_var.numpy())
    print(f"done: {step_no} steps; generator in {run_dir / 'generator.keras'}", flush=True)
    return TrainResult(run_dir, step_no, cfg.epochs, history)


def _plain_input(strategy) -> bool:
    """Whether the step can take the loader's batches as they are.

    A single replica on the CPU needs no distributed input: the distributed iterator's
    per-step bookkeeping was measured at about 0.45 s a step on 2 cores (2.15 s
    against 1.71 s for plain batches, cr 16, 96x96 crops, batch 4). Several replicas
    or a GPU (where the iterator prefetches to the device) keep it.
    """
    import tensorflow as tf

    return (strategy.num_replicas_in_sync == 1
            and not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and not tf.config.list_logical_devices("GPU"))


def _epoch_batches(cfg: TrainConfig, strategy, epoch: int, done: int):
    """The rest of epoch ``epoch`` after ``done`` steps, as the step takes it."""
    from dgf.data import make_dataset

    def dataset(ctx=None):
        skip = done if ctx is None else done * (
            strategy.num_replicas_in_sync // ctx.num_input_pipelines)
        return make_dataset(cfg.h5, "train", cfg.batch_size, crop=cfg.crop, training=True,
                            seed=cfg.seed, epoch=epoch, skip_batches=skip,
                            input_context=ctx, cache=cfg.cache, augment=cfg.augment,
                            edge_crops=cfg.edge_crops)

    if _plain_input(strategy):
        return dataset()
    return strategy.distribute_datasets_from_function(dataset)


def recalibrate_batchnorm(model, batches) -> int:
    """Set every BatchNormalization layer's moving mean and variance to the average
    of its batch statistics over ``batches`` (the "precise BN" estimate).

    During GAN training the weights move faster than BatchNorm's running averages
    (momentum 0.99) can follow, so inference-mode outputs drift (a colour cast)
    from what training-mode outputs are. Averaging fresh batch statistics of the
    current weights removes that drift. ``batches`` yields (B, H, W, 3) float32 in
    [-1, 1] of any size. Only the moving statistics change. Returns the batches used.
    """
    import keras
    import tensorflow as tf

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
        forward = tf.function(lambda x: model(x, training=True),
                              input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
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


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


# Images up to this many pixels are re-estimated whole, as the generator sees them
# when scoring and deblurring: statistics from small crops differ (zero padding
# touches a larger share of a crop), measured 19.7 dB with 96x96 crops against
# 21.7 dB with whole 256x256 images on pairs-small.
RECALIBRATE_MAX_PIXELS = 1024 * 1024


def _recalibrate(cfg, trainer, epoch, train_info) -> None:
    from dgf.data import make_dataset

    if cfg.bn_recalibrate <= 0 or not cfg.batchnorm:
        return  # nothing to re-estimate: no need to open the split
    whole = train_info.height * train_info.width <= RECALIBRATE_MAX_PIXELS
    crop = None if whole else min(train_info.height, train_info.width, 512)
    # Its own seed, so the training stream is untouched.
    dataset = make_dataset(cfg.h5, "train", cfg.batch_size, crop=crop, training=True,
                           seed=cfg.seed + 7919, epoch=epoch, augment=cfg.augment,
                           drop_remainder=False)
    batches = (blurred.numpy().astype(np.float32) / 127.5 - 1.0
               for blurred, _ in dataset.take(cfg.bn_recalibrate))
    recalibrate_batchnorm(trainer.averaged, batches)


def _end_of_epoch(cfg, trainer, epoch, strip_rows, chief, writer, train_info) -> dict[str, Any]:
    import tensorflow as tf

    from dgf.evaluate import evaluate_split, write_strip

    run_dir = Path(cfg.run_dir)
    step_no = int(trainer.step_var.numpy())
    _recalibrate(cfg, trainer, epoch, train_info)
    generator = trainer.averaged  # the weights that get scored and saved
    summary, _ = evaluate_split(generator, cfg.h5, "test", limit=cfg.val_samples,
                                progress=False)
    record = {"kind": "epoch", "epoch": epoch + 1, "step": step_no,
              **{k: summary[k] for k in ("psnr", "ssim", "blurred_psnr", "blurred_ssim", "count")}}
    print(f"epoch {epoch + 1}: test PSNR {summary['psnr']:.2f} dB (blurred "
          f"{summary['blurred_psnr']:.2f}), SSIM {summary['ssim']:.4f} (blurred "
          f"{summary['blurred_ssim']:.4f}) on {summary['count']} pairs", flush=True)
    if not chief:
        return record
    strip_path = run_dir / "samples" / f"epoch_{epoch + 1:04d}.png"
    strip = write_strip(strip_path, generator, cfg.h5, "test", indices=strip_rows)
    with writer.as_default(step=step_no):
        tf.summary.scalar("test/psnr", summary["psnr"])
        tf.summary.scalar("test/ssim", summary["ssim"])
        tf.summary.scalar("test/blurred_psnr", summary["blurred_psnr"])
        tf.summary.image("samples/sharp_blurred_deblurred", np.asarray(strip)[None], max_outputs=1)
    writer.flush()
    if cfg.snapshots:
        _save_keras_atomic(generator, run_dir / "snapshots" / f"generator_epoch_{epoch + 1:04d}.keras")
    _save_keras_atomic(generator, run_dir / "generator.keras")
    if summary["psnr"] > float(trainer.best_psnr.numpy()):
        trainer.best_psnr.assign(summary["psnr"])
        _save_keras_atomic(generator, run_dir / "generator_best.keras")
        record["best"] = True
    return record
