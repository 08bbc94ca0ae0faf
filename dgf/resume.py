"""What a resumed run may not change, checked from its config.json alone.

:func:`dgf.config.resolve_config` runs these checks before anything loads
TensorFlow, so a refused resume answers at once; :func:`dgf.session.train` runs
them again for callers that build their config themselves. No TensorFlow import.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from dgf.errors import DgfError

if TYPE_CHECKING:
    from dgf.config import TrainConfig

#: Config keys that decide the shape of the networks: a checkpoint made with other
#: values cannot be restored, so a resumed run must keep them.
ARCHITECTURE_KEYS = ("channel_rate", "blocks", "patch", "residual", "batchnorm",
                     "space_to_depth")


def check_architecture(saved: TrainConfig, requested: Mapping[str, Any], run_dir: Path | str) -> None:
    """Refuse to resume ``run_dir`` (trained as ``saved``) with other network shapes.

    ``requested`` holds the values asked for now; keys it lacks are not checked.
    """
    for key in ARCHITECTURE_KEYS:
        if key in requested and requested[key] != getattr(saved, key):
            raise DgfError(
                f"{run_dir} was trained with {key}={getattr(saved, key)}; it cannot resume "
                f"with {key}={requested[key]}. Start a new run folder instead."
            )


#: Config keys that decide which pairs a step trains on: a worker resuming a
#: multi-worker run with another value would train on other batches than the ones
#: the checkpoint's position counts, so it is refused. The architecture keys are
#: refused for every run (:data:`ARCHITECTURE_KEYS`).
STREAM_KEYS = ("batch_size", "crop", "seed", "augment", "edge_crops")


def check_resume_settings(cfg: TrainConfig, saved: TrainConfig, run_dir: Path | str) -> None:
    """A multi-worker run resumes with the settings it was started with (``saved``,
    the run's config.json): a worker whose global batch, crop, seed or augmentation
    differ would train on other batches than the checkpoint's position counts."""
    if cfg.strategy != "multiworker":
        return
    for key in STREAM_KEYS:
        if getattr(saved, key) != getattr(cfg, key):
            raise DgfError(
                f"{run_dir} was trained with {key}={getattr(saved, key)}"
                + (" (the global batch, over all workers)" if key == "batch_size" else "")
                + f"; this worker was started with {key}={getattr(cfg, key)}. Every worker "
                f"of a multi-worker run resumes with the run's settings: drop that flag, or "
                f"start a new --run-dir"
            )
