"""The decoding worker processes of ``build-hdf5``: a process pool that decodes
batches of pairs (:func:`dgf.sources.decode_batch`) and hands the arrays back
through shared memory, in input order, with a bounded number of tasks in flight so
memory stays flat whatever the number of pairs.
"""
from __future__ import annotations

import math
import mmap
import multiprocessing
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np

from dgf import sources
from dgf.errors import DgfError
from dgf.fileio import os_reason
from dgf.host import size_text

# Each pool task carries at most this many decoded bytes back, so memory in flight
# stays bounded for native-resolution inputs too.
_TASK_BYTES = 4 << 20
_TASK_PAIRS = 16


def task_pairs(height: int, width: int, n: int, workers: int) -> int:
    per_bytes = max(1, _TASK_BYTES // (height * width * 3 * 2))
    balanced = max(1, math.ceil(n / (workers * 4)))
    return max(1, min(_TASK_PAIRS, per_bytes, balanced))


# Decoded pairs travel from the workers to the writer through this anonymous shared
# mapping, created before the workers fork, instead of being pickled: pushing
# ~400 KB per pair through a pipe costs about as much as decoding it. Each task in
# flight owns its own group of slots, so nothing is overwritten before it is written.
_SLOTS: mmap.mmap | None = None


def _slot_view(buffer, shape: tuple[int, int]) -> np.ndarray:
    """The buffer as (slots, 2, H, W, 3) uint8: [i, 0] sharp, [i, 1] blurred."""
    h, w = shape
    per = 2 * h * w * 3
    return np.frombuffer(buffer, np.uint8, count=(len(buffer) // per) * per).reshape(
        -1, 2, h, w, 3
    )


def _decode_to_slots(
    batch: Sequence[sources.PairSource],
    size: int | None,
    order: str,
    deflate_level: int | None,
    first_slot: int,
    shape: tuple[int, int],
) -> list[sources.Decoded]:
    """Pool task: decode a batch; park same-shape arrays in the shared slots.

    A parked pair comes back with ``sharp is None`` and ``reason is None``; anything
    else (failures, deflated bytes, an odd shape, no shared buffer under spawn)
    travels in the result itself.
    """
    results = sources.decode_batch(batch, size, order, True, deflate_level)
    if _SLOTS is None or deflate_level is not None:
        return results
    view = _slot_view(_SLOTS, shape)
    parked = []
    for k, out in enumerate(results):
        if out.reason is None and out.shape == tuple(shape):
            view[first_slot + k, 0] = out.sharp
            view[first_slot + k, 1] = out.blurred
            out = sources.Decoded(out.shape, None, None, notes=out.notes)
        parked.append(out)
    return parked


def decode_in_order(
    pool,
    pairs: Sequence[sources.PairSource],
    size: int | None,
    order: str,
    deflate_level: int | None,
    shape: tuple[int, int],
    task: int,
    window: int,
) -> Iterator[sources.Decoded]:
    """Decoded pairs in input order, with at most ``window`` tasks in flight.

    The bounded window is what keeps memory flat: a plain ``imap`` would queue every
    task at once and buffer results whenever writing is slower than decoding.
    Arrays yielded from the shared slots are valid until the next item is asked for.
    """
    if pool is None:
        for pair in pairs:
            # Looked up at call time so a replaced decode function takes effect.
            yield from sources.decode_batch([pair], size, order, True, deflate_level)
        return
    view = _slot_view(_SLOTS, shape) if _SLOTS is not None else None
    groups = window + 1  # the tasks in flight plus the one being written
    batches = enumerate(pairs[i : i + task] for i in range(0, len(pairs), task))
    pending: deque = deque()

    def submit(number: int, batch) -> None:
        first = (number % groups) * task
        args = (batch, size, order, deflate_level, first, shape)
        pending.append((first, pool.submit(_decode_to_slots, *args)))

    for number, batch in batches:
        submit(number, batch)
        if len(pending) >= window:
            break
    while pending:
        first, future = pending.popleft()
        results = future.result()
        following = next(batches, None)
        if following is not None:
            submit(*following)
        for k, out in enumerate(results):
            if out.reason is None and out.sharp is None:
                sharp, blurred = view[first + k, 0], view[first + k, 1]
                out = sources.Decoded(out.shape, sharp, blurred, notes=out.notes)
            yield out


@contextmanager
def pool(
    workers: int,
    splits: Sequence[sources.SplitSources],
    shapes: dict[str, tuple[int, int] | None],
    tasks: dict[str, int],
    window: int,
):
    """A process pool for decoding, with its shared slots; or None to decode here.

    Fork where the platform has it: the workers inherit the shared slots, no
    importable ``__main__`` is needed (scripts without a main guard, notebooks),
    and the children only run Pillow and NumPy. Under spawn the slots are not
    shared and results are pickled instead. An executor rather than
    ``multiprocessing.Pool``: a worker killed mid-task (e.g. out of memory) then
    fails the build instead of hanging it.
    """
    global _SLOTS
    if workers <= 1:
        yield None
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    if method == "fork":
        need = max(
            (window + 1) * tasks[s.split] * 2 * math.prod(shapes[s.split] or (1, 1)) * 3
            for s in splits
        )
        try:
            _SLOTS = mmap.mmap(-1, need)
        except OSError as exc:  # hdf5._check_resources estimates this; the kernel decides
            raise DgfError(
                f"cannot reserve {size_text(need)} for decoded pairs in flight ({os_reason(exc)}); "
                f"use a smaller --size or fewer --workers."
            ) from None
    executor = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context(method),
        initializer=sources.init_worker,
    )
    try:
        yield executor
    except BrokenProcessPool:
        raise DgfError(
            "a decoding worker process died (out of memory on a huge image?); run with "
            "--workers 1 to find the file."
        ) from None
    except BaseException:
        # Interrupted or failed: the tasks in flight are of no use. Waiting for them
        # took many seconds with large images (and a second Ctrl-C in that wait
        # left the workers behind), so the workers are stopped now.
        _kill_workers(executor)
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        # Not closed here: views handed to the writer may outlive the pool; the
        # mapping goes away with the last of them.
        _SLOTS = None


def _kill_workers(executor: ProcessPoolExecutor) -> None:
    # Python 3.14 has ProcessPoolExecutor.kill_workers(); before that the
    # processes are only reachable through the private ``_processes``.
    kill = getattr(executor, "kill_workers", None)
    if kill is not None:
        kill()
        return
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.kill()  # SIGKILL: the workers ignore SIGINT and SIGTERM
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.join(timeout=5)
