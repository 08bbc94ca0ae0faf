"""The calibration cache: which compiled path runs a model fastest on this host.

:class:`dgf.predictor.Predictor` with ``jit="auto"`` or ``engine="auto"`` times
the generator's candidate paths (its folded copy in TensorFlow with and without
XLA, and under ``engine="auto"`` ONNX Runtime and OpenVINO where installed) on the
first input of each shape, and keeps the fastest. The measurement is stored here
so that later runs on the same host skip it: one small JSON file per entry in the
user cache folder, named by a hash of its key.

The key is everything the answer depends on: the host (the CPU model and its
feature flags, the CPU cores visible, the accelerator (GPU models and count, or
none) and the TensorFlow version), the model's layout (its layers and
their settings, not its weights, which do not change the speed), the precision,
the input shape (batch, height, width; sides over 512 px rounded up to a multiple of
256, so the tiles of photos of about one size share an entry), the candidate paths with the versions of
the engines among them, and, for the trainer's scoring, how many calls share one
conversion. An entry that cannot be read, is not JSON, or holds another key or no
valid choice is damaged: it is measured again and
rewritten, with a one-line note. Entries are written atomically
(:func:`dgf.fileio.write_text_atomic`), after the measurement has finished, so an
interrupted calibration leaves no entry at all. A cache folder that cannot be
written costs the next run its measurement again, never the inference.

The folder is ``$DGF_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/dgf``, else
``~/.cache/dgf``; entries live in its ``calibration/`` folder. Deleting it is safe.
This module imports neither TensorFlow nor Keras.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from dgf.errors import DgfError
from dgf.fileio import write_bytes_atomic, write_text_atomic
from dgf.host import cpu_flags, cpu_model, device_description
from dgf.options import PATHS

#: Environment variable that moves the cache folder (tests point it at tmp_path).
CACHE_ENV = "DGF_CACHE_DIR"
#: The paths :class:`dgf.predictor.Predictor` chooses between: TensorFlow without XLA
#: and with it, and the other engines, from the engine table (dgf.options.ENGINE_TABLE).
CHOICES = PATHS
#: Bumped when the entry format or what is measured changes; old entries then miss.
VERSION = 2


#: An entry's key holds the input's shape with each side over ``CLASS_FROM`` px
#: rounded up to a multiple of ``CLASS_STEP`` (:func:`shape_class`): tiles shaped to
#: each photo (:func:`dgf.tiling.tile_shape`) of about one size share a measurement.
CLASS_FROM = 512
CLASS_STEP = 256


def shape_class(shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` (batch, height, width, channels) with height and width over
    ``CLASS_FROM`` rounded up to a multiple of ``CLASS_STEP``."""
    shape = tuple(int(s) for s in shape)
    return tuple(s if i not in (1, 2) or s <= CLASS_FROM else -(-s // CLASS_STEP) * CLASS_STEP
                 for i, s in enumerate(shape))


def cache_dir() -> Path:
    """The dgf user cache folder (not created here)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "dgf"


def cpu_description(cpuinfo: Path | None = None) -> dict[str, Any]:
    """The CPU's model name and sorted feature flags (:mod:`dgf.host`; empty where
    /proc/cpuinfo cannot be read), and the machine type."""
    return {"machine": os.uname().machine, "model": cpu_model(cpuinfo),
            "flags": sorted(cpu_flags(cpuinfo))}


def host_key(tf_version: str, gpu_models: Sequence[str]) -> dict[str, Any]:
    """What identifies this host's speed: the CPU (model, flags, cores visible), the
    accelerator (``gpu_models``, from :func:`dgf.runtime.gpu_models`: this module has
    no TensorFlow) and TensorFlow, so a cache shared by a CPU node and a GPU node
    keeps an answer for each."""
    cpu = cpu_description()
    flags_hash = hashlib.sha256(" ".join(cpu["flags"]).encode()).hexdigest()[:16]
    return {"machine": cpu["machine"], "cpu": cpu["model"], "cpu_flags": flags_hash,
            **device_description(gpu_models), "tensorflow": tf_version}


def layout_key(layer_configs: list[tuple[str, dict]]) -> str:
    """A hash of a model's layout: each layer's class and settings, without the
    layer names (which Keras numbers per session) and without weights."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "name"}
        if isinstance(value, (list, tuple)):
            return [strip(v) for v in value]
        return value

    text = json.dumps([[cls, strip(cfg)] for cls, cfg in layer_configs],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def entry_key(host: dict[str, Any], layout: str, precision: str,
              shape: tuple[int, ...], candidates: tuple[str, ...] = ("plain", "xla"),
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full key of one calibration entry: ``candidates`` are the paths compared
    (names of ``CHOICES``), ``extra`` what else the answer depends on (engine
    versions, calls per conversion)."""
    unknown = [c for c in candidates if c not in CHOICES]
    if unknown or not candidates:
        raise DgfError(f"calibration candidates {list(candidates)} must be some of {CHOICES}")
    return {"version": VERSION, **host, "layout": layout, "precision": precision,
            "shape": [int(s) for s in shape], "candidates": list(candidates),
            **(extra or {})}


def entry_path(key: dict[str, Any]) -> Path:
    """Where the entry of ``key`` lives."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / "calibration" / f"{digest}.json"


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def read_entry(key: dict[str, Any]) -> dict[str, Any] | None:
    """The stored measurement of ``key``, or None when there is none or it is
    damaged (then a one-line note says so and the caller measures again)."""
    path = entry_path(key)
    if not path.exists():
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(entry, dict) or entry.get("key") != key:
            raise ValueError("it holds another key")
        candidates = key["candidates"]
        if entry.get("choice") not in candidates:
            raise ValueError(f"its choice {entry.get('choice')!r} is none of {candidates}")
        if not isinstance(entry["seconds"], dict) or entry["choice"] not in entry["seconds"] \
                or set(entry["seconds"]) - set(candidates):
            raise ValueError(f"its times {entry['seconds']!r} are not those of {candidates}")
        _check_times(entry["seconds"], "time", zero=False)
        startup = entry.get("startup", {})
        if not isinstance(startup, dict) or set(startup) - set(entry["seconds"]):
            raise ValueError(f"its start-up times {startup!r} are not those of "
                             f"{list(entry['seconds'])}")
        _check_times(startup, "start-up time", zero=True)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        _note(f"calibration cache entry {path} is damaged ({exc}); measuring again")
        return None
    return entry


def _check_times(times: dict[str, Any], what: str, zero: bool) -> None:
    """ValueError naming the path unless each of ``times`` is a number above 0 (or
    at least 0 when ``zero``)."""
    for name, seconds in times.items():
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
                or not (seconds >= 0 if zero else seconds > 0):
            raise ValueError(f"its {what} for {name} is {seconds!r}")


def best_for(entry: dict[str, Any], calls: int | None) -> str:
    """The path of a stored ``entry`` (:func:`read_entry`) for a process that makes
    ``calls`` calls of its shape: the one whose start-up (what a new process pays
    before its calls run at the measured speed: tracing and graph optimisation,
    XLA's compile, an engine's load and compile) plus ``calls`` calls is least. The
    stored choice (fastest per call) when ``calls`` is None or the entry predates
    start-up times."""
    startup = entry.get("startup")
    if calls is None or not startup:
        return entry["choice"]
    seconds = entry["seconds"]
    return min(seconds, key=lambda name: startup.get(name, 0.0) + calls * seconds[name])


def store(folder: Path, files: dict[str, bytes], record: str, data: dict[str, Any],
          what: str, again: str) -> bool:
    """Write each of ``files`` (name -> bytes) into the cache ``folder``, then the JSON
    ``record`` (``data``) last, each atomically, so a reader that finds the record
    finds the files whole. False, with a note that ``what`` could not be stored and
    the next run ``again``, when the folder cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            write_bytes_atomic(folder / name, content)
        write_text_atomic(folder / record, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except (OSError, DgfError) as exc:
        _note(f"could not store {what} in {folder} ({exc}); the next run {again} (set "
              f"{CACHE_ENV} to a writable folder)")
        return False
    return True


def write_entry(key: dict[str, Any], seconds: dict[str, float], choice: str,
                startup: dict[str, float] | None = None) -> Path | None:
    """Store a measurement atomically; returns its path, or None (with a note) when
    the cache folder cannot be written. ``seconds`` is each path's call, ``startup``
    what each costs a new process before its calls run that fast (:func:`best_for`)."""
    if choice not in key["candidates"] or choice not in seconds:
        raise DgfError(f"calibration choice {choice!r} is none of those measured "
                       f"({', '.join(seconds)})")
    path = entry_path(key)
    entry = {"key": key, "seconds": {k: float(v) for k, v in seconds.items()},
             "choice": choice}
    if startup is not None:
        entry["startup"] = {k: float(v) for k, v in startup.items() if k in seconds}
    stored = store(path.parent, {}, path.name, entry, "the calibration", "measures again")
    return path if stored else None
