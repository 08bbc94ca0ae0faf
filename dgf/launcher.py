"""The ``--local-workers`` launcher: N ``dgf-train`` workers on this machine, each with
its own TF_CONFIG on a free loopback port, their output prefixed ``[worker I]``.

TensorFlow's gRPC servers listen on every interface (``0.0.0.0:PORT``; the address
in TF_CONFIG names only the port, and TensorFlow has no option to bind elsewhere),
and its distributed runtime has no authentication: whoever reaches a worker's port
can have it run graph operations. So :func:`launch_private` starts the workers in a
private network namespace of their own that has only the loopback interface (a
Linux user namespace makes this possible without root): nothing outside this
machine, nor other processes on it, can reach their ports. Where the system does
not allow that, the launcher says so in its first line and runs them as before.

TensorFlow-free, so the launcher process does not load it.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Any, Mapping, Sequence

from dgf.config import on_off
from dgf.errors import DgfError


def tf_config(addresses: Sequence[str], index: int) -> str:
    """The TF_CONFIG of worker ``index`` in a cluster of ``addresses`` (worker 0 is
    the chief)."""
    return json.dumps({"cluster": {"worker": list(addresses)},
                       "task": {"type": "worker", "index": int(index)}})


# --------------------------------------------------------------------------- launcher
def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` TCP ports that are free on ``host`` now (held open together, so they
    differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _pump(stream: IO[bytes], prefix: bytes, out: IO[bytes], lock: threading.Lock) -> None:
    """Copy a worker's output to ``out``, each line (or progress-bar redraw, ended by
    a carriage return) prefixed with the worker's name."""
    pending = b""
    while True:
        chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not chunk:
            break
        pending += chunk
        parts = re.split(rb"(\r|\n)", pending)
        pending = parts.pop() if len(parts) % 2 else b""
        with lock:
            for text, end in zip(parts[::2], parts[1::2]):
                if text or end == b"\n":  # a progress bar's leading \r alone: skipped
                    out.write(prefix + text + end)
            out.flush()
    if pending:
        with lock:
            out.write(prefix + pending + b"\n")
            out.flush()


def launch_local_workers(count: int, argv: Sequence[str], *, host: str = "127.0.0.1",
                         out: IO[bytes] | None = None, grace: float = 30.0,
                         python: str | None = None, private: bool = False) -> int:
    """Start ``count`` ``dgf-train`` workers on this machine, each with its own
    TF_CONFIG on a free port of ``host``, passing them ``argv``; stream their output
    prefixed ``[worker N]``. When one fails the others are stopped (SIGTERM, then
    SIGKILL after ``grace`` seconds). Returns 0 if every worker succeeded, else the
    first failure's exit status (128 + signal for a killed worker). ``private``:
    this process runs in :func:`launch_private`'s namespace (said in the first line)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise DgfError(f"--local-workers must be a positive integer, got {count!r}")
    out = out if out is not None else sys.stdout.buffer
    addresses = [f"{host}:{port}" for port in free_ports(count, host)]
    lock = threading.Lock()
    code = "import sys; from dgf.cli import train_main; sys.exit(train_main())"
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    where = (" in a private network namespace (loopback only: no other machine or "
             "process can reach their ports)" if private else "")
    print(f"starting {count} workers: {', '.join(addresses)}{where}", flush=True)
    try:
        for index in range(count):
            env = {**os.environ, "TF_CONFIG": tf_config(addresses, index)}
            proc = subprocess.Popen([python or sys.executable, "-c", code, *argv], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            procs.append(proc)
            pump = threading.Thread(target=_pump, args=(proc.stdout, f"[worker {index}] ".encode(),
                                                        out, lock), daemon=True)
            pump.start()
            pumps.append(pump)
        failed: tuple[int, int] | None = None
        while failed is None and any(p.poll() is None for p in procs):
            for index, proc in enumerate(procs):
                if proc.poll() not in (None, 0):
                    failed = (index, proc.returncode)
                    break
            time.sleep(0.2)
        if failed is None:
            failed = next(((i, p.returncode) for i, p in enumerate(procs) if p.returncode), None)
    except KeyboardInterrupt:
        _stop(procs, grace)
        for pump in pumps:
            pump.join(timeout=5)
        print("interrupted: stopped the workers", file=sys.stderr, flush=True)
        return 130
    if failed is not None:
        _stop(procs, grace)
    for pump in pumps:
        pump.join(timeout=10)
    if failed is None:
        print(f"all {count} workers finished", flush=True)
        return 0
    index, status = failed
    status = 128 - status if status < 0 else status
    print(f"error: worker {index} failed (exit status {status}); stopped the others",
          file=sys.stderr, flush=True)
    return status


def _stop(procs: Sequence[subprocess.Popen], grace: float) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def worker_argv(values: Mapping[str, Any], flags: Sequence[tuple[str, str]],
                extra: Sequence[str] = ()) -> list[str]:
    """Command-line flags that give a worker exactly the parsed ``values``:
    ``flags`` pairs each config key with its flag."""
    argv: list[str] = []
    by_key = dict((key, flag) for flag, key in flags)
    for key, value in values.items():
        if value is True or value is False:
            text = on_off(value)
        elif value is None:
            text = "full"
        else:
            text = str(value)
        argv += [by_key[key], text]
    return argv + list(extra)


# --------------------------------------------------------------------------- loopback only
# Run first thing in a fresh (single-threaded) Python: move into a new network
# namespace (and, without root, a user namespace that maps only this user), bring
# its loopback interface up, then exec the command in argv. Exit status 75 (and a
# reason on stderr) when the system does not allow it; nothing was started then.
_PRIVATE_NETWORK = r"""
import ctypes, fcntl, os, socket, struct, sys
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
uid, gid = os.getuid(), os.getgid()
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(CLONE_NEWNET | (0 if uid == 0 else CLONE_NEWUSER)) != 0:
    sys.stderr.write(os.strerror(ctypes.get_errno()) + "\n")
    sys.exit(75)
