"""Training the DGF GAN: :class:`GANTrainer`, the networks, optimizers and the
compiled step.

One compiled step per batch: the generator runs once, the discriminator is updated
on real versus generated images, then the generator is updated through the
(updated) discriminator. Two optimizers, two tapes; the discriminator is "frozen"
for the generator update simply by not applying its gradients. During warm-up the
step trains the generator on the content loss alone.

Everything that decides what happens next is in the trainer's checkpoint: both
networks, both optimizers (slots and iteration counts), the global step, and the
loader's position (epoch and batches done in it). The loader derives every random
choice from ``(seed, epoch)``, so a resumed run sees exactly the batches an
uninterrupted one would have seen.

:class:`GANTrainer` owns the networks and the step; :class:`dgf.loop.Controller`
owns the order of work (steps, then the epoch-end actions of :mod:`dgf.actions`);
:func:`dgf.session.train` builds both for a run folder.
"""
from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from dgf.config import TrainConfig, on_off
from dgf.errors import DgfError
from dgf.images import scale_to_unit
from dgf.losses import (
    TOTAL_LOSS,
    LossWeights,
    discriminator_loss,
    generator_loss_terms,
    patch_probability,
)
from dgf.models import build_discriminator, build_generator, generator_layout


# --------------------------------------------------------------------------- optimizers
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


def _make_schedule(lr: float, cfg: TrainConfig, total_steps: int):
    if cfg.lr_schedule == "constant":
        return lr
    if cfg.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, total_steps))
    return HoldThenLinearDecay(lr, total_steps)


class FusedAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` with each variable's update as one fused kernel
    (``ResourceApplyAdam``, the same formula: ``m += (g - m)(1 - b1)``, ``v += (g^2 -
    v)(1 - b2)``, ``w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)``) on the
    same slot variables, so checkpoints are the same. Keras builds about 30 graph ops
    per variable, which made the optimizers half of the GAN step's graph: 4,200 of
    its 8,700 ops at the DGF layout, traced and optimized at every training start.
    Sparse gradients and amsgrad take Keras's own update."""

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        var, m, v = (_tf_variable(x) for x in (variable, self._momentums[index],
                                                 self._velocities[index]))
        dtype = var.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=var.handle, m=m.handle, v=v.handle, beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step), lr=tf.cast(learning_rate, dtype),
            beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype))


def _tf_variable(variable):
    """The TensorFlow variable under a Keras one."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _make_optimizer(lr: float, cfg: TrainConfig, total_steps: int, name: str):
    opt = FusedAdam(
        learning_rate=_make_schedule(lr, cfg, total_steps),
        beta_1=cfg.beta_1,
        beta_2=cfg.beta_2,
        name=name,
    )
    if cfg.precision == "fp16":
        opt = keras.optimizers.LossScaleOptimizer(opt, name=f"{name}_loss_scale")
    return opt


def _unit(images_u8):
    """uint8 tensor -> float32 in [-1, 1], inside the compiled step."""
    return scale_to_unit(tf.cast(images_u8, tf.float32))


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
        self.cfg = cfg
        self.strategy = strategy
        with strategy.scope():
            layout = dict(channel_rate=cfg.channel_rate, blocks=cfg.blocks,
                          dropout=cfg.dropout, residual=cfg.residual, batchnorm=cfg.batchnorm,
                          space_to_depth=cfg.space_to_depth)
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
        self.perceptual = perceptual
        self.loss_weights = LossWeights.from_config(cfg)
        # Every float weight (BatchNorm statistics included) is averaged; the dropout
        # seed states are integers and stay out.
        self._ema_pairs = list(zip(_float_weights(self.averaged),
                                   _float_weights(self.generator), strict=True))
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

    # The per-replica step. Losses are per-replica means; gradients are summed
    # across replicas by the optimizer, so they are scaled by 1/replicas.
    def _replica_step(self, blurred_u8, sharp_u8):
        cfg = self.cfg
        G, D = self.generator, self.discriminator
        scale = 1.0 / self.strategy.num_replicas_in_sync
        fp16 = cfg.precision == "fp16"
        blurred, sharp = _unit(blurred_u8), _unit(sharp_u8)

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
            g_obj = terms[TOTAL_LOSS] * scale
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
        G = self.generator
        scale = 1.0 / self.strategy.num_replicas_in_sync
        blurred, sharp = _unit(blurred_u8), _unit(sharp_u8)
        with tf.GradientTape() as g_tape:
            deblurred = tf.cast(G(blurred, training=True), tf.float32)
            terms = generator_loss_terms(sharp, deblurred, None, self.perceptual,
                                         self.loss_weights)
            g_obj = terms[TOTAL_LOSS] * scale
            if self.cfg.precision == "fp16":
                g_obj = self.g_optimizer.scale_loss(g_obj)
        g_grads = g_tape.gradient(g_obj, G.trainable_variables)
        self.g_optimizer.apply(g_grads, G.trainable_variables)
        zero = tf.zeros((), tf.float32)
        return {**{k: tf.cast(v, tf.float32) for k, v in terms.items()},
                "d_loss": zero, "d_real": zero, "d_fake": zero}

    def start_from(self, model: keras.Model, source: str) -> None:
        """Set the generator and its average to ``model``'s weights (fine-tuning).

        ``model`` must be a DGF generator of this run's layout (channel rate,
        blocks, residual, BatchNorm, space-to-depth); DgfError naming ``source`` and both layouts otherwise.
        Dropout may differ: it has no weights.
        """
        cfg = self.cfg
        theirs = generator_layout(model)
        mine = dict(channel_rate=cfg.channel_rate, blocks=cfg.blocks, residual=cfg.residual,
                    batchnorm=cfg.batchnorm, space_to_depth=cfg.space_to_depth)
        if theirs is None:
            raise DgfError(f"{source} is not a DGF generator (it has no head_conv layer); "
                           f"pass a generator saved by dgf-train")
        if theirs != mine:
            flags = " ".join(_flag(k, v) for k, v in theirs.items() if mine[k] != v)
            raise DgfError(f"{source} is a generator with {_describe(theirs)}; this run "
                           f"builds {_describe(mine)}. Pass {flags} to fine-tune it")
        weights = _float_weights(model)
        for target in (self.generator, self.averaged):
            for variable, value in zip(_float_weights(target), weights, strict=True):
                variable.assign(value)

    def _update_average(self) -> None:
        """averaged <- d * averaged + (1 - d) * generator, with d warming up as
        (1 + n) / (10 + n) over the first steps so early weights fade quickly."""
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
        # autograph=False: the step has no Python control flow on tensors (its loops
        # and branches are over Python values), and converting it cost about 1.3 s of
        # tracing at every training start (cProfile, tiny network).
        replica_step = (tf.function(replica_fn, jit_compile=jit, autograph=False) if jit
                        else replica_fn)
        strategy = self.strategy

        keys: list[str] = []  # the logged values' order, set when the step is traced

        def packed_step(blurred, sharp):
            logs = replica_step(blurred, sharp)
            keys[:] = sorted(logs)
            return pack_logs(logs, keys)

        @tf.function(autograph=False)
        def step(batch):
            blurred, sharp = batch
            per_replica = strategy.run(packed_step, args=(blurred, sharp))
            # The logged losses, averaged over replicas in one all-reduce.
            logs = unpack_logs(strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica,
                                               axis=None), keys)
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
        return (float(ops.convert_to_numpy(self.g_optimizer.learning_rate)),
                float(ops.convert_to_numpy(self.d_optimizer.learning_rate)))


def pack_logs(logs: Mapping[str, Any], keys: list[str]):
    """A replica's logged values as one float32 vector in ``keys`` order, so that
    averaging them over replicas is one all-reduce, not one per value."""
    return tf.stack([tf.cast(logs[key], tf.float32) for key in keys])


def unpack_logs(vector, keys: list[str]) -> dict:
    """:func:`pack_logs` undone: ``{key: scalar}``."""
    return dict(zip(keys, tf.unstack(vector, num=len(keys))))


def _float_weights(model: keras.Model) -> list:
    """A generator's weights that training and averaging touch: every float weight
    (BatchNorm statistics included), not the integer states of Dropout's seed
    generators (those are checkpointed separately)."""
    return [w for w in model.weights if "seed_generator_state" not in w.path]


def _flag(key: str, value: Any) -> str:
    """The dgf-train flag that sets ``key`` to ``value``."""
    text = on_off(value) if isinstance(value, bool) else value
    return f"--{key.replace('_', '-')} {text}"


def _describe(layout: dict[str, Any]) -> str:
    return (f"channel rate {layout['channel_rate']}, {layout['blocks']} blocks, "
            f"residual {on_off(layout['residual'])}, "
            f"batchnorm {on_off(layout['batchnorm'])}, "
            f"space-to-depth {layout['space_to_depth']}")
