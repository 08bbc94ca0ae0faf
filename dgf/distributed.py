"""Training on several workers: the cluster in TF_CONFIG, the tf.distribute strategy,
who writes what, the checks that keep workers in step, and a launcher for local
workers.

``MultiWorkerMirroredStrategy`` sets up TensorFlow's collective ops, which TensorFlow
accepts only before its runtime starts (before any device is listed or tensor made).
:func:`select_strategy` is therefore the first TensorFlow call of a training run, and
so is :func:`split_cpu` when the CPU is split into logical devices.

Every worker runs the same command. The chief (task ``chief``, or else ``worker`` 0)
owns the run folder: config, metrics, strips, snapshots, checkpoints. The other
workers take part in every step and every checkpoint save (saving runs collectives)
but save into a private scratch folder that is removed when they finish.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from dgf.config import RunDir
from dgf.errors import DgfError, first_line
# The --local-workers launcher is TensorFlow-free, in its own module; its names are
# reachable from here too.
from dgf.launcher import free_ports, launch_local_workers, tf_config, worker_argv  # noqa: F401

# TrainConfig.collective_timeout (--collective-timeout, 600 s by default): seconds
# a collective operation (a gradient all-reduce, a checkpoint's variable reads) may
# wait for its peers before the worker gives up with an error. A peer that dies is
# noticed at once (its connections drop), and one that freezes or vanishes within
# about 10 s (it stops sending the coordination service's heartbeats); the timeout
# bounds the wait for a peer that is alive but does not arrive, and (through a
# watchdog process) the wait at startup for peers that never start. It must exceed the
# longest time one worker can run ahead of another: the first step's tracing and,
# at the end of an epoch, the chief's strip and snapshot writes.

#: Keys that name places on each host (shared storage may be mounted elsewhere),
#: left out of the check that every worker runs the same settings.
HOST_KEYS = ("h5", "run_dir")

_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$")


# --------------------------------------------------------------------------- TF_CONFIG
@dataclass(frozen=True)
class Cluster:
    """The cluster and this process's place in it, read from TF_CONFIG."""

    jobs: dict[str, tuple[str, ...]]  # "chief"/"worker" -> host:port of each task
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        return sum(len(self.jobs.get(job, ())) for job in ("chief", "worker"))

    @property
    def rank(self) -> int:
        """0 for the chief, then the workers in order."""
        chiefs = len(self.jobs.get("chief", ()))
        return self.task_index if self.task_type == "chief" else chiefs + self.task_index

    @property
    def is_chief(self) -> bool:
        if "chief" in self.jobs:
            return self.task_type == "chief"
        return self.task_index == 0

    @property
    def name(self) -> str:
        return f"{self.task_type} {self.task_index}"


def parse_tf_config(text: str | None = None) -> Cluster:
    """Read and check TF_CONFIG (``text``, or the environment variable).

    It must name a cluster of ``chief`` (at most one) and ``worker`` tasks, each a
    list of ``host:port``, and this process's task among them. DgfError says what is
    wrong and shows the expected form.
    """
    if text is None:
        text = os.environ.get("TF_CONFIG")
    example = ('e.g. {"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
               '"task": {"type": "worker", "index": 0}}')
    if not text:
        raise DgfError(
            "--strategy multiworker reads the cluster from the TF_CONFIG environment "
            f"variable, which is not set; set it on every host ({example}), or use "
            "--local-workers N to start N workers on this machine"
        )
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DgfError(f"TF_CONFIG is not JSON ({exc}); {example}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cluster"), dict):
        raise DgfError(f"TF_CONFIG has no \"cluster\" mapping; {example}")
    jobs: dict[str, tuple[str, ...]] = {}
    seen: set[str] = set()
    for job, addresses in data["cluster"].items():
        if job not in ("chief", "worker"):
            raise DgfError(
                f"TF_CONFIG: job {job!r} is not supported; dgf-train runs synchronous "
                f"training with \"chief\" and \"worker\" tasks only"
            )
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) for a in addresses)):
            raise DgfError(f"TF_CONFIG: cluster[{job!r}] must be a non-empty list of "
                           f"\"host:port\" strings, got {addresses!r}")
        for address in addresses:
            match = _ADDRESS.match(address)
            if match is None or not 0 < int(match.group(2)) < 65536:
                raise DgfError(f"TF_CONFIG: {address!r} in cluster[{job!r}] is not "
                               f"\"host:port\"")
            if address in seen:
                raise DgfError(f"TF_CONFIG: {address} appears twice in the cluster; "
                               f"every task needs its own port")
            seen.add(address)
        jobs[job] = tuple(addresses)
    if "worker" not in jobs and "chief" not in jobs:
        raise DgfError(f"TF_CONFIG: the cluster has no workers; {example}")
    if len(jobs.get("chief", ())) > 1:
        raise DgfError("TF_CONFIG: a cluster has at most one chief")
    task = data.get("task")
    if not isinstance(task, dict) or "type" not in task:
        raise DgfError(f"TF_CONFIG has no \"task\" ({{\"type\": ..., \"index\": ...}}) "
                       f"saying which task this process is; {example}")
    task_type, index = task["type"], task.get("index", 0)
    if task_type not in jobs:
        raise DgfError(f"TF_CONFIG: task type {task_type!r} is not in the cluster "
                       f"(it has {', '.join(sorted(jobs))})")
    if isinstance(index, bool) or not isinstance(index, int) \
            or not 0 <= index < len(jobs[task_type]):
        raise DgfError(f"TF_CONFIG: task index {index!r} is out of range; the cluster has "
                       f"{len(jobs[task_type])} {task_type} task(s), numbered from 0")
    return Cluster(jobs, task_type, index)


