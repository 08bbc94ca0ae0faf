"""Which path runs the generator: TensorFlow with or without XLA, ONNX Runtime or
OpenVINO, chosen per host from measurement.

Every inference entry point (``dgf-deblur``, ``dgf-eval``, the trainer's per-epoch
scoring) runs the generator through :func:`inference_call`, which returns a call of
:mod:`dgf.runtime`'s folded inference copy, refolded from the model's current
weights:

* **XLA or not, per host.** TensorFlow's call is compiled with or without
  ``jit_compile`` (``jit="on"``/``"off"``). XLA fuses the concatenations and
  elementwise work into loops around the convolutions, which was 1.2-1.5x faster on
  an AVX2 host; on an AVX-512 host TensorFlow's own oneDNN kernels win (XLA 1.4-1.7x
  slower at fp32, about 3x at bf16). So the default, ``jit="auto"``, measures both on
  the first input of each shape and keeps the faster, remembered per host in the user
  cache folder (:class:`AutoCall`, :mod:`dgf.calibration`).
* **Engines.** ``engine="onnxruntime"`` or ``"openvino"`` runs the fp32 folded copy's
  ONNX conversion there (:mod:`dgf.engines`, converted once per weights and cached);
  ``engine="auto"`` adds every installed engine that runs the precision to the
  measured candidates, and keeps one only where it is measured faster here; on a
  GPU host it measures TensorFlow's paths only (the other engines run on the CPU
  there), unless one is named.
* **Visible.** The first use of each path is named on stderr (``note: inference runs
  on ...``), a calibration prints what it measured, and :func:`tracking` collects the
  paths a block of work ran on (dgf-eval's ``ran_on``).
"""
from __future__ import annotations

import contextlib
import sys
import time
import weakref
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from dgf import calibration, engines, runtime
from dgf.errors import DgfError, install_hint
from dgf.host import device_description
from dgf.options import (DEFAULT_JIT, DEFAULT_PRECISION, ENGINE_CHOICES, ENGINE_EXTRAS, ENGINES,
                         JIT_CHOICES)
from dgf.runtime import compiled_generator, inference_model, model_source


def check_jit(jit: str) -> str:
    """``jit`` if it is one of ``JIT_CHOICES``, else DgfError naming it."""
    if jit not in JIT_CHOICES:
        raise DgfError(f"unknown jit setting {jit!r}; choose one of {', '.join(JIT_CHOICES)}")
    return jit


def check_engine_choice(engine: str) -> str:
    """``engine`` if it is one of ``ENGINE_CHOICES``, else DgfError naming it."""
    if engine not in ENGINE_CHOICES:
        raise DgfError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINE_CHOICES)}")
    return engine


# What each path is called when a command says which one ran.
_WORDS = {"xla": "TensorFlow with XLA", "plain": "TensorFlow without XLA (oneDNN kernels)",
          **engines.COMPILERS}
# Paths this process has said it uses, so each is named once.
_SAID: set[tuple[str, str]] = set()
# Engines --engine auto left out, said once per process.
_LEFT_OUT: set[tuple[str, str]] = set()


def _say_path(name: str, precision: str, how: str = "") -> None:
    _track(name, precision)
    if (name, precision) not in _SAID:
        _SAID.add((name, precision))
        print(f"note: inference runs on {_WORDS[name]} at {precision}{how}", file=sys.stderr,
              flush=True)


# Sets collecting the paths that run while they are open (:func:`tracking`).
_TRACKERS: list[set[str]] = []


@contextlib.contextmanager
def tracking():
    """A set that collects, while the block runs, every path inference ran on, as
    ``"NAME PRECISION"`` (names of :data:`dgf.calibration.CHOICES`; ``plain`` and
    ``xla`` are TensorFlow without and with XLA): what dgf-eval records as ``ran_on``."""
    used: set[str] = set()
    _TRACKERS.append(used)
    try:
        yield used
    finally:
        _TRACKERS.remove(used)


def _track(name: str, precision: str) -> None:
    for used in _TRACKERS:
        used.add(f"{name} {precision}")


