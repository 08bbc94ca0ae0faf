"""``dgf-train``: its flags are built from :class:`dgf.config.TrainConfig`'s fields
(:func:`dgf.config.settings`), so a new setting is one field there and nothing here.
The flags' types only turn text into values (with dgf.config's parsers, as config
files do); what a value may be is checked once, by TrainConfig."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from dgf.commands.common import new_parser, run
from dgf.errors import DgfError


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


def _words_or(words: tuple[str, ...], base: type) -> Callable[[str], Any]:
    """``--batch-size auto`` or ``--batch-size 4``: one of ``words`` or a ``base`` value."""
    from dgf.config import parse_words_or

    kind = {int: "an integer", float: "a number"}.get(base, base.__name__)

    def parse(text: str) -> Any:
        try:
            return parse_words_or(base, words)(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {' or '.join(map(repr, words))} or {kind}, got {text!r}") from None

    return parse


def flag_type(key: str) -> Callable[[str], Any]:
    """What turns the text of TrainConfig field ``key``'s flag into its value."""
    from dgf.config import field_types, settings

    base, optional = field_types()[key]
    if base is bool:
        return _on_off
    if base is int and optional:
        return _optional_int
    if settings()[key].words:
        return _words_or(settings()[key].words, base)
    return base


def train_flags() -> list[tuple[str, str]]:
    """(flag, config key) of every TrainConfig field, in declaration order."""
    from dgf.config import settings

    return [(about.flag, key) for key, about in settings().items()]


def _shown_default(key: str, value: Any) -> str:
    """A setting's default as its flag would take it: on/off, 'full' for no limit."""
    from dgf.config import field_types, on_off

    if isinstance(value, bool):
        return on_off(value)
    if value is None:
        return "full" if field_types()[key] == (int, True) else ""
    return str(value)


def train_parser() -> argparse.ArgumentParser:
    from dgf.config import GROUPS, settings

    parser = new_parser(
        "dgf-train",
        "Train the Deep Generative Filter GAN on an HDF5 file of pairs. Precedence: "
        "defaults < --config file < flags. Re-running into a run folder that has a "
        "checkpoint resumes it. Every setting flag is also a config key (its name with "
        "underscores).",
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
    parser.add_argument("--no-progress", action="store_true",
                        help="hide the per-epoch progress bar")
    groups = {name: parser.add_argument_group(f"{name} settings") for name in GROUPS}
    for key, about in settings().items():
        shown = _shown_default(key, about.default)
        text = about.help if "(default:" in about.help or not shown else (
            f"{about.help} (default: {shown})")
        groups[about.group].add_argument(about.flag, dest=key, type=flag_type(key),
                                         default=argparse.SUPPRESS, help=text)
    return parser


def train_main(argv: Sequence[str] | None = None) -> int:
    args = vars(train_parser().parse_args(argv))
    config_file = args.pop("config")
    resume = args.pop("resume")
    cpu_devices = args.pop("cpu_devices")
    local_workers = args.pop("local_workers")
    progress = not args.pop("no_progress")
    verbose = args.pop("verbose")  # workers see it as DGF_VERBOSE (dgf.quiet)

    def work() -> int:
        from dgf.config import resolve_config

        if local_workers is not None:
            return _launch_workers(local_workers, args, config_file, resume, cpu_devices,
                                   progress)
        # Before TensorFlow loads: a resume with other shapes or (multi-worker) other
        # batches is refused in a fraction of a second, not after the 5 s import.
        cfg, resuming = resolve_config(args, config_file, resume=resume)
        from dgf import distributed

        if cpu_devices is not None:
            distributed.split_cpu(cpu_devices)  # before anything starts TensorFlow
        from dgf.loop import TrainingInterrupted
        from dgf.session import train

        # The file named if the run is meant for a GPU and finds none (its accelerator).
        source = None if config_file is None or "accelerator" in args else str(config_file)
        try:
            result = train(cfg, resume=resuming, progress=progress, config_file=source)
        except TrainingInterrupted as exc:
            print(str(exc), file=sys.stderr)
            return 130
        print(f"run folder: {result.run_dir}")
        return 0

    return run(work, program=argv is None, verbose=verbose)


def _launch_workers(count, args, config_file, resume, cpu_devices, progress) -> int:
    """``dgf-train --local-workers N``: the run folder is chosen once, here, and every
    worker gets the same flags with ``--strategy multiworker``."""
    from dgf import launcher
    from dgf.config import resolve_config

    if args.get("strategy", "multiworker") != "multiworker":
        raise DgfError(f"--local-workers runs --strategy multiworker; drop --strategy "
                       f"{args['strategy']}")
    values = {**args, "strategy": "multiworker"}
    cfg, _ = resolve_config(values, config_file, resume=resume)
    values["run_dir"] = cfg.run_dir
    extra = [*(["--config", str(config_file)] if config_file is not None else []),
             *(["--resume"] if resume else []),
             *(["--cpu-devices", str(cpu_devices)] if cpu_devices is not None else []),
             *([] if progress else ["--no-progress"])]
    return launcher.launch_private(count, launcher.worker_argv(values, train_flags(), extra))