# --------------------------------------------------------------------------- devices
def split_cpu(count: int) -> None:
    """Split the host CPU into ``count`` logical devices, so that ``--strategy
    mirrored`` (or each worker of a multi-worker run) has ``count`` replicas on a
    machine without GPUs. Must run before TensorFlow starts; 1 leaves it whole."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise DgfError(f"--cpu-devices must be a positive integer, got {count!r}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration()] * count
    current = tf.config.get_logical_device_configuration(cpu) or []
    if (current and len(current) == count) or (not current and count == 1):
        return
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError:
        raise DgfError(
            f"--cpu-devices {count}: TensorFlow has already started in this process "
            f"with {len(current) or 1} CPU device(s); split the CPU before any other "
            f"TensorFlow call (dgf-train does)"
        ) from None


# --------------------------------------------------------------------------- strategy
def select_strategy(name: str, collective_timeout: float | None = None):
    """A tf.distribute strategy: one device, all local devices, or multi-worker.

    ``collective_timeout``: seconds a multi-worker collective may wait for its peers
    (None or 0: no limit). ``multiworker`` is created before anything else touches
    TensorFlow (listing devices would start it too early).
    """
    if name == "multiworker":
        cluster = parse_tf_config()
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=float(collective_timeout) if collective_timeout else None)
        # Creating the strategy waits, inside TensorFlow, until every task of the
        # cluster has registered, with no limit of its own.
        watchdog = _startup_watchdog(collective_timeout, cluster)
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy(
                communication_options=options)
        except RuntimeError as exc:
            if "program startup" not in str(exc) and "initialized" not in str(exc):
                raise
            raise DgfError(
                "--strategy multiworker must be set up before TensorFlow starts in "
                "this process; run training in a fresh process (dgf-train does)"
            ) from None
        except (tf.errors.OpError, ValueError) as exc:
            raise DgfError(
                f"{cluster.name} could not join the cluster {json.dumps(cluster.jobs)} "
                f"from TF_CONFIG: {first_line(exc)}"
            ) from None
        finally:
            if watchdog is not None:
                watchdog.kill()
                watchdog.wait()
        return strategy
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one"
    if name == "one":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        # All local GPUs; on a machine without GPUs, all logical CPU devices.
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    raise DgfError(f"unknown strategy {name!r}")


# The watchdog process of _startup_watchdog: sleeps, then, if its parent is still
# there, says why on the shared stderr and stops the parent.
_WATCHDOG = r"""
import os, signal, sys, time
parent, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
time.sleep(seconds)
try:
    os.kill(parent, 0)
except OSError:
    sys.exit(0)