def candidates(precision: str, jit: str = DEFAULT_JIT, engine: str = "tensorflow") -> list[str]:
    """The paths (names of :data:`dgf.calibration.CHOICES`) ``inference_call`` chooses
    from: TensorFlow's per ``jit`` (both for ``"auto"``) for ``engine`` ``"auto"`` or
    ``"tensorflow"``, and under ``"auto"`` every other engine that is installed and runs
    ``precision`` here (the ones left out are named once, with what to install; all
    of them on a GPU host), or the one ``engine`` named."""
    check_jit(jit)
    check_engine_choice(engine)
    if engine not in ("auto", "tensorflow"):
        return [engine]
    names = {"auto": ["plain", "xla"], "on": ["xla"], "off": ["plain"]}[jit]
    gpus = runtime.gpu_models() if engine == "auto" else []
    if gpus:
        # dgf runs ONNX Runtime and OpenVINO on their CPU providers only: on a GPU host
        # they would move inference to the CPU beside an idle GPU, so auto spends no
        # conversion and calibration on them.
        if ("gpu", precision) not in _LEFT_OUT:
            _LEFT_OUT.add(("gpu", precision))
            print(f"note: --engine auto measures only TensorFlow on this GPU host "
                  f"({device_description(gpus)['accelerator']}): "
                  f"{' and '.join(ENGINES[1:])} would run on the CPU here; name one with "
                  f"--engine to use it anyway", file=sys.stderr, flush=True)
    elif engine == "auto":
        for other in ENGINES[1:]:
            reason = engines.missing_reason(other)
            if reason is None:
                reason = engines.precision_reason(other, precision)
            else:
                reason += f"; {install_hint(ENGINE_EXTRAS[other])} adds it"
            if reason is None:
                names.append(other)
            elif (other, precision) not in _LEFT_OUT:
                _LEFT_OUT.add((other, precision))
                print(f"note: --engine auto leaves out {other} at {precision}: {reason}",
                      file=sys.stderr, flush=True)
    return names


def inference_call(
    generator: Any, precision: str = DEFAULT_PRECISION, jit: str = DEFAULT_JIT,
    engine: str = "tensorflow", refresh_calls: int | None = None,
) -> Callable[[np.ndarray], Any]:
    """The compiled call of ``generator``'s folded copy, refolded from its current weights.

    Takes (B, H, W, 3) float32 in [-1, 1] and returns the generator's output, a
    float32 array or tensor of the same shape (in [-1, 1] for the DGF generator).
    Call it once per batch of work (an image, a batch of pairs), not once per tile:
    each call refolds the weights. Does not check that TensorFlow can run ``bf16``
    here (see :func:`dgf.runtime.check_precision`).

    ``jit`` says whether XLA compiles TensorFlow's call: ``"on"`` always (once per
    input shape, seconds), ``"off"`` never (TensorFlow's graph with its oneDNN
    kernels), ``"auto"`` whichever is measured faster for this model layout,
    precision and input shape on this host (:class:`AutoCall`, :mod:`dgf.calibration`).
    Which one wins depends on the CPU: XLA's fusion was 1.2-1.5x faster on an AVX2
    host, and 1.4-1.7x slower at fp32 and about 3x slower at bf16 on an AVX-512 host.

    ``engine`` ``"onnxruntime"`` or ``"openvino"`` runs the fp32 folded copy's ONNX
    conversion there (:mod:`dgf.engines`; converted once per weights, cached);
    ``"auto"`` adds every installed engine to the measured candidates. The trainer
    passes ``refresh_calls``, the number of calls one set of weights serves (its
    weights change every epoch): another engine then wins only if it is faster with
    its conversion spread over those calls. The first use of each path is named on
    stderr.
    """
    names = candidates(precision, jit, engine)
    copy = inference_model(generator, precision)
    if len(names) == 1:
        call = _path(generator, copy, names[0], precision)
        _say_path(names[0], precision)
        return call
    memo = (tuple(names), refresh_calls)
    try:
        call = _AUTO[copy][memo]
    except (KeyError, TypeError):
        call = AutoCall(generator, copy, precision, names, refresh_calls)
        try:
            _AUTO.setdefault(copy, {})[memo] = call
        except TypeError:
            pass
    call.refresh()
    return call


