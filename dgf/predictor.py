"""A generator and an :class:`~dgf.spec.InferenceSpec`: the one object inference runs on.

``dgf-deblur``, ``dgf-eval`` and the trainer's per-epoch scoring each make one
:class:`Predictor` and call it; it owns everything an inference run keeps between
calls, so nothing of it lives in module globals:

* **The folded copies.** The generator runs as its BatchNorm-folded copy at the
  precision asked (:class:`dgf.runtime.FoldedCopies`), refilled from the generator's
  current weights at every :meth:`Predictor.call` (the trainer's weights change every
  epoch).
* **The engines' calls.** Each path (TensorFlow without XLA ``plain``, with XLA
  ``xla``, and the other rows of :data:`dgf.options.ENGINE_TABLE`) is prepared once
  (:meth:`dgf.engines.base.Engine.prepare`: a compiled graph, an ONNX conversion taken
  from its cache, an int8 copy) and kept; an engine's conversion is prepared again
  only when the weights changed.
* **The choice of path.** With ``engine="auto"`` or ``jit="auto"`` the candidates
  are measured on the first input of each shape and the fastest is kept, remembered
  per host in the user cache folder (:mod:`dgf.calibration`, :class:`_Chooser`).
  A caller with little work ahead (one phone photo: four tiles) would spend more on
  the measurement than on its work: with ``calls_ahead`` under
  :data:`MEASURE_CALLS_PER_PATH` per candidate, and nothing stored, the first
  candidate (TensorFlow without XLA, which compiles nothing) runs unmeasured.
  ``engine="auto"`` adds every installed engine that runs the precision here; on a GPU
  host it measures TensorFlow's paths only (the other engines run on the CPU there),
  unless one is named. ``precision="auto"`` never picks int8.
* **What ran.** The first use of each path is named on stderr (``note: inference
  runs on ...``) and :attr:`Predictor.ran_on` collects every path used (dgf-eval's
  ``ran_on``).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from dgf import calibration, engines, quantize, runtime, tiling
from dgf.engines import onnx_conversion
from dgf.errors import DgfError, install_hint
from dgf.host import device_description
from dgf.images import to_uint8, to_unit
from dgf.options import ENGINE_TABLE, engine_row
from dgf.spec import InferenceSpec, check_tiling

# What each path is called when a command says which one ran.
_WORDS = {"xla": "TensorFlow with XLA", "plain": "TensorFlow without XLA (oneDNN kernels)",
          **{row.name: row.words for row in ENGINE_TABLE if row.name != "tensorflow"}}
# A call that takes longer than this is timed once per path while choosing.
_LONG_CALL_S = 1.0
# Choosing stops after a round in which the fastest path is this much faster than the next.
_CLEAR_WIN = 1.25
# Measuring a path costs about this many of its calls: its compile or conversion (XLA's
# compile, OpenVINO's conversion: 2-10 tile calls on a CPU), a first call and the timed
# ones. A caller that says how many calls it has ahead (``calls_ahead``) is measured for
# only when it has at least this many per candidate path.
MEASURE_CALLS_PER_PATH = 4


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def model_layout(model) -> str:
    """:func:`dgf.calibration.layout_key` of ``model``'s layers and dtype policy."""
    configs = [(type(layer).__name__, layer.get_config()) for layer in model.layers]
    configs.append(("dtype", {"policy": str(getattr(model, "dtype_policy", ""))}))
    return calibration.layout_key(configs)


def resolve(spec: InferenceSpec) -> str:
    """The precision ``spec`` runs at: its own, or for ``auto`` bf16 where the CPU
    computes bfloat16 natively (:func:`dgf.runtime.resolve_precision`) and the engine
    named runs it, fp32 elsewhere. Checks that a named engine is installed and runs
    it (DgfError naming the extra to install, or the engines that run it)."""
    precision = runtime.resolve_precision(spec.precision)
    if spec.engine != "auto":
        engine = engines.engine(spec.engine)
        if spec.precision == "auto" and precision == "bf16" \
                and engine.missing() is None and engine.precision_reason("bf16"):
            precision = "fp32"
        engine.check(precision)
    elif precision == "int8" and not any(
            "int8" in row.precisions and engines.engine(row.name).missing() is None
            for row in ENGINE_TABLE):
        rows = [row for row in ENGINE_TABLE if "int8" in row.precisions]
        raise DgfError(f"--precision int8 runs on {' or '.join(r.name for r in rows)}, and "
                       f"none is installed; install one with "
                       f"{' or '.join(install_hint(r.extra) for r in rows)}")
    return precision