os.write(2, message.encode())
os.kill(parent, signal.SIGKILL)
"""


def _startup_watchdog(seconds: float | None, cluster: Cluster) -> subprocess.Popen | None:
    """A watchdog that stops this process with a clear message if the cluster has
    not come together within ``seconds`` (None or 0: none); ``kill()`` it once the
    strategy exists.

    The wait happens in TensorFlow's C++ code while it holds Python's interpreter
    lock, so neither an exception nor a Python timer thread can end it: a separate
    process does, with SIGKILL. Nothing has been written yet, so nothing is lost.
    """
    if not seconds:
        return None
    message = (
        f"error: {cluster.name} waited {seconds:g} s for the other workers of TF_CONFIG "
        f"{json.dumps(cluster.jobs)} to start. Start every worker (the same dgf-train "
        f"command, each with its own TF_CONFIG task), check that these addresses are "
        f"reachable from every host, or raise --collective-timeout (0: wait without "
        f"limit)\n")
    return subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(seconds),
                             message], stdin=subprocess.DEVNULL)


def is_multiworker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        bool(getattr(strategy.cluster_resolver, "task_type", None))


def is_chief(strategy) -> bool:
    """Whether this process owns the run folder: always, but in a multi-worker run
    only the chief task (or worker 0 when the cluster has no chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    spec = resolver.cluster_spec().as_dict()
    if "chief" in spec:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def worker_name(strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return "this process"
    return f"{resolver.task_type} {resolver.task_id}"


def checkpoint_dir(run_dir: Path, strategy) -> tuple[Path, Path | None]:
    """Where this process saves checkpoints, and the scratch folder to remove at the
    end (None for the chief). A non-chief worker saves too (saving reads variables
    through collectives) but into a private folder under the temp folder, outside the
    run folder. Its name depends on the run and the task only, so a worker restarted
    after a crash clears what its killed predecessor left there."""
    if is_chief(strategy):
        return RunDir(run_dir).checkpoints, None
    run = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    task = worker_name(strategy).replace(" ", "-")
    scratch = Path(tempfile.gettempdir()) / f"dgf-{task}-{run}-checkpoints"
    remove_scratch(scratch)
    scratch.mkdir(parents=True)
    return scratch, scratch


def remove_scratch(scratch: Path | None) -> None:
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------- agreement
def _code(value: Any) -> float:
    """A number standing for ``value``, equal across processes exactly when the
    values are: numbers as themselves, anything else by a 48-bit hash."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value) and abs(value) < 2 ** 52:
        return float(value)
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
    return -float(int(digest[:12], 16)) - 1.0  # negative: never equals a real number


def _gather_per_worker(strategy, row: Sequence[float]):
    """Every worker's ``row``, one per worker in rank order (a collective)."""
    value = tf.constant([list(row)], tf.float64)

    @tf.function  # eager collectives work too, but warn of their overhead
    def gather():
        return strategy.gather(strategy.run(lambda: tf.identity(value)), axis=0)

    gathered = gather().numpy()
    per_worker = strategy.num_replicas_in_sync // max(1, _num_workers(strategy))
    return np.asarray(gathered)[::max(1, per_worker)]


def _num_workers(strategy) -> int:
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict()
    return sum(len(spec.get(job, [])) for job in ("chief", "worker"))


def num_workers(strategy) -> int:
    """The processes training together: the cluster's workers, 1 outside a
    multi-worker run."""
    return _num_workers(strategy) if is_multiworker(strategy) else 1


def check_workers_agree(strategy, cfg) -> None:
    """Every worker must run the same settings (paths aside): raise DgfError on all
    of them, naming the first key that differs and each worker's value, if not."""
    if not is_multiworker(strategy):
        return
    values = cfg.to_dict()
    keys = [k for k in sorted(values) if k not in HOST_KEYS]
    rows = _gather_per_worker(strategy, [_code(values[k]) for k in keys])
    for column, key in enumerate(keys):
        if len(set(rows[:, column].tolist())) > 1:
            codes = rows[:, column].tolist()
            shown = ", ".join(
                f"worker {rank}: {codes[rank]:g}" if codes[rank] >= 0 else f"worker {rank}: other"
                for rank in range(len(codes)))
            raise DgfError(
                f"the workers were started with different settings: {key} differs "
                f"({shown}; {worker_name(strategy)} has {values[key]!r}). Start every "
                f"worker with the same command"
            )


def check_same_start(strategy, step: int, epoch: int, run_dir: Path) -> None:
    """After restoring, every worker must stand at the chief's step: one that did
    not find the checkpoint (the run folder is not on storage it shares with the
    chief) would train other weights."""
    if not is_multiworker(strategy):
        return
    rows = _gather_per_worker(strategy, [float(step), float(epoch)])
    steps = [int(s) for s in rows[:, 0]]
    if len(set(steps)) > 1:
        listed = ", ".join(f"worker {rank} at step {s}" for rank, s in enumerate(steps))
        raise DgfError(
            f"the workers start from different checkpoints ({listed}). Every worker must "
            f"see the chief's run folder {run_dir}: put it on storage all hosts share, "
            f"at the same path"
        )


def collective_failure(exc: BaseException, strategy) -> DgfError:
    """The error a worker reports when its peers went away mid-run."""
    return DgfError(
        f"{worker_name(strategy)} lost contact with the other workers "
        f"({_collective_reason(exc)}). A worker died or hung; the chief's last checkpoint "
        f"is kept. Restart every worker with the same command to resume from it"
    )


def _collective_reason(exc: BaseException) -> str:
    """The line of a TensorFlow error that says what happened to the peers
    (its first line is often just "Graph execution error:")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for key in ("aborted by", "connection", "deadline", "timed out", "timeout",
                "unavailable", "failed"):
        for line in lines:
            if key in line.lower():
                return f"{type(exc).__name__}: {line[:200]}"
    return type(exc).__name__
