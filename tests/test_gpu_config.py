"""The GPU path on a CPU: what a training step costs (dgf.costs, on
dgf.tiling.conv_flops), precision auto, a config meant for a GPU on a machine
without one, and configs/gopro-gpu.yaml validated and trained at a tiny size."""
from __future__ import annotations

import json
from pathlib import Path

import keras
import pytest
import yaml
from keras import layers

from conftest import make_h5
from dgf.batching import BatchPlan
from dgf.config import TrainConfig, load_config_file
from dgf.costs import StepCost, cpu_warning, gpu_images_per_second, step_cost
from dgf.errors import DgfError
from dgf.loop import RunData
from dgf.losses import PerceptualLoss
from dgf.models import build_discriminator, build_generator, count_params
from dgf.runtime import training_precision
from dgf.tiling import conv_flops
from dgf.session import _say_hardware

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

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


@pytest.mark.slow
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


@pytest.mark.slow
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


# --- precision auto and a config meant for a GPU ----------------------------------------
@pytest.mark.parametrize("capabilities, expected", [
    ([], "fp32"),  # the CPU
    ([(9, 0)], "bf16"), ([(8, 0), (8, 6)], "bf16"),  # H100; A100 and an RTX 30
    ([(7, 0)], "fp16"), ([(8, 0), (7, 5)], "fp16"),  # V100; a T4 beside an A100
    ([(6, 1)], "fp32"), ([(0, 0)], "fp32"),  # a Pascal; no capability named
])
def test_precision_auto_follows_the_slowest_gpu(capabilities, expected):
    assert training_precision("auto", capabilities) == expected
    assert training_precision("fp16", capabilities) == "fp16"  # a setting is kept


def test_accelerator_takes_any_or_gpu(tmp_path):
    assert TrainConfig().accelerator == "any"
    with pytest.raises(DgfError, match=r"accelerator must be one of \('any', 'gpu'\), got 'tpu'"):
        TrainConfig(accelerator="tpu")
    path = tmp_path / "cfg.yaml"
    path.write_text("accelerator: tpu\n")
    with pytest.raises(DgfError, match=f"{path}: accelerator must be one of"):
        TrainConfig.from_dict(load_config_file(path), str(path))


def _hardware_lines(capsys, cfg: TrainConfig, gpus: list[str]) -> list[str]:
    """What dgf.session says of the hardware for ``cfg`` (its setting) on ``gpus``."""
    plan = BatchPlan(cfg.batch_size, 1, 1)
    resolved = cfg.replace(batch_size=1, precision=training_precision(
        cfg.precision, [(9, 0)] * len(gpus)))
    capsys.readouterr()
    _say_hardware(cfg, resolved, RunData(None, None, 1, plan), gpus, "configs/gpu.yaml")
    out, err = capsys.readouterr()
    assert not out
    return err.splitlines()


def test_a_gpu_config_warns_once_without_a_gpu_and_not_with_one(capsys, monkeypatch):
    import dgf.session

    counted = []
    monkeypatch.setattr(dgf.session, "step_cost", lambda cfg, h, w: counted.append((h, w))
                        or PAPER_256)
    cfg = TrainConfig(precision="auto", accelerator="gpu")
    assert _hardware_lines(capsys, cfg, []) == [
        "note: --precision auto: fp32 on the CPU (no GPU)",
        cpu_warning("configs/gpu.yaml", PAPER_256, 1)]
    assert counted == [(256, 256)]
    assert _hardware_lines(capsys, cfg, ["NVIDIA H100 80GB HBM3"] * 2) == [
        "note: --precision auto: bf16 on 2 x NVIDIA H100 80GB HBM3"]
    assert _hardware_lines(capsys, cfg.replace(accelerator="any", precision="fp32"), []) == []
    assert counted == [(256, 256)]  # nothing counted where nothing is said


@pytest.mark.slow
def test_the_gopro_config_is_valid_and_its_header_states_its_cost():
    path = CONFIGS / "gopro-gpu.yaml"
    cfg = TrainConfig.from_dict(load_config_file(path), str(path))
    paper = dict(crop=256, batch_size="auto", channel_rate=64, batchnorm=True, residual=True,
                 space_to_depth=1, patch=64, perceptual_weight=145.0, pixel_loss="l1",
                 pixel_weight=170.0, adversarial_weight=1.0, vgg_weights="imagenet",
                 g_lr=3e-4, d_lr=3e-4, beta_1=0.5, precision="auto", accelerator="gpu")
    assert {key: getattr(cfg, key) for key in paper} == paper
    header = path.read_text()
    assert ("build-hdf5 GOPRO_Large/ -o data/gopro.h5 --native   # 2103 + 1111 pairs at "
            "1280x720: about 16.6 GiB (17.8 GB)") in header
    # The header's estimate is what dgf.costs counts for these networks.
    assert step_cost(cfg) == PAPER_256
    low, high = gpu_images_per_second(PAPER_256)
    assert "1,339 GFLOP per training image" in header and "7.9-27 s" in header
    assert f"{low:.0f}-{high:.0f} images/s" in header
    epoch = (2103 / high, 2103 / low)
    run = (300 * epoch[0] / 60, 300 * epoch[1] / 60)
    assert f"takes {epoch[0]:.0f}-{epoch[1]:.0f} s of steps" in header
    assert f"{run[0]:.0f}-{run[1]:.0f} min" in header and cfg.epochs == 300


@pytest.fixture(scope="module")
def random_vgg_file(tmp_path_factory) -> Path:
    """VGG16 notop weights, random, as --vgg-weights takes them (the ImageNet file
    cannot be downloaded here; the work is the same)."""
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    path = tmp_path_factory.mktemp("vgg") / "vgg16_notop.weights.h5"
    vgg.save_weights(path)
    return path


@pytest.mark.slow
def test_the_gopro_config_at_a_tiny_size_trains_on_this_cpu(tmp_path, random_vgg_file,
                                                             capsys):
    """The same keys at small values, through dgf-train: one warning line (no GPU
    here), precision auto at fp32, the perceptual term trained, the settings kept."""
    from dgf.cli import train_main

    values = yaml.safe_load((CONFIGS / "gopro-gpu.yaml").read_text())
    tiny = {**values, "h5": str(make_h5(tmp_path / "pairs.h5", n_train=2, size=48)),
            "epochs": 1, "crop": 32, "channel_rate": 4, "patch": 32, "val_samples": 2,
            "eval_every": 1, "vgg_weights": str(random_vgg_file), "log_every": 1,
            "bn_recalibrate": 2, "eval_engine": "tensorflow", "eval_jit": "off"}
    config = tmp_path / "tiny-gpu.yaml"
    config.write_text(yaml.safe_dump(tiny))
    run = tmp_path / "run"
    assert train_main(["--config", str(config), "--run-dir", str(run), "--no-progress"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert warnings[0].startswith(f"warning: {config} is meant for a GPU (accelerator: gpu) "
                                  "and TensorFlow sees none; on this CPU a step (batch 1, "
                                  "32x32 crops, about ")
    assert "note: --precision auto: fp32 on the CPU (no GPU)" in err
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["kind"] == "step"]
    assert len(steps) == 2 and all(r["g_perceptual"] > 0 for r in steps)
    saved = json.loads((run / "config.json").read_text())
    assert (saved["precision"], saved["accelerator"], saved["global_batch"]) == ("auto", "gpu", 1)