class Predictor:
    """``generator`` run as ``spec`` says (:mod:`dgf.predictor`).

    ``source`` is the model file it came from (named in errors; int8 calibrates on the
    HDF5 file its record names when ``spec.calibration`` is None). Settings are checked
    here, before any work: a missing engine, a precision the engine cannot run, tiles
    that cannot work. ``precision`` is what ``spec.precision`` resolved to.
    """

    def __init__(self, generator: Any, spec: InferenceSpec = InferenceSpec(), *,
                 source: Path | str | None = None) -> None:
        self.generator = generator
        self.spec = spec
        self.path = Path(source) if source is not None else None
        self.source = str(source) if source is not None else "the generator"
        self.precision = resolve(spec)
        self.ran_on: set[str] = set()
        self._copies = runtime.FoldedCopies(generator)
        self._generation = 0
        self._filled: dict[str, int] = {}
        self._content: tuple[int, str] | None = None
        self._calibration = None
        self._prepared: dict[str, tuple[Any, Callable]] = {}
        self._choosers: dict[int | None, _Chooser] = {}
        self._said: set[str] = set()
        self._tiling: tuple[int, int] | None = None
        if self.precision == "int8":
            self.calibration()  # a missing or unusable calibration source fails up front

    # --- what engines are handed (dgf.engines.base.Model) -----------------------------
    def folded(self, precision: str) -> Any:
        if self._filled.get(precision) != self._generation:
            self._copies.copy(precision)  # refilled from the current weights
            self._filled[precision] = self._generation
        return self._copies.copy_held(precision)

    def content(self) -> str:
        if self._content is None or self._content[0] != self._generation:
            copy = self.folded("fp32")
            self._content = (self._generation,
                             onnx_conversion.content_digest(copy, model_layout(copy)))
        return self._content[1]

    def calibration(self) -> Any:
        if self._calibration is None:
            source = self.spec.calibration
            if source is None and self.path is None:
                raise DgfError("--precision int8 needs --calibration H5|DIR: an in-memory "
                               "generator has no model file whose record names its training "
                               "data")
            if source is None:
                source = quantize.default_calibration_source(self.path)
            self._calibration = quantize.calibration_set(
                source, count=self.spec.calibration_count, seed=self.spec.calibration_seed)
        return self._calibration

    # --- the paths ------------------------------------------------------------------
    def tiling(self) -> tuple[int, int]:
        """``(tile, overlap)``: the spec's, or the model's seamless defaults
        (:func:`dgf.tiling.seamless_tiling`), checked."""
        if self._tiling is None:
            tile, overlap = tiling.seamless_tiling(self.generator, self.spec.tile,
                                                   self.spec.overlap)
            check_tiling(tile, overlap, self.spec.batch)
            self._tiling = (tile, overlap)
        return self._tiling

    def candidates(self) -> list[str]:
        """The paths this predictor chooses from (names of :data:`dgf.options.PATHS`):
        TensorFlow's per ``jit`` (both for auto) when the engine is tensorflow or auto,
        every other installed engine that runs the precision here under auto (the ones
        left out are named once, with what to install; all of them on a GPU host), or
        the one engine named."""
        spec, precision = self.spec, self.precision
        if spec.engine not in ("auto", "tensorflow"):
            return [spec.engine]
        names: list[str] = []
        if "tensorflow" == spec.engine or engines.engine("tensorflow").precision_reason(
                precision) is None:
            names = {"auto": ["plain", "xla"], "on": ["xla"], "off": ["plain"]}[spec.jit]
        if spec.engine == "tensorflow":
            return names
        gpus = runtime.gpu_models()
        if gpus and names:
            # dgf runs the other engines on their CPU providers only: on a GPU host they
            # would move inference to the CPU beside an idle GPU.
            self._say_once("gpu", f"--engine auto measures only TensorFlow on this GPU host "
                           f"({device_description(gpus)['accelerator']}): the other engines "
                           f"would run on the CPU here; name one with --engine to use it anyway")
            return names
        for row in ENGINE_TABLE[1:]:
            engine = engines.engine(row.name)
            reason = engine.missing()
            if reason is None:
                reason = engine.precision_reason(precision)
            elif row.extra:
                reason += f"; {install_hint(row.extra)} adds it"
            if reason is None:
                names.extend(row.paths)
            else:
                self._say_once(f"out {row.name}", f"--engine auto leaves out {row.name} at "
                               f"{precision}: {reason}")
        return names

    def prepare(self, path: str) -> tuple[Callable, float]:
        """The call of one path with the current weights, and the seconds spent
        converting it (0.0 when it was held or came from a cache)."""
        engine = engines.path_owner(path)
        if engine.name == "tensorflow":
            # The compiled graph reads the folded copy: refilled, it runs the new weights.
            self.folded(self.precision)
            if path not in self._prepared:
                self._prepared[path] = ("", engine.prepare(self, self.precision, path)[0])
            return self._prepared[path][1], 0.0
        content = self.content()
        held = self._prepared.get(path)
        if held is not None and held[0] == content:
            return held[1], 0.0
        call, seconds = engine.prepare(self, self.precision, path)
        self._prepared[path] = (content, call)
        return call, seconds

    def say_path(self, path: str, how: str = "") -> None:
        """Name ``path`` on stderr the first time it runs, and record it in ``ran_on``."""
        self.ran_on.add(f"{path} {self.precision}")
        self._say_once(f"path {path}", f"inference runs on {_WORDS[path]} at "
                       f"{self.precision}{how}")

    def _say_once(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            _note(message)

    # --- running --------------------------------------------------------------------
    def call(self, calls_per_weights: int | None = None,
             calls_ahead: int | None = None) -> Callable[[np.ndarray], Any]:
        """The call of the generator with its current weights: (B, H, W, 3) float32 in
        [-1, 1] in, the generator's output (an array or tensor) out. Take one per batch
        of work (an image, a batch of pairs), not per tile: each refolds the weights.
        ``calls_per_weights`` (the trainer: how many calls one set of weights serves)
        lets another engine win only if it is faster with its conversion spread over
        those calls. ``calls_ahead`` (dgf-deblur: the tiles of the photos it has left)
        says how much work follows: a shape with no stored choice is then measured only
        when that work repays it (:data:`MEASURE_CALLS_PER_PATH`); None always
        measures."""
        self._generation += 1
        names = self.candidates()
        if not names:
            raise DgfError(f"no engine runs --precision {self.precision} here")
        if len(names) == 1:
            call = self.prepare(names[0])[0]
            self.say_path(names[0])
            return call
        key = calls_per_weights
        if key not in self._choosers:
            self._choosers[key] = _Chooser(self, names, calls_per_weights)
        self._choosers[key].calls_ahead = calls_ahead
        return self._choosers[key]

    def deblur_batch(self, blurred: np.ndarray, calls_per_weights: int | None = None
                     ) -> np.ndarray:
        """Run the generator over (B, H, W, 3) uint8 blurred images, ``spec.batch`` at a
        time; returns (B, H, W, 3) uint8 rounded by :func:`dgf.images.to_uint8`."""
        blurred = np.asarray(blurred)
        if blurred.dtype != np.uint8 or blurred.ndim != 4 or blurred.shape[-1] != 3:
            raise DgfError(f"blurred images must be uint8 (B, H, W, 3); got {blurred.dtype} "
                           f"{blurred.shape}")
        out = np.empty_like(blurred)
        call = self.call(calls_per_weights)
        for start in range(0, len(blurred), self.spec.batch):
            chunk = to_unit(blurred[start : start + self.spec.batch])
            y = np.asarray(call(chunk), dtype=np.float32)
            if y.shape != chunk.shape:
                raise DgfError(f"generator returned shape {y.shape} for input {chunk.shape}; "
                               f"a deblurring generator must keep the image size and 3 "
                               f"channels")
            out[start : start + self.spec.batch] = to_uint8(y)
        return out

    def deblur_image(self, image: np.ndarray, *, scale: float = 1.0,
                     progress: bool = False, images_ahead: int | None = None,
                     shrunk: np.ndarray | None = None) -> np.ndarray:
        """One (H, W, 3) uint8 image deblurred at ``scale``, tiled
        (:func:`dgf.tiling.deblur_image`; ``images_ahead``: the images of about this
        size left to deblur, this one included, or None; ``shrunk``: the image
        already shrunk to that scale, or None)."""
        return tiling.deblur_image(self, image, scale=scale, progress=progress,
                                   images_ahead=images_ahead, shrunk=shrunk)


class _Chooser:
    """The fastest of several paths (:meth:`Predictor.candidates`).

    On the first input of a shape (of a size class: :func:`dgf.calibration.shape_class`)
    it looks up :mod:`dgf.calibration`'s entry for this host, layout, precision, shape
    and candidates; without one it measures: every
    candidate is prepared (an engine converts the model, or takes the conversion from
    its cache; one that cannot is left out with a note) and runs on that input (the XLA
    one compiles), then each is timed, interleaved, for up to three rounds (one when a
    call takes over a second; the rounds stop once the fastest is 1.25x faster than the
    next), the fastest is kept and stored. With ``calls_per_weights`` an engine's time
    includes its conversion spread over that many calls. With ``calls_ahead`` (set by
    :meth:`Predictor.call`) under :data:`MEASURE_CALLS_PER_PATH` per candidate the
    measurement would cost more than the work it serves: the first candidate runs
    unmeasured, for this process only (nothing is stored). The entry also records what
    each path costs a new process before its calls run that fast (preparing it from
    the cache, its first call's compile): a later caller with ``calls_ahead`` takes
    the path whose start-up plus those calls is least
    (:func:`dgf.calibration.best_for`). The chosen path's first output is returned, so
    no input is computed for nothing. ``choices`` records the path taken per shape
    class.
    """

    def __init__(self, predictor: Predictor, names: list[str],
                 calls_per_weights: int | None) -> None:
        self.predictor = predictor
        self.names = list(names)
        self.calls_per_weights = calls_per_weights
        self.calls_ahead: int | None = None
        self.choices: dict[tuple[int, ...], str] = {}

    def _key(self, shape: tuple[int, ...]) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        for name in self.names:
            owner = engines.path_owner(name)
            if owner.missing() is None:
                extra.update(owner.versions())
        if self.calls_per_weights is not None:
            extra["refresh_calls"] = int(self.calls_per_weights)
        host = calibration.host_key(tf.__version__, runtime.gpu_models())
        copy = self.predictor.folded("fp32" if self.predictor.precision == "int8"
                                     else self.predictor.precision)
        return calibration.entry_key(host, model_layout(copy), self.predictor.precision,
                                     shape, tuple(self.names), extra)

    def __call__(self, x):
        shape = calibration.shape_class(np.shape(x))  # tiles of about one size: one choice
        choice, first = self.choices.get(shape), None
        if choice is None:
            key = self._key(shape)
            entry = calibration.read_entry(key)
            spend = MEASURE_CALLS_PER_PATH * len(self.names)
            if entry is not None:
                choice = calibration.best_for(entry, self.calls_ahead)
                self.predictor.say_path(choice, " (measured fastest on this host earlier)"
                                        if choice == entry["choice"] else (
                    f" (measured on this host earlier: with what each path costs a new "
                    f"process to start, the fastest for {self.calls_ahead} "
                    f"call{'' if self.calls_ahead == 1 else 's'}; "
                    f"{_WORDS[entry['choice']]} is faster per call)"))
            elif self.calls_ahead is not None and self.calls_ahead < spend:
                choice = self.names[0]
                self.predictor.say_path(choice, (
                    f", not measured: measuring the {len(self.names)} paths costs about "
                    f"{spend} calls and this run has {self.calls_ahead} of "
                    f"{'x'.join(map(str, np.shape(x)[1:3]))}; a run with more images "
                    f"measures them and stores the fastest"))
            else:
                choice, first = self._measure(x, key)
            self.choices[shape] = choice
        self.predictor.say_path(choice)
        if first is not None:
            return first
        return self.predictor.prepare(choice)[0](x)

    def _prepare_all(self) -> tuple[dict[str, Callable], dict[str, float], dict[str, float]]:
        """Each path's call, the seconds its conversion took (0 from a cache) and the
        seconds preparing it took besides (what a later process pays again)."""
        paths: dict[str, Callable] = {}
        setup: dict[str, float] = {}
        loading: dict[str, float] = {}
        for name in self.names:
            start = time.perf_counter()
            try:
                paths[name], seconds = self.predictor.prepare(name)
            except DgfError as exc:
                if name in engine_row("tensorflow").paths:
                    raise
                _note(f"--engine auto leaves out {name}: {exc}")
                continue
            setup[name] = seconds
            loading[name] = max(0.0, time.perf_counter() - start - seconds)
        return paths, setup, loading

    def _measure(self, x, key: dict[str, Any]) -> tuple[str, Any]:
        paths, setup, startup = self._prepare_all()
        first: dict[str, np.ndarray] = {}
        first_seconds: dict[str, float] = {}
        for name, fn in paths.items():
            start = time.perf_counter()
            first[name] = np.asarray(fn(x))  # XLA compiles, OpenVINO compiles the shape
            first_seconds[name] = time.perf_counter() - start
        long_call = first_seconds[next(iter(paths))] > _LONG_CALL_S
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(1 if long_call else 3):
            for name, fn in paths.items():
                start = time.perf_counter()
                np.asarray(fn(x))
                times[name].append(time.perf_counter() - start)
            ordered = sorted(min(t) for t in times.values())
            if len(ordered) < 2 or ordered[1] > _CLEAR_WIN * ordered[0]:
                break  # more rounds would not change the answer
        seconds = {name: min(t) for name, t in times.items()}
        tf_paths = engine_row("tensorflow").paths
        if self.calls_per_weights:
            # New weights every epoch: whichever engine is chosen converts them again
            # each time. The engines share one conversion, so the first one timed it
            # and each is charged that time.
            converting = max((setup[n] for n in seconds if n not in tf_paths), default=0.0)
            for name in seconds:
                if name not in tf_paths:
                    seconds[name] += converting / self.calls_per_weights
        choice = min(seconds, key=seconds.get)
        # A new process pays each path's preparation (its conversion comes from the cache)
        # and its first call's extra time (tracing and graph optimisation, XLA's compile,
        # an engine's compile of the shape) before its calls run this fast.
        for name in seconds:
            startup[name] += max(0.0, first_seconds[name] - min(times[name]))
        where = calibration.write_entry(key, seconds, choice, startup)
        self._report(np.shape(x), seconds, setup, choice, where)
        return choice, first[choice]

    def _report(self, shape, seconds, setup, choice, where) -> None:
        words = {"xla": "XLA", "plain": "no XLA"}
        measured = ", ".join(
            f"{words.get(name, name)} {seconds[name]:.3g} s"
            + (f" (+{setup[name]:.3g} s converting)"
               if name not in words and setup.get(name, 0) > 0 and not self.calls_per_weights
               else "")
            for name in seconds)
        spread = (f", conversions spread over {self.calls_per_weights} calls"
                  if self.calls_per_weights and any(n not in words for n in seconds) else "")
        _note(f"calibrated the {self.predictor.precision} call on "
              f"{'x'.join(map(str, shape))}: {measured}{spread}; using "
              f"{words.get(choice, choice)}" + (f" (stored in {where.parent})" if where else ""))