# The latest engine call per (engine, precision, layout): (weights digest, call). The
# trainer's weights change every epoch; one entry per layout keeps one session alive.
_ENGINE_CALLS: dict[tuple[str, str, str], tuple[str, Callable]] = {}


def engine_call(generator: Any, engine: str, precision: str) -> tuple[Callable, float]:
    """``engine``'s call of ``generator`` at ``precision`` with its current weights, and
    the seconds spent converting (0.0 when cached in this process or on disk).

    DgfError when the engine is missing, cannot run ``precision`` or cannot convert or
    load the model (naming its file and suggesting ``--engine tensorflow``)."""
    engines.check_engine(engine, precision)
    copy = inference_model(generator, "fp32")
    layout = model_layout(copy)
    content = engines.content_digest(copy, layout)
    memo = (engine, precision, layout)
    held = _ENGINE_CALLS.get(memo)
    if held is not None and held[0] == content:
        return held[1], 0.0
    source = model_source(generator)
    data, seconds = engines.onnx_bytes(copy, content, source, engine)
    call = engines.make_call(engine, data, source, precision)
    _ENGINE_CALLS[memo] = (content, call)
    return call, seconds


def _path(generator: Any, copy: Any, name: str, precision: str) -> Callable:
    """The call of one candidate path (a name of :data:`dgf.calibration.CHOICES`)."""
    if name in ("xla", "plain"):
        return compiled_generator(copy, jit_compile=name == "xla")
    return engine_call(generator, name, precision)[0]


# Decisions of this process per (layout, precision, shape, candidates): a shape is
# looked up in the cache folder once per process.
_DECIDED: dict[tuple, str] = {}
# The auto calls per folded copy and candidate set (each holds the copy weakly), so
# the trainer's per-epoch scoring reuses its decisions and compiled graphs.
_AUTO: "weakref.WeakKeyDictionary[Any, dict[tuple, AutoCall]]" = weakref.WeakKeyDictionary()
_LAYOUTS: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()
# A call that takes longer than this is timed once per path while calibrating.
_LONG_CALL_S = 1.0
# Calibration stops after a round in which the fastest path is this much faster than
# the next.
_CLEAR_WIN = 1.25


def model_layout(model) -> str:
    """:func:`dgf.calibration.layout_key` of ``model``'s layers, computed once per model."""
    try:
        return _LAYOUTS[model]
    except (KeyError, TypeError):
        pass
    configs = [(type(layer).__name__, layer.get_config()) for layer in model.layers]
    configs.append(("dtype", {"policy": str(getattr(model, "dtype_policy", ""))}))
    layout = calibration.layout_key(configs)
    try:
        _LAYOUTS[model] = layout
    except TypeError:
        pass
    return layout