try:
    if uid != 0:
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                           ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as fh:
                fh.write(text)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, request))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))  # SIOCSIFFLAGS: IFF_UP
except OSError as exc:
    sys.stderr.write(f"{exc.strerror or exc}\n")
    sys.exit(75)
if len(sys.argv) > 1:
    os.execv(sys.argv[1], sys.argv[1:])
"""
_NOT_PRIVATE = 75

# The launcher inside the namespace: the first SIGINT or SIGTERM stops the workers
# (KeyboardInterrupt in launch_local_workers), later ones do not cut that short.
_INNER = r"""
import signal, sys
def stop(signum, frame):
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, stop)
from dgf.launcher import launch_local_workers
sys.exit(launch_local_workers(int(sys.argv[1]), sys.argv[2:], private=True))
"""


def private_network_refusal() -> str | None:
    """None where this system lets the launcher put its workers in a private
    network namespace; else why not (the kernel's words)."""
    done = subprocess.run([sys.executable, "-c", _PRIVATE_NETWORK], capture_output=True,
                          text=True, timeout=60)
    if done.returncode == 0:
        return None
    return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"status {done.returncode}"


def launch_private(count: int, argv: Sequence[str]) -> int:
    """:func:`launch_local_workers` inside a private network namespace that has
    only the loopback interface, where the system allows it; else as it is, with
    a first line that says the workers' ports are open on every interface."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise DgfError(f"--local-workers must be a positive integer, got {count!r}")
    refusal = private_network_refusal()
    if refusal is not None:
        print(f"warning: the workers' TensorFlow servers will listen on every network "
              f"interface (TensorFlow cannot bind them to 127.0.0.1 only), and this system "
              f"does not allow a private network namespace ({refusal}): anyone who can "
              f"reach this machine's ports can run code as you while it trains. Block them "
              f"with a firewall, or allow user namespaces", flush=True)
        return launch_local_workers(count, argv)
    command = [sys.executable, "-c", _PRIVATE_NETWORK, sys.executable, "-c", _INNER,
               str(count), *argv]
    proc = subprocess.Popen(command)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C (which it got too) or SIGTERM: it stops the workers
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        return 130
