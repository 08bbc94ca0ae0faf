"""Training configuration and run folders: the only home of training settings.

Each setting is one ``TrainConfig`` field: its default, its type, and the help text,
group and choices that dgf-train's flags and the docs' flag table are built from
(:func:`settings`). A config is resolved from three layers, later ones winning: the
defaults below, an optional YAML/JSON file (``--config``), then command-line flags.
The resolved config is written to the run folder's ``config.json`` and read back on
resume (old key names, :data:`RENAMED_KEYS`, are still read). :class:`RunDir` names
every file of a run folder; :func:`resolve_config` decides whether a run folder is
new or resumed, and :func:`check_architecture` is the one place that refuses a
resume with other network shapes.

No TensorFlow import here, so ``--help`` and config checks stay fast.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import sys
import types
import typing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from dgf.batching import AUTO_BATCH, BATCH_RECORD_KEYS, BatchPlan
from dgf.checks import is_int, is_number
from dgf.errors import DgfError
from dgf.fileio import check_output, require_file, write_text_atomic
from dgf.options import (
    DEFAULT_ENGINE, DEFAULT_JIT, DEFAULT_PROTOCOL, DEFAULT_Y_CHANNEL, ENGINE_CHOICES, JIT_CHOICES,
    FLOAT_PRECISIONS, METRIC_PROTOCOLS,
)
from dgf.resume import check_architecture, check_resume_settings

STRATEGIES = ("auto", "one", "mirrored", "multiworker")
LR_SCHEDULES = ("constant", "linear", "cosine")
PIXEL_LOSSES = ("l1", "l2", "charbonnier")

# The architecture keys of the generator alone (what build_generator takes and a
# saved generator's metadata records as its layout).
GENERATOR_KEYS = ("channel_rate", "blocks", "residual", "batchnorm", "space_to_depth")
RUNS_ROOT = Path("runs")  # where new run folders go when --run-dir is not given


# The groups dgf-train's --help lists its flags under, in this order.
DATA, MODEL, LOSS, OPTIMISER, HARDWARE, RECORDS, SCORING = GROUPS = (
    "data", "model", "loss", "optimiser", "hardware and reproducibility",
    "checkpoints and logs", "per-epoch scoring")


def _setting(default: Any, group: str, help: str, *, flag: str | None = None,
             choices: tuple[Any, ...] | None = None, words: tuple[str, ...] = ()) -> Any:
    """A TrainConfig field with what dgf-train's flag and its docs say of it: the help
    text, the group it is listed under, its choices (checked by :func:`_check`),
    the words it takes besides values of its type (``batch_size``'s ``auto``) and,
    when it is not ``--`` + the name with dashes, its flag."""
    return dataclasses.field(default=default, metadata={
        "group": group, "help": help, "flag": flag, "choices": choices, "words": words})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on, one field per setting: its default,
    type, and (in the field's metadata, see :func:`_setting`) the help text, group
    and choices that dgf-train's flags are built from (:func:`settings`).

    Defaults follow the seed and the DGF authors: batch 1 per replica, 256x256 crops,
    Adam with lr 3e-4 and beta1 0.5, loss = 145 x perceptual + 170 x L1 (the pixel
    loss) + 1 x adversarial.
    """

    h5: str = _setting("data/data.h5", DATA, "HDF5 file made by build-hdf5")
    run_dir: str | None = _setting(
        None, DATA, "run folder (default: runs/<timestamp>); a folder with a checkpoint "
        "is resumed")
    epochs: int = _setting(10, DATA, "epochs to train in total")
    batch_size: int | str = _setting(
        AUTO_BATCH, DATA, "global batch size, split evenly over all replicas (of all "
        "workers); auto: 1 per replica, so the global batch is the number of replicas. "
        "The learning rate is not scaled with it", words=(AUTO_BATCH,))
    crop: int | None = _setting(
        256, DATA, "square random crop side; 'full' trains on whole images")
    augment: bool = _setting(
        True, DATA, "random flips and 90-degree rotations, the same for both images of a "
        "pair (on/off)")
    edge_crops: float = _setting(
        0.0, DATA, "share of crops snapped to the image edge, per axis, so training sees "
        "image borders as whole-image inference does (0-1; 0: uniform crops)")
    cache: bool = _setting(False, DATA, "hold the decoded training split in memory (on/off)")

    channel_rate: int = _setting(64, MODEL, "network width (64 is the paper's model)")
    blocks: int = _setting(
        10, MODEL, "dense blocks in the generator (10 is the paper's model); fewer train "
        "and run faster and reach less far")
    dropout: float = _setting(0.5, MODEL, "dropout rate in the dense blocks")
    patch: int = _setting(64, MODEL, "discriminator patch side")
    residual: bool = _setting(
        True, MODEL, "on: the generator outputs clip(blurred + r) with r's last conv "
        "starting at zero (a fresh generator is the identity); off: the paper's layout")
    batchnorm: bool = _setting(
        True, MODEL, "BatchNorm in the generator (on: the paper's layout; off: none, as "
        "EDSR-style restoration networks)")
    space_to_depth: int = _setting(
        1, MODEL, "1 | 2 | 4: run the generator's dense field at 1/s resolution "
        "(pixel-unshuffle in, pixel-shuffle out): s x the reach, about 1/s^2 the work per "
        "pixel; 1 is the paper's layout", choices=(1, 2, 4))

    perceptual_weight: float = _setting(
        145.0, LOSS, "weight of the VGG16 perceptual loss; 0 trains without VGG")
    pixel_weight: float = _setting(
        170.0, LOSS, "weight of the pixel loss, whichever --pixel-loss names")
    pixel_loss: str = _setting(
        "l1", LOSS, "l1 | l2 (what PSNR measures) | charbonnier (smooth L1)",
        choices=PIXEL_LOSSES)
    ssim_weight: float = _setting(
        0.0, LOSS, "weight of a 1 - SSIM loss term, the reported metric's definition "
        "(0: off)")
    adversarial_weight: float = _setting(1.0, LOSS, "weight of the adversarial loss")
    vgg_weights: str = _setting(
        "imagenet", LOSS, "'imagenet' (Keras download/cache in ~/.keras/models) or a path "
        "to vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    init_generator: str | None = _setting(
        None, LOSS, "start a new run from this saved generator's weights (a .keras file, "
        "or 'bundled' for the model dgf ships); same --channel-rate/--residual/"
        "--batchnorm/--space-to-depth as it was trained with. Not used when resuming")

    g_lr: float = _setting(3e-4, OPTIMISER, "generator learning rate")
    d_lr: float = _setting(3e-4, OPTIMISER, "discriminator learning rate")
    beta_1: float = _setting(0.5, OPTIMISER, "Adam beta1", flag="--beta1")
    beta_2: float = _setting(0.999, OPTIMISER, "Adam beta2", flag="--beta2")
    critic_steps: int = _setting(1, OPTIMISER, "discriminator updates per generator update")
    lr_schedule: str = _setting(
        "constant", OPTIMISER, "constant | linear (hold half, then decay to 0) | cosine",
        choices=LR_SCHEDULES)
    warmup_epochs: int = _setting(
        0, OPTIMISER, "first epochs trained on the content loss alone (no discriminator, "
        "no adversarial term), before the GAN starts, as SRGAN/ESRGAN pretrain")
    ema_decay: float = _setting(
        0.0, OPTIMISER, "decay of an exponential moving average of the generator's "
        "weights, which is what gets scored, snapshotted and saved (0: off, the raw "
        "weights; 0.999 is usual)")

    precision: str = _setting(
        "fp32", HARDWARE, "fp32 | bf16 | fp16 (mixed precision; fp16 uses loss scaling) | "
        "auto: bf16 on GPUs of compute capability >= 8.0, fp16 on 7.x, fp32 elsewhere",
        choices=(*FLOAT_PRECISIONS, "fp16", "auto"))  # fp16, auto: dgf-train's only
    accelerator: str = _setting(
        "any", HARDWARE, "any | gpu: meant for a GPU; where TensorFlow sees none, the run "
        "continues on the CPU with a warning of the step time to expect", choices=("any", "gpu"))
    jit: bool = _setting(False, HARDWARE, "compile the step with XLA (on/off)")
    strategy: str = _setting(
        "auto", HARDWARE, "auto | one | mirrored | multiworker (reads TF_CONFIG)",
        choices=STRATEGIES)
    collective_timeout: float = _setting(
        600.0, HARDWARE, "multiworker: seconds a worker waits for the others, at startup "
        "and in a collective (all-reduce), before it stops with an error (0: no limit)")
    seed: int = _setting(0, HARDWARE, "seed for weights, shuffling, crops and augmentation")

    save_every: int = _setting(
        500, RECORDS, "steps between checkpoints (also at each epoch end)")
    keep: int = _setting(3, RECORDS, "checkpoints to keep")
    log_every: int = _setting(
        10, RECORDS, "steps between metrics.jsonl / TensorBoard step records")

    val_samples: int | None = _setting(
        None, SCORING, "test pairs scored each epoch ('full' for the whole test split)")
    eval_every: int = _setting(
        1, SCORING, "score the test pairs, draw the strip and update generator_best.keras "
        "every N epochs and at the last, as BasicSR's val_freq (model files: every epoch)")
    strip_pairs: int = _setting(4, SCORING, "rows in the per-epoch sample strip")
    eval_jit: str = _setting(
        DEFAULT_JIT, SCORING, "XLA for the per-epoch scoring's generator call: auto "
        "(the faster of both, measured on the first epoch's shapes and cached per host) "
        "| on | off", choices=JIT_CHOICES)
    eval_engine: str = _setting(
        DEFAULT_ENGINE, SCORING, "what runs the per-epoch scoring's generator: tensorflow, "
        "onnxruntime or openvino (its ONNX conversion, redone every epoch since the weights "
        "change); auto measures on the first epoch and uses another engine only if it wins "
        "with that conversion counted", choices=ENGINE_CHOICES)
    crop_border: int = _setting(
        0, SCORING, "pixels removed at each side before the per-epoch PSNR/SSIM, as "
        "BasicSR's crop_border; 0 scores whole images, 8 judges the interior")
    metric_protocol: str = _setting(
        DEFAULT_PROTOCOL, SCORING, "per-epoch metric definitions (dgf.evaluate): skimage "
        "(scikit-image's defaults, 7x7 uniform SSIM window) | basicsr (BasicSR's "
        "calculate_psnr/calculate_ssim: 11x11 Gaussian, sigma 1.5, valid region); epoch "
        "records name it", choices=METRIC_PROTOCOLS)
    y_channel: bool = _setting(
        DEFAULT_Y_CHANNEL, SCORING, "score the per-epoch PSNR/SSIM on the BT.601 luma Y "
        "instead of RGB (on/off)")
    snapshots: bool = _setting(
        True, RECORDS, "keep one generator per epoch for dgf-eval (on/off)")
    bn_recalibrate: int = _setting(
        20, SCORING, "training batches over which BatchNorm statistics are re-estimated at "
        "each epoch end, before scoring (0: keep the running averages as trained)")

    def __post_init__(self) -> None:
        _check(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> "TrainConfig":
        """A config from flag or file values: text is read as :func:`coerce` says."""
        values = coerce(data, source)
        try:
            return cls(**values)
        except DgfError as exc:
            raise DgfError(f"{source}: {exc}" if source else str(exc)) from None


# --- one validator for flags, config files and the Python API -----------------
# Text (a command-line flag, a quoted YAML value, YAML's "3e-4", which PyYAML reads
# as a string) is read the same way wherever it comes from, by the field's type.
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_NO_LIMIT = ("none", "null", "full", "0")  # optional integers: crop, val_samples


def on_off(value: bool) -> str:
    """``"on"`` or ``"off"``: how flags and messages write a boolean setting (what
    :func:`parse_on_off` reads back)."""
    return "on" if value else "off"


def parse_on_off(text: str) -> bool:
    """'on'/'off' and friends (true/false, yes/no, 1/0), any case."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected on/off, true/false, yes/no or 1/0, got {text!r}")


def parse_optional_int(text: str) -> int | None:
    """An integer, or None for 'none', 'null', 'full' or 0 (no limit)."""
    if text.strip().lower() in _NO_LIMIT:
        return None
    return int(text)


def parse_float(text: str) -> float:
    return float(text)


_TEXT_PARSERS: dict[type, Callable[[str], Any]] = {
    bool: parse_on_off,
    int: int,
    float: parse_float,
    str: str,
}
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


class Setting(typing.NamedTuple):
    """What the docs and dgf-train's flag say of one TrainConfig field."""

    name: str
    flag: str
    group: str
    help: str
    choices: tuple[Any, ...] | None
    default: Any
    words: tuple[str, ...] = ()  # taken besides values of its type: batch_size's "auto"


@functools.cache
def settings() -> dict[str, Setting]:
    """name -> :class:`Setting` for every TrainConfig field, in declaration order:
    the one source of dgf-train's flags and of the docs' table of them."""
    found = {}
    for f in dataclasses.fields(TrainConfig):
        about = f.metadata
        flag = about["flag"] or "--" + f.name.replace("_", "-")
        found[f.name] = Setting(f.name, flag, about["group"], about["help"],
                                about["choices"], f.default, about["words"])
    return found


@functools.cache
def field_types() -> dict[str, tuple[type, bool]]:
    """name -> (base type, None allowed), read from TrainConfig's annotations, so a
    new field is validated as soon as it is declared. A field that also takes words
    (``int | str``, the words in its :class:`Setting`) has the first type as its base."""
    found = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        args = typing.get_args(hint)
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        optional = union and type(None) in args
        base = next(a for a in args if a is not type(None)) if union else hint
        found[name] = (base, optional)
    return found


def parse_words_or(parse: Callable[[str], Any], words: tuple[str, ...]) -> Callable[[str], Any]:
    """A text parser that reads one of ``words`` (any case) as itself and anything
    else with ``parse``: how ``--batch-size auto`` and ``--batch-size 4`` are read."""
    def parse_text(text: str) -> Any:
        word = text.strip().lower()
        return word if word in words else parse(text)

    return parse_text


def _kind_text(name: str) -> str:
    """What field ``name`` must be, for messages: "an integer or 'auto'"."""
    base, optional = field_types()[name]
    words = "".join(f" or {w!r}" for w in settings()[name].words)
    return f"{_TYPE_WORDS[base]}{words}{' or null' if optional else ''}"


def _coerce_value(name: str, value: Any) -> Any:
    base, optional = field_types()[name]
    if isinstance(value, str) and base is not str:
        parse = parse_optional_int if (base is int and optional) else _TEXT_PARSERS[base]
        try:
            value = parse_words_or(parse, settings()[name].words)(value)
        except ValueError:
            raise DgfError(f"{name} must be {_kind_text(name)}, got {value!r}") from None
    elif optional and base is int and is_number(value) and value == 0:
        value = None  # as '--crop 0' on the command line: no limit
    elif base is bool and is_number(value) and value in (0, 1):
        value = bool(value)  # as '--augment 1'
    elif base is float and is_int(value):
        value = float(value)
    _check_value(name, value)
    return value


# Keys renamed since runs were first written: old config files and the config.json of
# old run folders are still read, with a one-line note, so those runs resume.
RENAMED_KEYS = {"l1_weight": "pixel_weight"}


def renamed_keys(data: Mapping[str, Any], source: str | None = None) -> dict[str, Any]:
    """``data`` with old key names (:data:`RENAMED_KEYS`) read as today's, each noted
    on stderr; DgfError when a setting is given under both names."""
    where = f"{source}: " if source else ""
    data = dict(data)
    for old, new in RENAMED_KEYS.items():
        if old not in data:
            continue
        if new in data:
            raise DgfError(f"{where}{old} and {new} are the same setting ({old} is its "
                           f"old name); keep {new} only")
        print(f"note: {where}{old} is now called {new}; read {old}: {data[old]} as "
              f"{new}", file=sys.stderr)
        data = {new if key == old else key: value for key, value in data.items()}
    return data


def coerce(data: Mapping[str, Any], source: str | None = None) -> dict[str, Any]:
    """Check the keys of ``data`` and read text values by their field's type.

    DgfError names ``source`` (a file) when given, the key and the value.
    """
    data = renamed_keys(data, source)
    known = field_types()
    unknown = sorted(set(data) - set(known))
    where = f"{source}: " if source else ""
    if unknown:
        raise DgfError(f"{where}unknown key(s) {unknown}. Known keys: {sorted(known)}.")
    try:
        return {name: _coerce_value(name, value) for name, value in data.items()}
    except DgfError as exc:
        raise DgfError(f"{where}{exc}") from None


def _check_value(name: str, value: Any) -> None:
    """The type rule of one field: its declared type, finite floats."""
    base, optional = field_types()[name]
    if (value is None and optional) or (isinstance(value, str)
                                        and value in settings()[name].words):
        return
    ok = is_int(value, numpy=False) if base is int else isinstance(value, base)
    if base is float:
        ok = is_number(value, numpy=False)
        if ok and not math.isfinite(value):
            raise DgfError(f"{name} must be a finite number, got {value}")
    if not ok:
        raise DgfError(f"{name} must be {_kind_text(name)}, got {value!r}")


def _choices_text(choices: tuple[Any, ...]) -> str:
    """``(1, 2, 4)`` as "1, 2 or 4"; text choices as their tuple, ``('l1', 'l2')``."""
    if all(is_int(c) for c in choices):
        return f"{', '.join(map(str, choices[:-1]))} or {choices[-1]}"
    return f"one of {choices}"


def _check(cfg: TrainConfig) -> None:
    for name, about in settings().items():
        value = getattr(cfg, name)
        _check_value(name, value)
        if about.choices is not None and value not in about.choices:
            raise DgfError(f"{name} must be {_choices_text(about.choices)}, got {value!r}")

    def positive(name: str, allow_zero: bool = False) -> None:
        value = getattr(cfg, name)
        if isinstance(value, str):  # one of its words, checked above (batch_size auto)
            return
        if value < 0 or (value == 0 and not allow_zero):
            raise DgfError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")

    for name in ("epochs", "batch_size", "channel_rate", "blocks", "patch", "critic_steps",
                 "save_every", "keep", "log_every", "strip_pairs", "eval_every", "g_lr", "d_lr"):
        positive(name)
    for name in (*(n for n in settings() if n.endswith("_weight")), "collective_timeout"):
        positive(name, allow_zero=True)  # every loss weight: 0 turns its term off
    if cfg.crop is not None and cfg.crop % cfg.space_to_depth:
        raise DgfError(f"crop {cfg.crop} is not a multiple of space_to_depth "
                       f"{cfg.space_to_depth}; pick a crop that is")
    if not 0.0 <= cfg.dropout < 1.0:
        raise DgfError(f"dropout must be in [0, 1), got {cfg.dropout}")
    for name in ("beta_1", "beta_2"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise DgfError(f"{name} must be in [0, 1), got {getattr(cfg, name)}")
    if cfg.crop is not None:
        if cfg.crop <= 0:
            raise DgfError(f"crop must be a positive integer or null, got {cfg.crop!r}")
        if cfg.crop % cfg.patch:
            raise DgfError(
                f"crop {cfg.crop} is not a multiple of the discriminator patch {cfg.patch}; "
                f"pick a crop such as {max(cfg.patch, cfg.crop // cfg.patch * cfg.patch)} "
                f"or change --patch."
            )
    # Types are checked by coerce() from the field annotations; ranges here.
    if not 0.0 <= cfg.edge_crops <= 1.0:
        raise DgfError(f"edge_crops must be in [0, 1], got {cfg.edge_crops!r}")
    if cfg.warmup_epochs < 0:
        raise DgfError(f"warmup_epochs must be an integer >= 0, got {cfg.warmup_epochs!r}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise DgfError(f"ema_decay must be in [0, 1) (0 turns the average off), "
                       f"got {cfg.ema_decay!r}")
    if cfg.bn_recalibrate < 0:
        raise DgfError(f"bn_recalibrate must be an integer >= 0, got {cfg.bn_recalibrate!r}")
    if cfg.crop_border < 0:
        raise DgfError(f"crop_border must be an integer >= 0, got {cfg.crop_border!r}")
    if cfg.val_samples is not None and cfg.val_samples <= 0:
        raise DgfError(f"val_samples must be > 0 or null, got {cfg.val_samples}")


def load_config_file(path: Path | str) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict of TrainConfig keys, values read
    as :func:`coerce` says; DgfError names the file."""
    path = require_file(path, "config file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DgfError(f"config file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise DgfError(f"config file {path} is not UTF-8 text") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:  # YAML's own text spans lines and names no file
            detail = f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
        else:
            detail = " ".join(str(exc).split())
        raise DgfError(f"config file {path} could not be parsed: {detail}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DgfError(f"config file {path} must hold a mapping of keys to values")
    # Accept dashes as in the command-line flags.
    return coerce({str(k).replace("-", "_"): v for k, v in data.items()}, str(path))


def save_config(cfg: TrainConfig, path: Path, batch: BatchPlan | None = None) -> None:
    """Write the resolved config as JSON, atomically, with ``batch``'s record (the
    replicas, per-replica and global batch the run trains with) when given."""
    data = {**cfg.to_dict(), **(batch.record() if batch is not None else {})}
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_config(path: Path) -> TrainConfig:
    """The config saved in a run folder; DgfError naming the file when it is damaged."""
    return read_run_config(path)[0]


def read_run_config(path: Path) -> tuple[TrainConfig, BatchPlan | None]:
    """A run folder's config.json: the config, and the batch it records
    (:meth:`BatchPlan.record`; None for a run written before it was). DgfError naming
    the file when it is damaged."""
    path = Path(path)
    damaged = (
        f"{path} is damaged ({{}}); restore it from a copy, or start a new --run-dir"
    )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise DgfError(damaged.format(f"not JSON: {exc}")) from None
    if not isinstance(data, dict):
        raise DgfError(damaged.format("not a JSON object"))
    settings_only = {k: v for k, v in data.items() if k not in BATCH_RECORD_KEYS}
    try:
        cfg = TrainConfig.from_dict(renamed_keys(settings_only, str(path)))
        recorded = any(key in data for key in BATCH_RECORD_KEYS)
        return cfg, BatchPlan.from_record(cfg.batch_size, data) if recorded else None
    except (DgfError, ValueError) as exc:
        raise DgfError(damaged.format(exc)) from None


# --- run folders -------------------------------------------------------------
_SNAPSHOT_NAME = re.compile(r"^generator_epoch_(\d+)\.keras$")


@dataclass(frozen=True)
class RunDir:
    """A run folder's layout: every file dgf-train writes there and dgf-eval reads is
    named here, once. Epochs are counted from 1, as the file names are."""

    path: Path

    def __init__(self, path: Path | str) -> None:
        object.__setattr__(self, "path", Path(path))

    config = property(lambda self: self.path / "config.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    #: TensorFlow's index of the checkpoints; a run folder with one is resumed.
    checkpoint_index = property(lambda self: self.checkpoints / "checkpoint")
    metrics_log = property(lambda self: self.path / "metrics.jsonl")
    tensorboard = property(lambda self: self.path / "tensorboard")
    samples = property(lambda self: self.path / "samples")
    snapshots = property(lambda self: self.path / "snapshots")
    generator = property(lambda self: self.path / "generator.keras")  # the latest
    best = property(lambda self: self.path / "generator_best.keras")
    #: Where dgf-eval --run writes when given no --out.
    eval = property(lambda self: self.path / "eval")

    def sample(self, epoch: int) -> Path:
        return self.samples / f"epoch_{epoch:04d}.png"

    def snapshot(self, epoch: int) -> Path:
        return self.snapshots / f"generator_epoch_{epoch:04d}.keras"

    def find_snapshots(self) -> dict[int, Path]:
        """Map epoch -> its snapshot file, in epoch order."""
        found = {}
        if self.snapshots.is_dir():
            for path in self.snapshots.iterdir():
                match = _SNAPSHOT_NAME.match(path.name)
                if match and path.is_file():
                    found[int(match.group(1))] = path
        return dict(sorted(found.items()))

    def has_checkpoint(self) -> bool:
        return self.checkpoint_index.is_file()

    def read_config(self) -> TrainConfig:
        """The config the run was trained with (:func:`read_config`); DgfError naming
        the file when it is missing or damaged."""
        if not self.config.is_file():
            raise DgfError(f"{self.config} not found")
        return read_config(self.config)


def has_checkpoint(run_dir: Path | str) -> bool:
    return RunDir(run_dir).has_checkpoint()


def latest_run(root: Path = RUNS_ROOT) -> Path:
    """The most recently modified run folder under ``root`` that has a checkpoint."""
    runs = [p for p in Path(root).glob("*") if has_checkpoint(p)] if Path(root).is_dir() else []
    if not runs:
        raise DgfError(
            f"--resume: no run with a checkpoint under {root}/; pass --run-dir RUN"
        )
    return max(runs, key=lambda p: RunDir(p).checkpoint_index.stat().st_mtime)


def saved_config(run_dir: Path | str) -> TrainConfig:
    """The config a run folder was trained with; DgfError when it has none."""
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise DgfError(f"{run_dir} has checkpoints but no config.json; cannot resume")
    return run.read_config()


def new_run_dir(runs_root: Path = RUNS_ROOT) -> Path:
    """A fresh ``runs_root/<timestamp>`` folder name (``-2``, ``-3``... if taken)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir, n = runs_root / stamp, 1
    while run_dir.exists():
        n += 1
        run_dir = runs_root / f"{stamp}-{n}"
    return run_dir


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
    the architecture and, for a multi-worker run, the keys that decide its batches
    (:mod:`dgf.resume`). Nothing here loads
    TensorFlow, so a refused resume answers at once.
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(load_config_file(config_file))
    values.update(overrides or {})
    run_dir = values.get("run_dir")
    if run_dir is None and resume:
        run_dir = str(latest_run(runs_root))
    if run_dir is not None:
        check_output(run_dir, folder=True)  # a file there, or no permission: say so now
    resuming = run_dir is not None and has_checkpoint(run_dir)
    if resume and not resuming:
        raise DgfError(f"--resume: {run_dir} has no checkpoint to resume from")
    if resuming:
        saved = saved_config(run_dir)
        check_architecture(saved, values, run_dir)
        values = {**saved.to_dict(), **values}
    if run_dir is None:
        run_dir = new_run_dir(runs_root)
    values["run_dir"] = str(run_dir)
    cfg = TrainConfig.from_dict(values)
    if resuming:
        check_resume_settings(cfg, saved, run_dir)
    return cfg, resuming