class AutoCall:
    """The fastest of several paths for the folded copy: TensorFlow with or without
    XLA, and (``engine="auto"``) ONNX Runtime and OpenVINO.

    On the first input of a shape it looks up :mod:`dgf.calibration`'s entry for this
    host, layout, precision, shape and candidates; without one it calibrates: every
    candidate is built (an engine converts the model, or takes the conversion from
    its cache; one that cannot is left out with a note) and runs on that input (the
    XLA one compiles), then each is timed, interleaved, for up to three rounds (one
    when a call takes over a second; the rounds stop once the fastest is 1.25x
    faster than the next), the fastest is kept and stored. With ``refresh_calls``
    (the trainer: new weights every epoch) an engine's time includes its conversion
    spread over that many calls. The chosen path's first output is returned, so no
    input is computed for nothing and every call gives what the chosen path gives.
    ``choices`` records the path taken per shape.
    """

    def __init__(self, generator, copy, precision: str, names: list[str],
                 refresh_calls: int | None = None) -> None:
        self._generator = weakref.ref(generator)
        self._copy = weakref.ref(copy)
        self.precision = precision
        self.names = list(names)
        self.refresh_calls = refresh_calls
        self.layout = model_layout(copy)
        self.choices: dict[tuple[int, ...], str] = {}
        self._fns: dict[str, Callable] = {}

    def refresh(self) -> None:
        """Forget the built paths: the next call takes the source model's current
        weights (TensorFlow's compiled graphs read the refolded copy; an engine's
        conversion is looked up again by its weights)."""
        self._fns.clear()

    def _fn(self, name: str) -> Callable:
        if name not in self._fns:
            self._fns[name] = _path(self._generator(), self._copy(), name, self.precision)
        return self._fns[name]

    def _key(self, shape: tuple[int, ...]) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        for name in self.names:
            extra.update(engines.versions(name))
        if self.refresh_calls is not None:
            extra["refresh_calls"] = int(self.refresh_calls)
        host = calibration.host_key(tf.__version__, runtime.gpu_models())
        return calibration.entry_key(host, self.layout, self.precision, shape,
                                     tuple(self.names), extra)

    def __call__(self, x):
        shape = tuple(int(s) for s in np.shape(x))
        memo = (self.layout, self.precision, shape, tuple(self.names), self.refresh_calls)
        choice = _DECIDED.get(memo)
        first = None
        if choice is None:
            key = self._key(shape)
            entry = calibration.read_entry(key)
            if entry is not None:
                choice = entry["choice"]
                _say_path(choice, self.precision, " (measured fastest on this host earlier)")
            else:
                choice, first = self._calibrate(x, key)
            _DECIDED[memo] = choice
        self.choices[shape] = choice
        _track(choice, self.precision)
        if first is not None:
            return first
        return self._fn(choice)(x)

    def _calibrate(self, x, key: dict[str, Any]) -> tuple[str, Any]:
        paths: dict[str, Callable] = {}
        setup: dict[str, float] = {}
        for name in self.names:
            start = time.perf_counter()
            try:
                if name in ("xla", "plain"):
                    paths[name] = self._fn(name)
                else:
                    call, seconds = engine_call(self._generator(), name, self.precision)
                    paths[name] = self._fns[name] = call
                    setup[name] = seconds
            except DgfError as exc:
                if name in ("xla", "plain"):
                    raise
                print(f"note: --engine auto leaves out {name}: {exc}", file=sys.stderr,
                      flush=True)
                continue
            setup.setdefault(name, time.perf_counter() - start)
        first: dict[str, np.ndarray] = {}
        long_call = False
        for name, fn in paths.items():
            start = time.perf_counter()
            first[name] = np.asarray(fn(x))  # XLA compiles, OpenVINO compiles the shape
            if len(first) == 1:
                long_call = time.perf_counter() - start > _LONG_CALL_S
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
        if self.refresh_calls:
            # New weights every epoch: whichever engine is chosen converts them again
            # each time. The engines share one conversion, so the first one timed it
            # and each is charged that time.
            converting = max((setup[name] for name in seconds if name not in ("xla", "plain")),
                             default=0.0)
            for name in seconds:
                if name not in ("xla", "plain"):
                    seconds[name] += converting / self.refresh_calls
        choice = min(seconds, key=seconds.get)
        where = calibration.write_entry(key, seconds, choice)
        words = {"xla": "XLA", "plain": "no XLA"}
        measured = ", ".join(
            f"{words.get(name, name)} {seconds[name]:.3g} s"
            + (f" (+{setup[name]:.3g} s converting)"
               if name not in words and setup.get(name, 0) > 0 and not self.refresh_calls else "")
            for name in seconds)
        spread = (f", conversions spread over {self.refresh_calls} calls"
                  if self.refresh_calls and any(n not in words for n in seconds) else "")
        print(f"note: calibrated the {self.precision} call on {'x'.join(map(str, key['shape']))}"
              f": {measured}{spread}; using {words.get(choice, choice)}"
              + (f" (stored in {where.parent})" if where else ""),
              file=sys.stderr, flush=True)
        _say_path(choice, self.precision)
        return choice, first[choice]
