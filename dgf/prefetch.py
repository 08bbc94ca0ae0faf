"""The first photo of a ``dgf-deblur`` process, decoded while TensorFlow loads.

A command process spends about 3 s importing TensorFlow on one core while the other
idles (2-core hosts; ``benchmarks/bench_deblur.py --command``). :func:`start`, called
before that import, forks a child that decodes the run's first photo, for
``--scale auto`` measures its blur, and shrinks it to the scale the run will choose
(:func:`dgf.blur.auto_factor` from the model's record, or ``--scale F``): 0.6 s of a
12 MP photo's time, done meanwhile. The
pixels land in memory the two processes share (anonymous shared mappings made
before the fork, sized from the photo's header), the rest comes through a pipe;
:func:`take` hands them over when the run reaches that photo, without a copy. Every
check the run makes of a photo (its output, its size against ``--max-megapixels``
and the memory left) still comes first, and the run uses the shrunk copy only when
the scale it chose gives that copy's size.

Nothing changes but when the work is done: a child that cannot read the photo (or
any failure of it) hands over nothing and the run reads it itself, so its errors
read as always. Only a process that has not loaded TensorFlow forks (a fork of a
process running TensorFlow's threads is not safe), and only photos up to
``MAX_PIXELS``. This module imports neither TensorFlow nor Keras.

**The photos after the first** (:func:`read_ahead`): while the run deblurs one photo,
a thread decodes the next, measures its blur and shrinks it, the same steps and the
same hand-over (:func:`take`). Decoding, the blur estimate and the shrink are
single-threaded work a 2-core host can do beside the model's calls and the output's
encoding, so a folder's later photos pay for them mostly in the background. A thread
needs no fork (TensorFlow is loaded by then); it holds at most one photo, up to
``MAX_PIXELS``, and any failure of it leaves the photo to the run.
"""
from __future__ import annotations

import mmap
import multiprocessing
import signal
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from dgf import host
from dgf.blur import auto_factor, model_reference
from dgf.images import LoadedImage, photo_size, read_image
from dgf.metadata import read_metadata, training_side
from dgf.spec import scaled_size
from dgf.tiling import _shrink

#: Larger photos are read by the run itself: the child would hold the decoded pixels
#: beside the parent's copy until it is taken.
MAX_PIXELS = 50_000_000

# The one pending read of this process: (photo, pipe end, child process, the pixels'
# and the shrunk copy's shared memory).
_PENDING: list[tuple[Path, Any, Any, mmap.mmap, mmap.mmap]] = []
# The one photo a thread is reading ahead: (photo, its future).
_AHEAD: list[tuple[Path, Future]] = []
_READER: list[ThreadPoolExecutor] = []


def start(path: Path | str, *, max_pixels: int, scale: str | float = 1.0,
          model: Path | str | None = None) -> bool:
    """Decode ``path`` in a forked child, where that is safe and worth it: for
    ``scale`` "auto" it also measures the blur and shrinks the photo as ``model``'s
    record asks; for a factor under 1 it shrinks it by that. True when a child was
    started."""
    path = Path(path)
    if _PENDING or "tensorflow" in sys.modules or not path.is_file() \
            or "fork" not in multiprocessing.get_all_start_methods():
        return False
    try:
        width, height = photo_size(path)
    except Exception:  # noqa: BLE001 - the run reads it and says what is wrong
        return False
    if width * height > min(max_pixels, MAX_PIXELS):
        return False
    # Shared with the child; upright or not, the same bytes. Pages are committed only
    # as they are written: the shrunk copy's mapping holds only its share.
    pixels, shrunk = mmap.mmap(-1, width * height * 3), mmap.mmap(-1, width * height * 3)
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child, name="dgf-first-photo", daemon=True,
                            args=(sender, path, max_pixels, (scale, model), (pixels, shrunk)))
    child.start()
    sender.close()
    _PENDING.append((path, receiver, child, pixels, shrunk))
    return True


def take(path: Path | str) -> tuple[Any, Any, np.ndarray | None] | None:
    """``(LoadedImage, BlurEstimate or None, the shrunk copy or None)`` of ``path``
    when it is the photo being read ahead and the child read it; None otherwise (the
    caller reads it)."""
    if _AHEAD and _AHEAD[0][0] == Path(path):
        _, future = _AHEAD.pop()
        try:
            return future.result()
        except Exception:  # noqa: BLE001 - the run reads it again and reports
            return None
    if not _PENDING or _PENDING[0][0] != Path(path):
        return None
    _, receiver, _, pixels, shrunk = _PENDING[0]
    try:
        result = receiver.recv()
    except (EOFError, OSError):  # the child died without a word
        result = None
    finally:
        discard(path)  # the child's read only: a thread may be reading the next photo
    if result is None:
        return None
    shape, alpha, metadata, estimate, small_shape = result
    # The arrays keep the mappings alive; nothing is copied.
    rgb = np.frombuffer(pixels, dtype=np.uint8).reshape(shape)
    small = None if small_shape is None else np.frombuffer(
        shrunk, dtype=np.uint8, count=int(np.prod(small_shape))).reshape(small_shape)
    return LoadedImage(rgb, alpha, metadata), estimate, small


