"""Shared test setup: quiet TensorFlow, paths to shared data, synthetic inputs."""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py
import numpy as np
import pytest
from PIL import Image

from dgf.schema import blurred_name, sharp_name, source_name

REPO = Path(__file__).resolve().parents[1]
PAIRS_SMALL = REPO.parent / "shared" / "data" / "pairs-small"


@pytest.fixture(scope="session", autouse=True)
def calibration_cache(tmp_path_factory) -> Path:
    """The inference calibration cache (dgf.calibration) of the whole session, in a
    temporary folder instead of the user's cache (subprocesses inherit it)."""
    folder = tmp_path_factory.mktemp("dgf-cache")
    previous = os.environ.get("DGF_CACHE_DIR")
    os.environ["DGF_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("DGF_CACHE_DIR", None)
    else:
        os.environ["DGF_CACHE_DIR"] = previous


@pytest.fixture
def pairs_small() -> Path:
    """The 604 real side-by-side pairs, or a skip that says they are absent."""
    if not (PAIRS_SMALL / "train").is_dir():
        pytest.skip(f"real pairs not found at {PAIRS_SMALL} (shared data absent)")
    return PAIRS_SMALL


@pytest.fixture(scope="module")
def generator():
    """A tiny DGF generator (channel rate 8, 3 blocks) with fixed weights, for inference
    tests."""
    import keras

    from dgf.models import build_generator

    keras.utils.set_random_seed(3)
    return build_generator(channel_rate=8, blocks=3)


@pytest.fixture(scope="module")
def model_file(generator, tmp_path_factory) -> Path:
    """``generator`` saved as a .keras file."""
    path = tmp_path_factory.mktemp("model") / "generator.keras"
    generator.save(path)
    return path


# --- synthetic inputs -------------------------------------------------------------
# Plain helpers, imported by the test modules as ``from conftest import make_h5``
# (pytest puts tests/ on sys.path). Every one is deterministic in its arguments.


def noise_image(seed: int, height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8 of uniform random pixels."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def uniform_images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """float32 uniform in [-1, 1], the generator's input range."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype("float32")


def smooth_photos(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """(count, height, width, 3) uint8: smooth shapes plus noise, photo stand-ins."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    smooth = (np.sin(xx / 7.0)[..., None] + np.cos(yy / 11.0)[..., None] + 2) * 60
    noisy = smooth + rng.normal(0, 15, (count, height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def smooth_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """One (height, width, 3) image of :func:`smooth_photos`."""
    return smooth_photos(1, height, width, seed)[0]


def textured_photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A photo stand-in with smooth shapes and fine detail, so blur shows."""
    yy, xx = np.mgrid[:height, :width]
    base = 128 + 60 * np.sin(xx / 5.0)[..., None] * np.cos(yy / 7.0)[..., None]
    detail = rng.integers(-40, 40, (height, width, 3))
    return np.clip(base + detail, 0, 255).astype(np.uint8)


def write_photos(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[Path]:
    """``photo{i}.png`` files of :func:`textured_photo`, one per (height, width)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = folder / f"photo{i}.png"
        Image.fromarray(textured_photo(rng, h, w)).save(path)
        paths.append(path)
    return paths


def save_side_by_side(path: Path, left: np.ndarray, right: np.ndarray, **save_kw) -> None:
    """One image file holding ``left`` and ``right`` next to each other."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([left, right], axis=1)).save(path, **save_kw)


def read_halves(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The left and right halves of a side-by-side image (a middle odd column dropped)."""
    with Image.open(path) as img:
        pair = np.asarray(img.convert("RGB"))
    half = pair.shape[1] // 2
    return pair[:, :half], pair[:, half : 2 * half]


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height pixels and holds none: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def write_pairs_h5(
    path: Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    chunked: bool = True,
    sources: dict[str, list[str]] | None = None,
    schema_version: int | None = None,
) -> Path:
    """An HDF5 file in the build-hdf5 schema from ``{split: (sharp, blurred)}``.

    ``chunked``: one image per chunk, as build-hdf5 writes; else contiguous, as the
    seed scripts did. ``sources`` adds ``{split}_source`` name lists.
    """
    with h5py.File(path, "w") as f:
        if schema_version is not None:
            f.attrs["schema_version"] = schema_version
        for split, (sharp, blurred) in splits.items():
            for name, images in ((sharp_name(split), sharp), (blurred_name(split), blurred)):
                chunks = (1, *images.shape[1:]) if chunked else None
                f.create_dataset(name, data=images, chunks=chunks)
        for split, names in (sources or {}).items():
            f[source_name(split)] = np.array([n.encode() for n in names])
    return path


def _box_blur(img: np.ndarray, k: int = 5) -> np.ndarray:
    pad = k // 2
    padded = np.pad(img.astype(np.float32), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    out = np.zeros_like(img, dtype=np.float32)
    for dy in range(k):
        for dx in range(k):
            out += padded[dy:dy + img.shape[0], dx:dx + img.shape[1]]
    return np.clip(np.rint(out / (k * k)), 0, 255).astype(np.uint8)


def make_h5(path: Path, n_train: int = 4, n_test: int = 2, size: int = 48, seed: int = 0) -> Path:
    """A small training file: smooth sharp images with edges, box-blurred."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size

    def sharp_image() -> np.ndarray:
        channels = []
        for _ in range(3):
            fx, fy, ph = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, 6)
            wave = np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
            edges = (rng.uniform(0, 1, (size // 8, size // 8)) > 0.5).repeat(8, 0).repeat(8, 1)
            channels.append(127 + 70 * wave + 50 * (edges - 0.5))
        return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)

    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        sharp = np.stack([sharp_image() for _ in range(n)])
        splits[split] = (sharp, np.stack([_box_blur(s) for s in sharp]))
    return write_pairs_h5(path, splits)


def _wavy_images(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    # Low-frequency content plus noise, so SSIM is neither ~0 nor ~1.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack(
        [np.sin(xx / (3 + c) + k) * np.cos(yy / (4 + k) + c) for k in range(n) for c in range(3)]
    ).reshape(n, 3, h, w).transpose(0, 2, 3, 1)
    noisy = 127.5 + 100 * base + rng.normal(0, 12, base.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def make_eval_h5(
    path: Path, *, count: int = 7, height: int = 24, width: int = 40, with_source: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """A test split to score: wavy sharp images, blurred = sharp plus noise.

    Contiguous, names ``pair_{i}.jpg`` in ``test_source`` unless ``with_source`` is
    false. Returns (sharp, blurred).
    """
    rng = np.random.default_rng(1)
    sharp = _wavy_images(rng, count, height, width)
    noise = rng.integers(-25, 26, sharp.shape)
    blurred = np.clip(sharp.astype(int) + noise, 0, 255).astype(np.uint8)
    sources = {"test": [f"pair_{i}.jpg" for i in range(count)]} if with_source else None
    write_pairs_h5(path, {"test": (sharp, blurred)}, chunked=False, sources=sources)
    return sharp, blurred


def make_run(tmp_path: Path, snapshots: list[Path], epochs: int = 2) -> tuple[Path, Path]:
    """A run folder as dgf-train leaves it for dgf-eval: ``config.json`` naming a
    :func:`make_eval_h5` file, and ``snapshots[e - 1]`` as the epoch-``e`` snapshot.
    Returns (run folder, HDF5 file)."""
    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    h5 = tmp_path / "data.h5"
    make_eval_h5(h5)
    (run / "config.json").write_text(json.dumps({"h5": str(h5), "channel_rate": 8}))
    for epoch in range(1, epochs + 1):
        (run / "snapshots" / f"generator_epoch_{epoch:04d}.keras").write_bytes(
            snapshots[epoch - 1].read_bytes()
        )
    return run, h5


def indexed_images(count: int, height: int, width: int) -> np.ndarray:
    """Every pixel names its own source: (row, column, pair index)."""
    images = np.empty((count, height, width, 3), dtype=np.uint8)
    images[..., 0] = np.arange(height)[None, :, None]
    images[..., 1] = np.arange(width)[None, None, :]
    images[..., 2] = np.arange(count)[:, None, None]
    return images


def make_indexed_h5(
    path: Path, count: int, height: int, width: int, *, seed_style: bool = False,
    offset: int = 0,
) -> Path:
    """A train and a test split of :func:`indexed_images` (pair index + ``offset``)
    where blurred = 255 - sharp, pixel by pixel.

    Writer-style files are chunked one image per chunk and carry attributes;
    seed-style files are contiguous with no attributes.
    """
    sharp = indexed_images(count, height, width)
    sharp[..., 2] += offset
    pair = (sharp, 255 - sharp)
    return write_pairs_h5(
        path, {"train": pair, "test": pair}, chunked=not seed_style,
        schema_version=None if seed_style else 1,
    )


def plain(generator, **fields):
    """A predictor of ``generator`` on TensorFlow's plain graph (no XLA), with the
    :class:`dgf.spec.InferenceSpec` fields given: what most tests run on, since the
    default (auto) measures XLA, ONNX Runtime and OpenVINO on every new shape
    (tests/test_calibration.py, test_jit_cli.py and test_engines.py test auto)."""
    from dgf.predictor import Predictor
    from dgf.spec import InferenceSpec

    return Predictor(generator, InferenceSpec(**{"jit": "off", "engine": "tensorflow",
                                                 **fields}))


# --- the order files run in ------------------------------------------------------
# The files that train in several processes, longest first (--durations, AVX-512 EPYC,
# docs/benchmarks.md); a file not named here only starts later.


# --- processes (the multi-worker tests read /proc) ---------------------------------
def processes_with(text: str) -> list[int]:
    """Ids of the processes whose command line holds ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode("utf-8", "replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def environ(pid: int) -> str:
    """Process ``pid``'s environment as text ("" once it has gone)."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode("utf-8", "replace")
    except OSError:
        return ""


def parent(pid: int) -> int | None:
    """The parent process id of ``pid`` (None once it has gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))


def describe(pid: int) -> str:
    """``pid``, its parent and the start of its command line, for a failure message."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()[:160].replace(b"\0", b" ")
    except OSError:
        command = b"(gone)"
    return f"{pid} (parent {parent(pid)}): {command.decode('utf-8', 'replace')}"


def worker_processes(text: str, launcher: int, count: int = 2) -> list[int]:
    """The ``count`` worker processes (TF_CONFIG in their environment) whose command
    line holds ``text``, ``launcher`` aside. A worker starting a child (its stderr
    relay, start-up watchdog, git for the run's record) shows the worker's command
    line and environment until the child's exec: a process whose parent also matches
    is such a child, and one gone by the time its parent is read was a short-lived
    one; neither is a worker."""
    found = [pid for pid in processes_with(text) if pid != launcher
             and "TF_CONFIG" in environ(pid)]
    workers = [pid for pid in found if parent(pid) not in (*found, None)]
    assert len(workers) == count, [describe(pid) for pid in found]
    return workers


def workers_on_loopback_only(text: str, launcher: int) -> list[int]:
    """The two worker processes of :func:`worker_processes`, each checked to be in a
    network namespace whose only interface is loopback, listening there and on no
    port of this machine's own namespace (``ss``)."""
    workers = worker_processes(text, launcher)
    host = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    for pid in workers:
        interfaces = [line.split(":")[0].strip() for line in
                      Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]]
        assert interfaces == ["lo"], interfaces
        assert listening(pid), f"worker {pid} is not listening"
        assert f"pid={pid}," not in host  # nothing of it in this machine's namespace
    return workers


def listening(pid: int) -> list[str]:
    """The TCP ports process ``pid``'s network namespace listens on (hex address:port)."""
    rows = []
    for name in ("tcp", "tcp6"):
        for line in (Path(f"/proc/{pid}/net") / name).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                rows.append(fields[1])
    return rows


LONGEST_FILES = ("test_multiworker.py", "test_train.py", "test_faults.py", "test_devices.py",
                 "test_demo.py")


def pytest_collection_modifyitems(config, items):
    """The longest files first (``LONGEST_FILES``, then by their number of slow tests),
    each file's tests in their own order. ``make test`` hands whole files to its two
    workers in collection order (``--dist loadfile``): a long file collected last
    (test_train.py, alphabetically) would run alone at the end while the other worker
    idles; longest first, the short files fill the gaps at the end."""
    slow: dict = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)

    def rank(item) -> tuple[int, int]:
        name = item.path.name
        return (LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES),
                -slow[item.path])

    items.sort(key=rank)  # stable: a file's order is kept
