"""The global batch of a training run and how it splits over the replicas.

``--batch-size`` is the global batch: the pairs one training step takes over all
replicas of all workers, split evenly among them. ``auto`` (the default) is the
paper's batch 1 on every replica, so the global batch is the number of replicas in
sync and ``dgf-train --h5 data.h5`` runs unchanged on 1 or 8 GPUs (or CPU devices).
The learning rate is never scaled with it (docs/distributed.md gives the rules to
apply by hand). A run's config.json records the plan (:meth:`BatchPlan.record`) and
a resumed ``auto`` run keeps the global batch it recorded, whatever the replicas now.

No TensorFlow here: the trainer passes the replica count of its strategy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from dgf.checks import is_int
from dgf.errors import DgfError

#: ``--batch-size auto``: 1 pair per replica, the global batch the replicas in sync.
AUTO_BATCH = "auto"
#: What a run's config.json records of its batch besides the ``batch_size`` setting:
#: not settings, read back on resume (:func:`dgf.config.read_batch`).
BATCH_RECORD_KEYS = ("replicas", "per_replica_batch", "global_batch")


@dataclass(frozen=True)
class BatchPlan:
    """How a run's global batch splits over the replicas in sync (:func:`plan_batch`)."""

    setting: int | str  # batch_size as given: an integer (the global batch) or "auto"
    replicas: int  # over all workers
    global_batch: int
    workers: int = 1

    @property
    def per_replica(self) -> int:
        return self.global_batch // self.replicas

    def record(self) -> dict[str, int]:
        """What config.json records besides ``batch_size`` (:data:`BATCH_RECORD_KEYS`)."""
        return dict(zip(BATCH_RECORD_KEYS, (self.replicas, self.per_replica,
                                            self.global_batch)))

    @classmethod
    def from_record(cls, setting: int | str, data: Mapping[str, Any]) -> BatchPlan:
        """The plan a config.json's :meth:`record` (in ``data``) describes; ValueError
        when the record is incomplete or does not add up."""
        values = [data.get(key) for key in BATCH_RECORD_KEYS]
        replicas, per_replica, global_batch = values
        if not all(is_int(v, numpy=False) and v > 0 for v in values) \
                or replicas * per_replica != global_batch \
                or (setting != AUTO_BATCH and setting != global_batch):
            raise ValueError(f"its batch record {dict(zip(BATCH_RECORD_KEYS, values))} does "
                             f"not add up with batch_size {setting!r}")
        return cls(setting, replicas, global_batch)

    def describe(self) -> str:
        """``global batch 2 = 1 per replica x 2 replicas (--batch-size auto)``."""
        over = f" over {self.workers} workers" if self.workers > 1 else ""
        auto = f" (--batch-size {AUTO_BATCH})" if self.setting == AUTO_BATCH else ""
        return (f"global batch {self.global_batch} = {self.per_replica} per replica x "
                f"{self.replicas} replica{'s' if self.replicas != 1 else ''}{over}{auto}")


def plan_batch(batch_size: int | str, replicas: int, *, workers: int = 1,
               recorded: BatchPlan | None = None) -> BatchPlan:
    """The global batch of a run with ``replicas`` replicas in sync (over all
    ``workers``): ``batch_size`` itself, or for ``"auto"`` 1 per replica; an ``auto``
    run that is resumed keeps the global batch its config.json ``recorded``, so the
    steps per epoch and the checkpoint's position mean what they meant.

    DgfError naming the replica count and the two nearest valid sizes when the global
    batch does not split evenly over the replicas.
    """
    keep = batch_size == AUTO_BATCH and recorded is not None \
        and recorded.setting == AUTO_BATCH
    if batch_size == AUTO_BATCH:
        global_batch = recorded.global_batch if keep else replicas
    else:
        global_batch = int(batch_size)
    if global_batch % replicas:
        low = max(replicas, global_batch // replicas * replicas)
        where = f"{replicas} replicas" + (f" on {workers} workers" if workers > 1 else "")
        if keep:
            raise DgfError(
                f"this run's global batch {global_batch} (--batch-size {AUTO_BATCH} on "
                f"{recorded.replicas} replicas, which a resume keeps) does not split evenly "
                f"over {where}; resume it on a number of replicas that divides "
                f"{global_batch}, or pass --batch-size {low} or {low + replicas} (a multiple "
                f"of {replicas})")
        raise DgfError(
            f"batch size {global_batch} does not split evenly over {where}; use {low} or "
            f"{low + replicas} (a multiple of {replicas}), or --batch-size {AUTO_BATCH} "
            f"for 1 per replica")
    return BatchPlan(batch_size, replicas, global_batch, workers)
