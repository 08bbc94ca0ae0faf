"""Command-line entry points: argument parsing only; the work lives in the package.

Every entry point turns a DgfError into ``error: <message>`` on stderr and exit
status 2, so users see what to fix instead of a traceback.

No option's choices or default is written here: each parser imports them from the
module that owns them: the data commands' from :mod:`dgf.sources`, :mod:`dgf.hdf5`
and :mod:`dgf.synth` (constants, and the keyword defaults of the function the
command calls), the trainer's from :mod:`dgf.config`, the inference commands' from
:mod:`dgf.options`. None of those imports TensorFlow, so every ``--help`` stays
fast; the modules that run a model are imported only once the arguments are parsed.
"""
from __future__ import annotations

import argparse
import inspect
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator, Sequence

from dgf import options
from dgf.errors import DgfError


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def _defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    """The keyword defaults of ``fn``, the function a command calls: the one home of
    the defaults of the command's options."""
    return {
        name: param.default
        for name, param in inspect.signature(fn).parameters.items()
        if param.default is not inspect.Parameter.empty
    }


def _run(fn: Callable[[], int | None], program: bool = False) -> int:
    """Run a command's work at the one error boundary. ``program``: this process
    exists to run the command (a console script, argv from sys.argv), so after an
    interrupt nothing is left to protect and later signals stay ignored until exit."""
    # TensorFlow's C++ INFO/WARNING lines (oneDNN notices, tf.data optimisation
    # notes) drown the progress bars; errors still show. Users can set it themselves.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The handlers stay in place while the outcome is printed, so a second Ctrl-C
    # cannot turn the "interrupted" line into a traceback.
    with _interrupts_stop_once(program):
        try:
            status = fn()
        except DgfError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            # Outputs already say "cannot write PATH" (dgf.fileio.OutputError); anything
            # else the file system refuses still gets one line, not a traceback.
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    return int(status or 0)


