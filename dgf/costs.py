"""What a training step costs, counted from the networks a run builds: the one home
of the arithmetic behind dgf-train's warning when a config meant for a GPU runs on
a CPU (``accelerator: gpu``) and behind ``python benchmarks/bench_train.py --flops``,
and of the throughputs its estimates divide by.

Per training image, one GAN step of :class:`dgf.train.GANTrainer` costs, in forward
passes (a backward pass costs about two forwards where weight gradients are needed,
about one where only its input's gradient is):

* the generator G: forward once, backward once: **3G**;
* the discriminator D: trained on the sharp and on the generated image (forward and
  backward each) per critic step, 6D, then forward and back to its input inside
  the generator's loss, 2D: **(6 x critic_steps + 2) D**;
* VGG16 to ``block3_conv3``, V: the sharp image's features forward only (a target),
  the generated image's forward and back to its input: **3V** (none without the
  perceptual term).

So ``3G + 8D + 3V`` at the defaults. G, D and V are :func:`dgf.tiling.conv_flops`
of the networks at the run's crop: convolutions only, 2 FLOPs per multiply-add, as
``dgf-info`` counts. The warm-up epochs (no discriminator) cost 3G + 3V.

The times are estimates, never measurements of a step: FLOPs divided by a stated
throughput. On a CPU, :data:`CPU_FLOPS`; on a GPU, :data:`H100_BF16_PEAK` times the
assumed :data:`GPU_UTILISATION` (:data:`GPU_UTILISATION_REASON` says why).
"""
from __future__ import annotations

from typing import NamedTuple

from dgf.config import TrainConfig
from dgf.errors import DgfError
from dgf.losses import PerceptualLoss
from dgf.models import build_discriminator, build_generator, count_params
from dgf.tiling import conv_flops

#: FLOP/s the project's 2-core CPU hosts sustained on the channel-rate-64 generator
#: at inference (fp32, docs/benchmarks.md: 52 on the AVX2 host, 168 on the AVX-512
#: host), the range a CPU training step is estimated with.
CPU_FLOPS = (50e9, 170e9)
#: An H100 SXM's dense bfloat16 tensor-core peak (NVIDIA's datasheet, no sparsity).
H100_BF16_PEAK = 989e12
#: The share of that peak a training step is assumed to sustain: an assumption.
GPU_UTILISATION = (0.25, 0.40)
GPU_UTILISATION_REASON = (
    "assumed, not measured: the step is a densely connected net of narrow convolutions "
    "(the 3x3s have channel-rate outputs, 64 in the paper's model) at batch 1 per GPU, "
    "between memory-bound BatchNorm, activations and concatenations of a growing "
    "feature stack, which cannot keep tensor cores full; 25-40% of peak is typical of "
    "such small convolutions")
#: Bytes a gradient value takes in the all-reduce: the weights, and so their
#: gradients, stay float32 under mixed precision.
GRADIENT_BYTES = 4


class StepCost(NamedTuple):
    """One training image's convolution FLOPs for one forward pass of each network at
    ``height`` x ``width``, and the gradient values a step all-reduces."""

    generator: int  # G
    discriminator: int  # D
    vgg: int  # V: VGG16 to block3_conv3; 0 without the perceptual term
    critic_steps: int
    gradient_values: int  # trainable parameters of the generator and the discriminator
    height: int
    width: int

    @property
    def generator_passes(self) -> int:
        """The generator's share of a step: forward and backward, 3G."""
        return 3 * self.generator

    @property
    def discriminator_passes(self) -> int:
        return (6 * self.critic_steps + 2) * self.discriminator

    @property
    def vgg_passes(self) -> int:
        return 3 * self.vgg

    @property
    def per_image(self) -> int:
        """FLOPs of one GAN step per training image: 3G + (6c + 2)D + 3V."""
        return self.generator_passes + self.discriminator_passes + self.vgg_passes

    @property
    def gradient_bytes(self) -> int:
        """What one all-reduce of both networks' gradients moves per step (S)."""
        return GRADIENT_BYTES * self.gradient_values


def step_cost(cfg: TrainConfig, height: int | None = None,
              width: int | None = None) -> StepCost:
    """What a step of ``cfg``'s networks costs per image at ``height`` x ``width``
    (default: the crop). The networks are built here with random weights (VGG16 too:
    its weights do not change the work)."""
    height = height or cfg.crop
    width = width or cfg.crop
    if not height or not width:
        raise DgfError("a run on whole images (crop: full) has no fixed size; give the "
                       "image size to count its step")
    generator = build_generator(channel_rate=cfg.channel_rate, blocks=cfg.blocks,
                                dropout=cfg.dropout,
                                residual=cfg.residual, batchnorm=cfg.batchnorm,
                                space_to_depth=cfg.space_to_depth)
    discriminator = build_discriminator(channel_rate=cfg.channel_rate, patch=cfg.patch)
    vgg = (conv_flops(PerceptualLoss(weights=None).features, height, width)
           if cfg.perceptual_weight > 0 else 0)
    values = count_params(generator)[0] + count_params(discriminator)[0]
    return StepCost(conv_flops(generator, height, width),
                    conv_flops(discriminator, height, width), vgg, cfg.critic_steps,
                    values, height, width)


def seconds_per_step(cost: StepCost, images: int, flops: tuple[float, float]
                     ) -> tuple[float, float]:
    """(shortest, longest) seconds for a step of ``images`` at ``flops`` (low, high)
    FLOP/s."""
    work = cost.per_image * images
    return work / flops[1], work / flops[0]


def gpu_flops() -> tuple[float, float]:
    """The sustained FLOP/s assumed of one H100 SXM: (low, high)."""
    return tuple(share * H100_BF16_PEAK for share in GPU_UTILISATION)


def gpu_images_per_second(cost: StepCost) -> tuple[float, float]:
    """(low, high) training images per second of one H100 SXM (estimate); also the
    pairs per second its loader must deliver."""
    low, high = gpu_flops()
    return low / cost.per_image, high / cost.per_image


def number(value: float) -> str:
    """``value`` for a message: whole with thousands separators from 10 up, else 2
    significant digits (1,339; 27; 7.9; 0.067)."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def span(low: float, high: float) -> str:
    """A range of seconds in the unit of its upper end: '8-27 s', '1.2-4 ms'."""
    scale, unit = (1, "s") if high >= 1 else (1e3, "ms")
    return f"{number(low * scale)}-{number(high * scale)} {unit}"


def cpu_warning(source: str, cost: StepCost, images: int, crops: bool = True) -> str:
    """The line a run meant for a GPU prints when TensorFlow sees none: the CPU step
    it is about to train, estimated from the FLOP count."""
    low, high = seconds_per_step(cost, images, CPU_FLOPS)
    shape = f"{cost.height}x{cost.width} {'crops' if crops else 'images'}"
    rates = "-".join(number(f / 1e9) for f in CPU_FLOPS)
    return (f"warning: {source} is meant for a GPU (accelerator: gpu) and TensorFlow sees "
            f"none; on this CPU a step (batch {images}, {shape}, about "
            f"{number(cost.per_image * images / 1e9)} GFLOP) takes roughly "
            f"{span(low, high)} (at {rates} GFLOP/s, what 2-core hosts sustained at "
            f"inference); continuing on the CPU")