def read_ahead(path: Path | str, *, max_pixels: int, scale: str | float = 1.0,
               side: int | None = None, reference: float | None = None) -> bool:
    """Read ``path`` in a thread while the run works on the photo before it: decode
    it, and shrink it to ``scale`` (a factor, or "auto": measured as
    :func:`dgf.blur.auto_factor` does with the model's training image ``side`` and
    training blur ``reference``). One photo at a time, up to ``MAX_PIXELS`` (and
    ``max_pixels``), when its decoded pixels take at most a quarter of the memory
    left. True when the thread was given it."""
    path = Path(path)
    if _AHEAD or not path.is_file():
        return False
    try:
        width, height = photo_size(path)
    except Exception:  # noqa: BLE001 - the run reads it and says what is wrong
        return False
    available = host.available_memory()
    if width * height > min(max_pixels, MAX_PIXELS) or (
            available is not None and 4 * 2 * width * height * 3 > available):
        return False
    if not _READER:
        _READER.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="dgf-read"))
    _AHEAD.append((path, _READER[0].submit(_load, path, max_pixels, scale, side,
                                           reference)))
    return True


def _load(path: Path, max_pixels: int, scale: str | float, side: int | None,
          reference: float | None) -> tuple[LoadedImage, Any, np.ndarray | None]:
    source = read_image(path, max_pixels=max_pixels)
    estimate, small = _shrunk_for(source.rgb, scale, side, reference)
    return source, estimate, small


def discard(path: Path | str | None = None) -> None:
    """Stop the reads ahead that will not be taken (or were): every one, or only
    ``path``'s. A thread's read is waited for and dropped; a child's pipe is closed."""
    def ours(entries: list) -> bool:
        return bool(entries) and (path is None or entries[0][0] == Path(path))

    while ours(_AHEAD):
        _, future = _AHEAD.pop()
        future.cancel() or future.exception()
    while ours(_PENDING):
        _, receiver, child, _, _ = _PENDING.pop()
        receiver.close()
        child.join(timeout=1.0)
        if child.is_alive():
            child.terminate()
            child.join()


def _scaled(rgb: np.ndarray, scale: str | float, model: Path | str | None
            ) -> tuple[Any, np.ndarray | None]:
    """:func:`_shrunk_for` with the training image side and blur read from
    ``model``'s record (for ``scale`` auto)."""
    if scale != "auto":
        return _shrunk_for(rgb, scale, None, None)
    record = read_metadata(model)
    return _shrunk_for(rgb, scale, training_side(record), model_reference(record, model)[0])


def _shrunk_for(rgb: np.ndarray, scale: str | float, side: int | None,
                reference: float | None) -> tuple[Any, np.ndarray | None]:
    """The blur estimate (``scale`` auto, a model with a training blur ``reference``)
    and the photo shrunk to the scale the run will choose (None at 1), as dgf.infer
    decides them."""
    estimate = None
    if scale == "auto":
        factor, estimate = auto_factor(rgb, side, reference)
    else:
        factor = float(scale)
    if not factor < 1.0:
        return estimate, None
    return estimate, _shrink(rgb, *scaled_size(*rgb.shape[:2], factor))


def _child(*args: Any) -> None:
    """The forked process: :func:`_read`, ended by Ctrl-C or SIGTERM without a word
    (they are the parent's to handle)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _read(*args)


def _read(sender, path: Path, max_pixels: int, how: tuple, memory: tuple) -> None:
    """The child's work: decode into the first of ``memory``, measure and shrink as
    ``how`` (scale, model) says into the second, send the rest; on any failure send
    None."""
    try:
        pixels, shrunk = memory
        source = read_image(path, max_pixels=max_pixels)
        np.frombuffer(pixels, dtype=np.uint8)[:] = source.rgb.reshape(-1)
        estimate, small = _scaled(source.rgb, *how)
        if small is not None:
            np.frombuffer(shrunk, dtype=np.uint8, count=small.size)[:] = small.reshape(-1)
        result = (source.rgb.shape, source.alpha, source.metadata, estimate,
                  None if small is None else small.shape)
    except Exception:  # noqa: BLE001 - the parent reads it again and reports
        result = None
    try:
        sender.send(result)
    except (OSError, ValueError):  # the parent is gone, or discarded the read
        pass
    finally:
        sender.close()