@contextmanager
def _interrupts_stop_once(program: bool = False) -> Iterator[None]:
    """Ctrl-C and SIGTERM (a job scheduler, ``kill``) both stop a command the same
    way: the first raises KeyboardInterrupt, so temporary files are removed and
    worker processes stopped on the way out; later ones are ignored, so the
    cleanup is not cut short (it takes well under a second). dgf-train installs
    its own handler around the training loop (stop after this step, save).
    With ``program``, signals stay ignored after an interrupt until the process
    exits, so a second Ctrl-C cannot kill it on its way out (status -2, not 130);
    called from Python with an argv list, the caller's handlers come back."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    stopping = False

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, signal.SIG_IGN if stopping and program else previous)


# --- build-hdf5 -------------------------------------------------------------
def build_hdf5_main(argv: Sequence[str] | None = None) -> int:
    """``build-hdf5 JPEG_DIR``: pack sharp/blurred pairs into one HDF5 file."""
    from dgf import hdf5, sources

    defaults = _defaults(hdf5.build_hdf5)
    p = _parser(
        "build-hdf5",
        "Pack pairs of sharp and blurred images into one HDF5 file with train, test "
        "(and val, if present) splits. JPEG_DIR holds train/ and test/ folders of "
        "side-by-side images (left sharp, right blurred) or paired folders "
        "(GOPRO's SCENE/sharp + SCENE/blur or SCENE/blur_gamma, or A = blurred + "
        "B = sharp). Instead of JPEG_DIR, --pairs-list reads one list of pairs per "
        "split (RealBlur's *_list.txt).",
    )
    p.add_argument(
        "jpeg_dir", type=Path, metavar="JPEG_DIR", nargs="?", default=None,
        help="folder holding train/ and test/ (omit with --pairs-list)",
    )
    p.add_argument(
        "--pairs-list",
        action="append",
        metavar="SPLIT=FILE",
        default=argparse.SUPPRESS,
        help="read SPLIT's pairs from FILE instead of JPEG_DIR: one pair per line, two "
        "paths relative to FILE's folder, in --order; repeat per split, train and test "
        "needed, e.g. --pairs-list train=RealBlur_J_train_list.txt "
        "--pairs-list test=RealBlur_J_test_list.txt",
    )
    p.add_argument(
        "--blur-folder",
        choices=sources.BLUR_FOLDERS,
        default=defaults["blur_folder"],
        help="GOPRO layout: the folder beside SCENE/sharp read as blurred (blur is what "
        "most papers report); a scene without it is skipped",
    )
    p.add_argument(
        "-o", "--output", type=Path, default=Path(defaults["output"]), help="HDF5 file to write"
    )
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--size", type=int, default=defaults["size"],
                       help="resize each image to N x N (LANCZOS)")
    shape.add_argument(
        "--native",
        action="store_true",
        help="keep native resolution (every pair of a split must share one size)",
    )
    p.add_argument(
        "--layout",
        choices=("auto", *sources.LAYOUTS),
        default=defaults["layout"],
        help="input layout; auto picks paired when train/ has sharp+blur (or blur_gamma) "
        "or A+B folders",
    )
    p.add_argument(
        "--order",
        choices=sources.ORDERS,
        default=defaults["order"],
        help="which half of a side-by-side image is sharp (left-right), or which path "
        "of a --pairs-list line (first-second; the default reads sharp then blurred, "
        "RealBlur's gt then blur)",
    )
    p.add_argument(
        "--compression",
        choices=hdf5.COMPRESSIONS,
        default=defaults["compression"],
        help="HDF5 compression of the image datasets (none reads fastest)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=argparse.SUPPRESS,
        help="decoding processes; all cores when omitted, 1 decodes in this process",
    )
    p.add_argument(
        "--on-error",
        choices=hdf5.ON_ERROR,
        default=defaults["on_error"],
        help="skip unreadable images (listed in the summary) or stop at the first",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = p.parse_args(argv)

    def work() -> int:
        report = hdf5.build_hdf5(
            args.jpeg_dir,
            args.output,
            size=args.size,
            native=args.native,
            layout=args.layout,
            order=args.order,
            blur_folder=args.blur_folder,
            pairs_lists=_pairs_lists(getattr(args, "pairs_list", None)),
            compression=args.compression,
            workers=getattr(args, "workers", None),
            on_error=args.on_error,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
        print(report.summary())
        return 0

    return _run(work, program=argv is None)


def _pairs_lists(values: Sequence[str] | None) -> dict[str, Path] | None:
    """``--pairs-list SPLIT=FILE`` values as ``{split: FILE}``; DgfError for a value
    without ``SPLIT=`` or a split given twice."""
    if not values:
        return None
    lists: dict[str, Path] = {}
    for value in values:
        split, sep, file = value.partition("=")
        if not sep or not split or not file:
            raise DgfError(
                f"--pairs-list {value}: expected SPLIT=FILE, one per split, e.g. "
                f"--pairs-list train=RealBlur_J_train_list.txt "
                f"--pairs-list test=RealBlur_J_test_list.txt."
            )
        if split in lists:
            raise DgfError(
                f"--pairs-list: split '{split}' given twice ({lists[split]} and {file})."
            )
        lists[split] = Path(file)
    return lists


# --- dgf-make-pairs ---------------------------------------------------------
def make_pairs_main(argv: Sequence[str] | None = None) -> int:
    """``dgf-make-pairs [SHARP_DIR] OUT_DIR``: synthetic blurred/sharp pairs."""
    from dgf import synth

    defaults = _defaults(synth.make_pairs)
    parser = _parser(
        "dgf-make-pairs",
        "Blur sharp photos with random camera-shake kernels and write side-by-side "
        "sharp|blurred pairs (the input of build-hdf5) to OUT_DIR/train and "
        "OUT_DIR/test, each with its kernel as NAME.kernel.npy. Whole photos are "
        "split between train and test. Photos smaller than --size are upscaled; "
        "crop borders are blurred with the photo around them (mirrored past its edge).",
    )
    parser.usage = "%(prog)s [options] (SHARP_DIR | --sample-photos) OUT_DIR"
    parser.add_argument("dirs", nargs="+", type=Path, metavar="[SHARP_DIR] OUT_DIR",
                        help="folder of sharp photos (searched recursively for "
                        ".jpg/.jpeg/.png), then the output folder")
    parser.add_argument("--sample-photos", action="store_true",
                        help="use the photos bundled with scikit-image instead of SHARP_DIR")
    parser.add_argument("--per-image", type=int, default=defaults["per_image"],
                        help="random crops, each with its own kernel, per photo")
    parser.add_argument("--size", type=int, default=defaults["size"],
                        help="side of the square crops")
    parser.add_argument("--test-fraction", type=float, default=defaults["test_fraction"],
                        help="share of the source photos that go to test (0: no test split)")
    parser.add_argument("--seed", type=int, default=defaults["seed"],
                        help="random seed; the same seed gives byte-identical files")
    parser.add_argument("--kernel-size", type=int, default=defaults["kernel_size"],
                        help="odd side of the kernel canvas in pixels")
    parser.add_argument("--strength", type=float, default=defaults["strength"],
                        help="camera shake in (0, 1]: path length up to "
                        "1.5*strength*(kernel-size - 1) px and how jerky it is")
    parser.add_argument("--noise", type=float, default=defaults["noise"],
                        help="std of Gaussian noise added to the blurred half, in 8-bit levels")
    parser.add_argument("--format", choices=synth.OUTPUT_FORMATS, default=defaults["fmt"],
                        help="pair image format; png is lossless")
    parser.add_argument("--quality", type=int, default=defaults["quality"],
                        help="JPEG quality (1-100)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace pairs and kernels already in OUT_DIR")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    def work() -> int:
        if args.sample_photos:
            if len(args.dirs) != 1:
                raise DgfError(
                    "with --sample-photos give only OUT_DIR (no SHARP_DIR); got "
                    f"{' '.join(str(d) for d in args.dirs)}."
                )
            sharp_dir, out_dir = None, args.dirs[0]
        else:
            if len(args.dirs) != 2:
                raise DgfError(
                    "give SHARP_DIR and OUT_DIR, or --sample-photos and OUT_DIR; got "
                    f"{len(args.dirs)} folder(s): {' '.join(str(d) for d in args.dirs)}."
                )
            sharp_dir, out_dir = args.dirs
        report = synth.make_pairs(
            sharp_dir, out_dir, per_image=args.per_image, size=args.size,
            test_fraction=args.test_fraction, seed=args.seed,
            kernel_size=args.kernel_size, strength=args.strength, noise=args.noise,
            quality=args.quality, fmt=args.format, sample_photos=args.sample_photos,
            overwrite=args.overwrite, progress=not args.no_progress,
        )
        print(report.summary())
        return 0

    return _run(work, program=argv is None)


# --- dgf-train --------------------------------------------------------------
def _on_off(text: str) -> bool:
    from dgf.config import parse_on_off

    try:
        return parse_on_off(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _optional_int(text: str) -> int | None:
    from dgf.config import parse_optional_int

    try:
        return parse_optional_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer or 'full', got {text!r}") from None


# (flag, config key, type, help). Defaults live in dgf.config.TrainConfig only. The
# types only turn text into values (with dgf.config's parsers, as config files do);
# what a value may be is checked once, by TrainConfig.
_TRAIN_FLAGS = (
    ("--h5", "h5", str, "HDF5 file made by build-hdf5"),
    ("--run-dir", "run_dir", str, "run folder (default: runs/<timestamp>); a folder "
     "with a checkpoint is resumed"),
    ("--epochs", "epochs", int, "epochs to train in total"),
    ("--batch-size", "batch_size", int, "global batch size (split over replicas)"),
    ("--crop", "crop", _optional_int, "square random crop side; 'full' trains on whole images"),
    ("--augment", "augment", _on_off, "random flips and 90-degree rotations (on/off)"),
    ("--edge-crops", "edge_crops", float, "share of crops snapped to the image edge, per "
     "axis, so training sees image borders (0-1)"),
    ("--cache", "cache", _on_off, "hold the training split in memory (on/off)"),
    ("--channel-rate", "channel_rate", int, "network width (64 is the paper's model)"),
    ("--dropout", "dropout", float, "dropout rate in the dense blocks"),
    ("--patch", "patch", int, "discriminator patch side"),
    ("--residual", "residual", _on_off, "on: the generator outputs clip(blurred + r) with r "
     "starting at zero (a fresh generator is the identity); off: the paper's layout"),
    ("--batchnorm", "batchnorm", _on_off, "BatchNorm in the generator (on: the paper's "
     "layout; off: none, as EDSR-style restoration networks)"),
    ("--space-to-depth", "space_to_depth", int, "1 | 2 | 4: run the generator's dense "
     "field at 1/s resolution (pixel-unshuffle in, pixel-shuffle out): s x the reach, "
     "about 1/s^2 the work per pixel; 1 is the paper's layout"),
    ("--perceptual-weight", "perceptual_weight", float, "weight of the VGG16 perceptual "
     "loss; 0 trains without VGG"),
    ("--l1-weight", "l1_weight", float, "weight of the pixel loss (--pixel-loss)"),
    ("--pixel-loss", "pixel_loss", str, "l1 | l2 (what PSNR measures) | charbonnier"),
    ("--ssim-weight", "ssim_weight", float, "weight of a 1 - SSIM loss term (0: off)"),
    ("--adversarial-weight", "adversarial_weight", float, "weight of the adversarial loss"),
    ("--vgg-weights", "vgg_weights", str, "'imagenet' (Keras download/cache in "
     "~/.keras/models) or a path to vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ("--init-generator", "init_generator", str, "start a new run from this saved "
     "generator's weights (a .keras file, or 'bundled' for the model dgf ships); same "
     "--channel-rate/--residual/--batchnorm/--space-to-depth as it was trained with. Not used when resuming"),
    ("--g-lr", "g_lr", float, "generator learning rate"),
    ("--d-lr", "d_lr", float, "discriminator learning rate"),
    ("--beta1", "beta_1", float, "Adam beta1"),
    ("--beta2", "beta_2", float, "Adam beta2"),
    ("--critic-steps", "critic_steps", int, "discriminator updates per generator update"),
    ("--warmup-epochs", "warmup_epochs", int, "first epochs trained on the content loss "
     "alone, before the GAN starts"),
    ("--ema-decay", "ema_decay", float, "exponential moving average of the generator's "
     "weights, used for scoring and saving (0: off; 0.999 is usual)"),
    ("--lr-schedule", "lr_schedule", str, "constant | linear (hold half, then to 0) | cosine"),
    ("--precision", "precision", str, "fp32 | bf16 | fp16 (mixed precision; fp16 uses "
     "loss scaling)"),
    ("--jit", "jit", _on_off, "compile the step with XLA (on/off)"),
    ("--strategy", "strategy", str, "auto | one | mirrored | multiworker (reads TF_CONFIG)"),
    ("--collective-timeout", "collective_timeout", float, "multiworker: seconds a worker "
     "waits for the others, at startup and in a step, before it stops with an error "
     "(0: no limit)"),
    ("--seed", "seed", int, "seed for weights, shuffling, crops and augmentation"),
    ("--save-every", "save_every", int, "steps between checkpoints (also at each epoch end)"),
    ("--keep", "keep", int, "checkpoints to keep"),
    ("--log-every", "log_every", int, "steps between metrics.jsonl / TensorBoard records"),
    ("--val-samples", "val_samples", _optional_int, "test pairs scored each epoch "
     "('full' for the whole test split)"),
    ("--strip-pairs", "strip_pairs", int, "rows in the per-epoch sample strip"),
    ("--crop-border", "crop_border", int, "pixels removed at each side before the "
     "per-epoch PSNR/SSIM, as BasicSR's crop_border; 8 judges the interior"),
    ("--metric-protocol", "metric_protocol", str, "per-epoch metric definitions: skimage "
     "(7x7 uniform SSIM window) | basicsr (11x11 Gaussian, sigma 1.5, valid region)"),
    ("--y-channel", "y_channel", _on_off, "score the per-epoch PSNR/SSIM on the BT.601 "
     "luma Y instead of RGB (on/off)"),
    ("--eval-every", "eval_every", int, "score the test pairs, draw the strip and update "
     "generator_best.keras every N epochs and at the last (model files: every epoch)"),
    ("--snapshots", "snapshots", _on_off, "keep one generator per epoch for dgf-eval (on/off)"),
    ("--bn-recalibrate", "bn_recalibrate", int, "training batches over which BatchNorm "
     "statistics are re-estimated at each epoch end, before scoring (0: off)"),
)


def train_main(argv: Sequence[str] | None = None) -> int:
    from dgf.config import TrainConfig

    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="dgf-train",
        description="Train the Deep Generative Filter GAN on an HDF5 file of pairs. "
        "Precedence: defaults < --config file < flags. Re-running into a run folder "
        "that has a checkpoint resumes it.",
    )
    parser.add_argument("--config", type=Path, help="YAML or JSON file of config keys")
    parser.add_argument("--resume", action="store_true",
                        help="resume --run-dir, or the newest run under runs/")
    parser.add_argument("--cpu-devices", type=int, default=None, metavar="N",
                        help="split the CPU into N logical devices at startup, so that "
                        "--strategy mirrored trains N replicas on a machine without GPUs "
                        "(default: one CPU device)")
    parser.add_argument("--local-workers", type=int, default=None, metavar="N",
                        help="start N --strategy multiworker processes on this machine, "
                        "each with its own TF_CONFIG on a free port of 127.0.0.1, pass "
                        "them the other flags and prefix their output with [worker I]; "
                        "fails (and stops the others) if any worker fails")
    for flag, key, kind, text in _TRAIN_FLAGS:
        default = getattr(defaults, key)
        parser.add_argument(flag, dest=key, type=kind, default=argparse.SUPPRESS,
                            help=f"{text} (default: {default})")
    args = vars(parser.parse_args(argv))
    config_file = args.pop("config")
    resume = args.pop("resume")
    cpu_devices = args.pop("cpu_devices")
    local_workers = args.pop("local_workers")

    def work() -> int:
        from dgf import distributed
        from dgf.config import resolve_config
        from dgf.train import TrainingInterrupted, train

        if local_workers is not None:
            return _launch_workers(local_workers, args, config_file, resume, cpu_devices)
        if cpu_devices is not None:
            distributed.split_cpu(cpu_devices)  # before anything starts TensorFlow
        cfg, resuming = resolve_config(args, config_file, resume=resume)
        try:
            result = train(cfg, resume=resuming)
        except TrainingInterrupted as exc:
            print(str(exc), file=sys.stderr)
            return 130
        print(f"run folder: {result.run_dir}")
        return 0

    return _run(work, program=argv is None)


def _launch_workers(count, args, config_file, resume, cpu_devices) -> int:
    """``dgf-train --local-workers N``: the run folder is chosen once, here, and every
    worker gets the same flags with ``--strategy multiworker``."""
    from dgf import distributed
    from dgf.config import resolve_config

    if args.get("strategy", "multiworker") != "multiworker":
        raise DgfError(f"--local-workers runs --strategy multiworker; drop --strategy "
                       f"{args['strategy']}")
    values = {**args, "strategy": "multiworker"}
    cfg, _ = resolve_config(values, config_file, resume=resume)
    values["run_dir"] = cfg.run_dir
    extra = [*(["--config", str(config_file)] if config_file is not None else []),
             *(["--resume"] if resume else []),
             *(["--cpu-devices", str(cpu_devices)] if cpu_devices is not None else [])]
    flags = [(flag, key) for flag, key, _, _ in _TRAIN_FLAGS]
    return distributed.launch_local_workers(count, distributed.worker_argv(values, flags, extra))


# --- dgf-eval ---------------------------------------------------------------
def eval_main(argv: Sequence[str] | None = None) -> int:
    parser = _parser(
        "dgf-eval",
        "Score generators with PSNR/SSIM and draw sample strips "
        "(sharp | blurred | deblurred). --run scores every per-epoch snapshot of a "
        "training run into RUN/eval/; --model scores one saved generator.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--run", type=Path, help="training run folder (RUN/snapshots/*.keras)")
    mode.add_argument("--model", type=Path, help="one saved generator (.keras)")
    parser.add_argument("--h5", type=Path, default=None,
                        help="HDF5 pairs file; required with --model, default for --run: "
                        "the run's config.json")
    parser.add_argument("--split", default=options.DEFAULT_EVAL_SPLIT,
                        help="split of the HDF5 file to score")
    parser.add_argument("--strips", type=int, default=options.DEFAULT_STRIPS,
                        help="pairs (rows) in each sample strip, evenly spaced over the split")
    parser.add_argument("--batch-size", type=int, default=options.DEFAULT_EVAL_BATCH,
                        help="images per generator call")
    parser.add_argument("--limit", type=int, default=None,
                        help="score only this many pairs, evenly spaced over the split "
                        "(default: all)")
    parser.add_argument("-o", "--out", type=Path, default=None,
                        help="output folder (default: RUN/eval, or <model>_eval next to "
                        "the model)")
    parser.add_argument("--force", action="store_true",
                        help="--run: re-score epochs already in metrics.csv")
    parser.add_argument("--overwrite", action="store_true",
                        help="--model: replace existing summary.json/per_image.csv/strip.png")
    parser.add_argument("--precision", choices=options.PRECISIONS,
                        default=options.DEFAULT_PRECISION,
                        help="inference precision: bf16 computes the body in bfloat16 "
                        "(faster on CPUs with bf16 or AMX; changes PSNR slightly)")
    parser.add_argument("--crop-border", type=int, default=options.DEFAULT_CROP_BORDER,
                        metavar="N",
                        help="pixels removed at each side before PSNR/SSIM, as BasicSR's "
                        "crop_border; 8 judges the interior")
    parser.add_argument("--protocol", choices=options.METRIC_PROTOCOLS,
                        default=options.DEFAULT_PROTOCOL,
                        help="metric definitions: skimage (scikit-image's defaults, 7x7 "
                        "uniform SSIM window) or basicsr (BasicSR's calculate_psnr/"
                        "calculate_ssim: 11x11 Gaussian window, sigma 1.5, valid region)")
    parser.add_argument("--y-channel", action="store_true",
                        help="score the luma Y = 16 + (65.481 R + 128.553 G + 24.966 B)"
                        "/255 (BT.601, MATLAB's rgb2ycbcr) instead of RGB")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)

    def main() -> int:
        from dgf import evaluate
        from dgf.fileio import require_file

        for name in ("strips", "batch_size", "limit"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise DgfError(f"--{name.replace('_', '-')} must be at least 1; got {value}")
        if args.crop_border < 0:
            raise DgfError(f"--crop-border must be >= 0 pixels; got {args.crop_border}")
        named = evaluate.describe_settings(args.crop_border, args.protocol, args.y_channel)
        crop = f" ({named})" if named else ""
        how = {"crop_border": args.crop_border, "protocol": args.protocol,
               "y_channel": args.y_channel}
        if args.model is not None:
            if args.force:
                raise DgfError("--force applies to --run; with --model use --overwrite")
            if args.h5 is None:
                raise DgfError("--model needs --h5 PATH (the pairs file to score on)")
            require_file(args.model, "model file")
            summary = evaluate.evaluate_model(
                args.model, args.h5, args.out, split=args.split, strips=args.strips,
                batch_size=args.batch_size, limit=args.limit, overwrite=args.overwrite,
                progress=not args.no_progress, precision=args.precision, **how,
            )
            out = Path(summary["out_dir"])
            from dgf.metadata import describe

            print(f"{args.model}: {describe(summary['model_metadata'])}")
            print(f"{args.model} on {args.h5} [{args.split}], {summary['count']} pairs"
                  f"{crop}:")
            print(f"  {'':10} {'PSNR (dB)':>10} {'SSIM':>8}")
            print(f"  {'deblurred':10} {summary['psnr']:>10.2f} {summary['ssim']:>8.4f}")
            print(f"  {'blurred':10} {summary['blurred_psnr']:>10.2f} "
                  f"{summary['blurred_ssim']:>8.4f}")
            print(f"  {summary['seconds_per_image']:.4f} s per image")
            for name in ("summary.json", "per_image.csv", "strip.png"):
                print(f"wrote {out / name}")
            return 0
        if args.overwrite:
            raise DgfError("--overwrite applies to --model; with --run use --force")
        rows = evaluate.evaluate_run(
            args.run, h5_path=args.h5, split=args.split, strips=args.strips,
            batch_size=args.batch_size, out_dir=args.out, limit=args.limit,
            force=args.force, progress=not args.no_progress, precision=args.precision,
            **how,
        )
        out = args.out if args.out is not None else args.run / "eval"
        print(f"{'epoch':>5} {'PSNR (dB)':>10} {'SSIM':>8}{crop}")
        for row in rows:
            print(f"{row['epoch']:>5} {row['psnr']:>10.2f} {row['ssim']:>8.4f}")
        print(f"{'input':>5} {rows[-1]['blurred_psnr']:>10.2f} {rows[-1]['blurred_ssim']:>8.4f}"
              f"   (blurred vs sharp)")
        print(f"wrote {out / 'metrics.csv'}, {out / 'metrics.png'}, "
              f"{out / 'progress.png'} and {out / 'strips'}/")
        return 0

    return _run(main, program=argv is None)


# --- dgf-deblur -------------------------------------------------------------
def deblur_main(argv: Sequence[str] | None = None) -> int:
    p = _parser(
        "dgf-deblur",
        "Deblur JPEG/PNG photos of any size with a trained generator. Outputs keep "
        "the input's name, size and format; folders are searched recursively and "
        "their tree is mirrored under OUT. Output is upright RGB (EXIF orientation "
        "applied); a PNG's alpha channel is kept. Exit status 1 if any file failed.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                   help="image files and/or folders")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("--model", type=Path, default=None,
                   help="generator .keras file written by dgf-train (default: the "
                   "bundled model (channel rate 32, space-to-depth 4) trained on pairs-small; see "
                   "dgf/weights/MODEL_CARD.md)")
    p.add_argument("--tile", type=int, default=None,
                   help="tile edge in pixels for large images; 0 = whole image at once "
                   f"(default: {options.DEFAULT_TILE}, or 4 overlaps if that is more)"
                   "%(default).0s")  # the default is None: written out above instead
    p.add_argument("--overlap", type=int, default=None,
                   help="overlap of neighbouring tiles in pixels (< tile/2) (default: "
                   "from the model's receptive field, so tiles leave no seams: "
                   f"{options.DEFAULT_OVERLAP} for the paper's layout)%(default).0s")
    p.add_argument("--batch", type=int, default=options.DEFAULT_BATCH,
                   help="tiles per generator call")
    p.add_argument("--quality", type=int, default=options.DEFAULT_QUALITY,
                   help="JPEG quality of the outputs (1-100)")
    p.add_argument("--compare", action="store_true",
                   help="also write blurred | deblurred side by side as "
                        "OUT/compare/REL/NAME_compare.EXT")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--precision", choices=options.PRECISIONS, default=options.DEFAULT_PRECISION,
                   help="inference precision: bf16 computes the body in bfloat16 "
                   "(faster on CPUs with bf16 or AMX; changes outputs slightly)")
    p.add_argument("--scale", default=options.DEFAULT_SCALE, metavar="F|auto",
                   help="run the generator on the photo shrunk by F in (0, 1], where "
                   "a long blur is within its reach, and add the enlarged correction "
                   "to the full-size photo (the output keeps the input's size and "
                   "detail). auto: F = the model's training image side / the photo's "
                   "shorter side, at most 1 (from the model file's training record; "
                   "1 when it has none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    def work() -> int:
        from tqdm import tqdm

        from dgf import infer

        def tell(path: Path, reason: str) -> None:
            tqdm.write(f"failed: {path}: {reason}", file=sys.stderr)

        model = args.model
        if model is None:
            from dgf.weights import MODEL_CARD, bundled_model

            model = bundled_model()
            print(f"using the bundled model {model} (channel rate 32, space-to-depth 4, trained on "
                  f"pairs-small on a CPU; see {MODEL_CARD}). Pass --model for your own.")
        else:
            print(f"using the model {model}")
        report = infer.deblur_paths(
            model, args.inputs, args.out, tile=args.tile, overlap=args.overlap,
            batch_size=args.batch, compare=args.compare, overwrite=args.overwrite,
            quality=args.quality, progress=not args.quiet, on_failure=tell,
            precision=args.precision, scale=args.scale,
        )
        print(f"deblurred {len(report.processed)} image(s) into {args.out}"
              + (f"; {len(report.failed)} failed" if report.failed else ""))
        return 1 if report.failed else 0

    return _run(work, program=argv is None)


# --- dgf-export -------------------------------------------------------------
def export_main(argv: Sequence[str] | None = None) -> int:
    p = _parser(
        "dgf-export",
        "Export a trained generator for serving. Both formats take uint8 images "
        "and return uint8 images. savedmodel: signature 'serving_default', input "
        "'images' (B, H, W, 3) uint8 of any size, output 'deblurred'. tflite: input "
        "(1, H, W, 3) uint8; H and W are dynamic (resize_tensor_input) unless "
        "--input-size is given.",
    )
    p.add_argument("--model", type=Path, required=True,
                   help="generator .keras file written by dgf-train")
    p.add_argument("--format", choices=options.EXPORT_FORMATS, required=True,
                   help="export format")
    p.add_argument("-o", "--out", type=Path, required=True,
                   help="SavedModel folder or .tflite file to create")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                   help="fix the TFLite input to H x W (default: dynamic)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    args = p.parse_args(argv)

    def work() -> int:
        from dgf.export import export_model

        path = export_model(args.model, args.out, args.format,
                            input_size=args.input_size, overwrite=args.overwrite)
        print(f"wrote {args.format} export to {path}")
        return 0

    return _run(work, program=argv is None)


# --- dgf-info ---------------------------------------------------------------
def info_main(argv: Sequence[str] | None = None) -> int:
    p = _parser(
        "dgf-info",
        "Describe a saved generator: its layout, trainable and non-trainable "
        "parameters, the work of its convolutions on one H x W image (MACs; FLOPs = "
        "2 x MACs), its receptive field and what the file records of its training.",
    )
    p.add_argument("model", type=Path, metavar="MODEL",
                   help="generator .keras file written by dgf-train")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   default=list(options.DEFAULT_INFO_SIZE),
                   help="image size at which the work is counted")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = p.parse_args(argv)

    def work() -> int:
        import json

        from dgf.fileio import require_file
        from dgf.info import format_info, model_info

        height, width = args.size
        if min(height, width) < 1:
            raise DgfError(f"--size must be two positive numbers of pixels; got "
                           f"{height} {width}")
        require_file(args.model, "model file")  # dgf-eval --model's messages
        info = model_info(args.model, height, width)
        print(json.dumps(info, indent=2) if args.json else format_info(info))
        return 0

    return _run(work, program=argv is None)
