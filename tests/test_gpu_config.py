"""The GPU path on a CPU: what a training step costs (dgf.costs, on
dgf.tiling.conv_flops), precision auto, a config meant for a GPU on a machine
without one, and configs/gopro-gpu.yaml validated and trained at a tiny size."""
from __future__ import annotations

import keras
import pytest
from keras import layers

from dgf.config import TrainConfig
from dgf.costs import StepCost, cpu_warning, gpu_images_per_second, step_cost
from dgf.errors import DgfError
from dgf.losses import PerceptualLoss
from dgf.models import build_discriminator, build_generator, count_params
from dgf.tiling import conv_flops

# The paper's networks at 256x256 (channel rate 64, dgf.tiling.conv_flops), so the
# text below is checked without building them.
PAPER_256 = StepCost(generator=417_744_289_792, discriminator=1_566_572_544,
                     vgg=24_385_683_456, critic_steps=1, gradient_values=4_164_228,
                     height=256, width=256)


# --- counting ------------------------------------------------------------------------
def test_conv_flops_counts_strided_convolutions_and_pooling_at_their_output_size():
    image = keras.Input((None, None, 3))
    x = layers.Conv2D(4, 3, strides=2, padding="same")(image)  # 17 -> 9
    x = layers.MaxPooling2D(2)(x)  # valid: 9 -> 4
    x = layers.Conv2D(5, 3, padding="valid")(x)  # 4 -> 2
    x = layers.AveragePooling2D(2, padding="same")(x)  # 2 -> 1
    x = layers.Conv2D(2, 1)(x)
    model = keras.Model(image, x)
    expected = 2 * (9 * 9 * 9 * 3 * 4 + 2 * 2 * 9 * 4 * 5 + 1 * 1 * 1 * 5 * 2)
    assert conv_flops(model, 17, 17) == expected


def test_vgg_and_discriminator_counts_follow_their_strides_and_pools():
    # VGG16 to block3_conv3 on 32x32: two convs at 32, two at 16, three at 8.
    vgg = 2 * 9 * (32 * 32 * (3 * 64 + 64 * 64) + 16 * 16 * (64 * 128 + 128 * 128)
                   + 8 * 8 * (128 * 256 + 2 * 256 * 256))
    assert conv_flops(PerceptualLoss(weights=None).features, 32, 32) == vgg
    # The PatchGAN at channel rate 4: stride-2 convolutions, 16, 8, 4 and 2 px out.
    patchgan = 2 * 9 * (16 * 16 * 3 * 4 + 8 * 8 * 4 * 8 + 4 * 4 * 8 * 16 + 2 * 2 * 16 * 16)
    assert conv_flops(build_discriminator(channel_rate=4, patch=32), 32, 32) == patchgan


def test_step_cost_is_3g_8d_3v_of_the_networks_the_run_builds():
    cfg = TrainConfig(channel_rate=4, crop=32, patch=32, perceptual_weight=1.0)
    cost = step_cost(cfg)
    g = conv_flops(build_generator(channel_rate=4), 32, 32)
    d = conv_flops(build_discriminator(channel_rate=4, patch=32), 32, 32)
    v = conv_flops(PerceptualLoss(weights=None).features, 32, 32)
    assert cost[:3] == (g, d, v) and (cost.height, cost.width) == (32, 32)
    assert cost.per_image == 3 * g + 8 * d + 3 * v
    trainable = (count_params(build_generator(channel_rate=4))[0]
                 + count_params(build_discriminator(channel_rate=4, patch=32))[0])
    assert cost.gradient_values == trainable and cost.gradient_bytes == 4 * trainable
    # Two critic steps train D twice; no perceptual term, no VGG.
    two = step_cost(cfg.replace(critic_steps=2, perceptual_weight=0.0))
    assert two.per_image == 3 * g + 14 * d


def test_step_cost_of_whole_images_needs_a_size():
    cfg = TrainConfig(channel_rate=4, crop=None, patch=32, perceptual_weight=0.0)
    with pytest.raises(DgfError, match=r"whole images \(crop: full\) has no fixed size"):
        step_cost(cfg)
    assert step_cost(cfg, 64, 32)[5:] == (64, 32)


def test_the_estimates_divide_the_count_by_the_stated_throughputs():
    assert PAPER_256.per_image == 1_338_922_500_096  # 3G + 8D + 3V
    low, high = gpu_images_per_second(PAPER_256)  # 25-40% of 989 TFLOP/s
    assert (round(low), round(high)) == (185, 295)
    assert cpu_warning("configs/gopro-gpu.yaml", PAPER_256, 1) == (
        "warning: configs/gopro-gpu.yaml is meant for a GPU (accelerator: gpu) and "
        "TensorFlow sees none; on this CPU a step (batch 1, 256x256 crops, about 1,339 "
        "GFLOP) takes roughly 7.9-27 s (at 50-170 GFLOP/s, what 2-core hosts sustained "
        "at inference); continuing on the CPU")
    assert "batch 2, 256x256 images, about 2,678 GFLOP) takes roughly 16-54 s" in \
        cpu_warning("this run", PAPER_256, 2, crops=False)
