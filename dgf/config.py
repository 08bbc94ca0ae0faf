"""Training configuration: the only home of defaults.

A ``TrainConfig`` is resolved from three layers, later ones winning: the defaults
below, an optional YAML/JSON file (``--config``), then command-line flags. The
resolved config is written to ``RUN/config.json`` and read back on resume.

No TensorFlow import here, so ``--help`` and config checks stay fast.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from dgf.errors import DgfError
from dgf.fileio import write_text_atomic

PRECISIONS = ("fp32", "bf16", "fp16")
STRATEGIES = ("auto", "one", "mirrored", "multiworker")
LR_SCHEDULES = ("constant", "linear", "cosine")
PIXEL_LOSSES = ("l1", "l2", "charbonnier")

# Keys that decide the shape of the networks: a checkpoint made with other values
# cannot be restored, so a resumed run must keep them.
ARCHITECTURE_KEYS = ("channel_rate", "patch", "residual", "batchnorm")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on.

    Defaults follow the seed and the DGF authors: batch 1, 256x256 crops, Adam with
    lr 3e-4 and beta1 0.5, loss = 145 x perceptual + 170 x L1 + 1 x adversarial.
    """

    h5: str = "data/data.h5"
    run_dir: str | None = None  # None: runs/<timestamp>
    epochs: int = 10
    batch_size: int = 1
    crop: int | None = 256  # square random crop side; None trains on whole images
    augment: bool = True  # flips and 90-degree rotations, same for both images of a pair
    # Share of crops whose edge is snapped to the image's edge, per axis, so that
    # training sees image borders as whole-image inference does (0: uniform crops).
    edge_crops: float = 0.0
    cache: bool = False  # hold the decoded training split in memory

    channel_rate: int = 64
    dropout: float = 0.5
    patch: int = 64  # discriminator patch side
    # The generator outputs clip(blurred + r, -1, 1) with r's last conv starting at
    # zero (a fresh generator is the identity); False is the paper's exact layout.
    residual: bool = True
    # BatchNorm in the generator (the paper's layout); False drops it, as restoration
    # networks since EDSR do.
    batchnorm: bool = True

    perceptual_weight: float = 145.0
    l1_weight: float = 170.0  # weight of the pixel loss below
    pixel_loss: str = "l1"  # l1 | l2 (what PSNR measures) | charbonnier (smooth L1)
    ssim_weight: float = 0.0  # weight of 1 - SSIM (the reported metric's definition)
    adversarial_weight: float = 1.0
    vgg_weights: str = "imagenet"  # "imagenet" (Keras cache) or a path to a notop .h5

    g_lr: float = 3e-4
    d_lr: float = 3e-4
    beta_1: float = 0.5
    beta_2: float = 0.999
    critic_steps: int = 1  # discriminator updates per generator update
    lr_schedule: str = "constant"  # constant | linear (hold half, then decay to 0) | cosine
    # Epochs at the start trained on the content loss alone (no discriminator, no
    # adversarial term), as SRGAN/ESRGAN pretrain before the GAN starts.
    warmup_epochs: int = 0
    # Decay of an exponential moving average of the generator's weights, which is
    # what gets scored, snapshotted and saved; 0 uses the raw weights.
    ema_decay: float = 0.0

    precision: str = "fp32"
    jit: bool = False
    strategy: str = "auto"
    seed: int = 0

    save_every: int = 500  # steps between checkpoints (also saved at each epoch end)
    keep: int = 3  # checkpoints kept
    log_every: int = 10  # steps between TensorBoard / metrics.jsonl step records
    val_samples: int | None = None  # test pairs scored per epoch; None: whole test split
    strip_pairs: int = 4  # rows of the per-epoch sample strip
    snapshots: bool = True  # keep one generator per epoch for dgf-eval
    # Training batches over which BatchNorm's moving statistics are re-estimated at
    # each epoch end, before scoring (0 keeps the running averages as trained).
    bn_recalibrate: int = 20

    def __post_init__(self) -> None:
        _check(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DgfError(
                f"{source}: unknown key(s) {unknown}. Known keys: {sorted(known)}."
            )
        try:
            return cls(**dict(data))
        except TypeError as exc:  # pragma: no cover - dataclass signature errors
            raise DgfError(f"{source}: {exc}") from None


def _check(cfg: TrainConfig) -> None:
    def positive(name: str, allow_zero: bool = False) -> None:
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise DgfError(f"{name} must be a number, got {value!r}")
        if value < 0 or (value == 0 and not allow_zero):
            raise DgfError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")

    for name in ("epochs", "batch_size", "channel_rate", "patch", "critic_steps",
                 "save_every", "keep", "log_every", "strip_pairs"):
        positive(name)
        if not isinstance(getattr(cfg, name), int):
            raise DgfError(f"{name} must be an integer, got {getattr(cfg, name)!r}")
    for name in ("g_lr", "d_lr"):
        positive(name)
    for name in ("perceptual_weight", "l1_weight", "adversarial_weight", "ssim_weight"):
        positive(name, allow_zero=True)
    if not 0.0 <= cfg.dropout < 1.0:
        raise DgfError(f"dropout must be in [0, 1), got {cfg.dropout}")
    for name in ("beta_1", "beta_2"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise DgfError(f"{name} must be in [0, 1), got {getattr(cfg, name)}")
    if cfg.crop is not None:
        if not isinstance(cfg.crop, int) or cfg.crop <= 0:
            raise DgfError(f"crop must be a positive integer or null, got {cfg.crop!r}")
        if cfg.crop % cfg.patch:
            raise DgfError(
                f"crop {cfg.crop} is not a multiple of the discriminator patch {cfg.patch}; "
                f"pick a crop such as {max(cfg.patch, cfg.crop // cfg.patch * cfg.patch)} "
                f"or change --patch."
            )
    if not isinstance(cfg.edge_crops, (int, float)) or isinstance(cfg.edge_crops, bool) \
            or not 0.0 <= cfg.edge_crops <= 1.0:
        raise DgfError(f"edge_crops must be in [0, 1], got {cfg.edge_crops!r}")
    if not isinstance(cfg.warmup_epochs, int) or isinstance(cfg.warmup_epochs, bool) \
            or cfg.warmup_epochs < 0:
        raise DgfError(f"warmup_epochs must be an integer >= 0, got {cfg.warmup_epochs!r}")
    if not isinstance(cfg.ema_decay, (int, float)) or isinstance(cfg.ema_decay, bool) \
            or not 0.0 <= cfg.ema_decay < 1.0:
        raise DgfError(f"ema_decay must be in [0, 1) (0 turns the average off), "
                       f"got {cfg.ema_decay!r}")
    for name in ("residual", "batchnorm"):
        if not isinstance(getattr(cfg, name), bool):
            raise DgfError(f"{name} must be true or false, got {getattr(cfg, name)!r}")
    if cfg.pixel_loss not in PIXEL_LOSSES:
        raise DgfError(f"pixel_loss must be one of {PIXEL_LOSSES}, got {cfg.pixel_loss!r}")
    if not isinstance(cfg.bn_recalibrate, int) or cfg.bn_recalibrate < 0:
        raise DgfError(f"bn_recalibrate must be an integer >= 0, got {cfg.bn_recalibrate!r}")
    if cfg.val_samples is not None and cfg.val_samples <= 0:
        raise DgfError(f"val_samples must be > 0 or null, got {cfg.val_samples}")
    if cfg.precision not in PRECISIONS:
        raise DgfError(f"precision must be one of {PRECISIONS}, got {cfg.precision!r}")
    if cfg.strategy not in STRATEGIES:
        raise DgfError(f"strategy must be one of {STRATEGIES}, got {cfg.strategy!r}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise DgfError(f"lr_schedule must be one of {LR_SCHEDULES}, got {cfg.lr_schedule!r}")


def load_config_file(path: Path | str) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict of TrainConfig keys."""
    path = Path(path)
    if not path.is_file():
        raise DgfError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except (ValueError, ImportError) as exc:
        raise DgfError(f"config file {path} could not be parsed: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DgfError(f"config file {path} must hold a mapping of keys to values")
    # Accept dashes as in the command-line flags.
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def save_config(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config as JSON, atomically."""
    write_text_atomic(path, json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")


def read_config(path: Path) -> TrainConfig:
    return TrainConfig.from_dict(json.loads(Path(path).read_text(encoding="utf-8")), str(path))
