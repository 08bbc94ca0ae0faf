"""build-hdf5 speed and memory against a seed-style conversion measured in the same run.

    .venv/bin/python benchmarks/bench_build_hdf5.py [--pairs DIR] [--repeats 3]

1. The real side-by-side pairs (default ../shared/data/pairs-small, 604 images):
   images/s and peak RSS of `build_hdf5` (all cores) and of a straightforward
   single-process seed-style conversion (PIL, crop, LANCZOS, Python lists,
   np.array, one h5py write). Every run is a fresh subprocess so peak RSS is its own.
2. The same at 4x the images (symlinked copies): our peak RSS stays flat while the
   seed style grows with the data.
3. GOPRO-sized 2560x720 side-by-side JPEGs: decoding with JPEG draft mode on vs off.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# --- what runs inside one measured subprocess -----------------------------------
def seed_style(jpeg_dir: Path, output: Path, size: int = 256) -> int:
    """The seed's conversion: everything decoded into lists, then one write per split."""
    import h5py
    import numpy as np
    from PIL import Image

    count = 0
    with h5py.File(output, "w") as f:
        for split in ("train", "test"):
            sharp, blurred = [], []
            for path in sorted((jpeg_dir / split).glob("*.jpg")):
                im = Image.open(path)
                w, h = im.size
                left = im.crop((0, 0, w // 2, h)).resize((size, size), Image.LANCZOS)
                right = im.crop((w // 2, 0, w, h)).resize((size, size), Image.LANCZOS)
                sharp.append(np.array(left))
                blurred.append(np.array(right))
            f.create_dataset(f"{split}_data_full", data=np.array(sharp))
            f.create_dataset(f"{split}_data_blur", data=np.array(blurred))
            count += len(sharp)
    return count


def ours(jpeg_dir: Path, output: Path, workers: int | None) -> int:
    from dgf.hdf5 import BuildOptions, build_hdf5

    report = build_hdf5(jpeg_dir, output, BuildOptions(workers=workers), overwrite=True,
                        progress=False)
    return sum(report.counts.values())


def child(kind: str, jpeg_dir: Path, output: Path) -> None:
    start = time.perf_counter()
    if kind == "seed":
        n = seed_style(jpeg_dir, output)
    elif kind == "ours":
        n = ours(jpeg_dir, output, None)
    else:
        n = ours(jpeg_dir, output, 1)
    seconds = time.perf_counter() - start
    me = resource.getrusage(resource.RUSAGE_SELF)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + workers.ru_utime + workers.ru_stime
    print(json.dumps({
        "images": n,
        "seconds": seconds,
        "cpu_seconds": cpu,  # includes interpreter start and imports
        "rss_mb": me.ru_maxrss / 1024,
        "worker_rss_mb": workers.ru_maxrss / 1024,
    }))


# --- the driver ---------------------------------------------------------------------
def measure(kind: str, jpeg_dir: Path, output: Path) -> dict:
    output.unlink(missing_ok=True)  # every run builds a fresh file, like the seed
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(jpeg_dir), str(output)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def replicate(src: Path, dst: Path, times: int) -> Path:
    for split in ("train", "test"):
        (dst / split).mkdir(parents=True)
        for path in sorted((src / split).glob("*.jpg")):
            for k in range(times):
                (dst / split / f"r{k}_{path.name}").symlink_to(path.resolve())
    return dst


def warm_cache(folder: Path) -> None:
    for path in folder.rglob("*.jpg"):
        path.read_bytes()


def bench_pairs(pairs: Path, tmp: Path, repeats: int) -> None:
    warm_cache(pairs)
    runs: dict[str, list[dict]] = {"seed": [], "ours": [], "ours-1": []}
    for _ in range(repeats):
        for kind in runs:  # interleaved so background load hits all alike
            runs[kind].append(measure(kind, pairs, tmp / f"{kind}.h5"))
    rate = {k: statistics.median(r["images"] / r["seconds"] for r in v) for k, v in runs.items()}
    rss = {k: max(r["rss_mb"] for r in v) for k, v in runs.items()}
    cpu = {
        k: statistics.median(r["cpu_seconds"] / r["images"] * 1e3 for r in v)
        for k, v in runs.items()
    }
    wrss = max(r["worker_rss_mb"] for r in runs["ours"])
    n = runs["seed"][0]["images"]
    labels = {
        "seed": "seed style (1 process)",
        "ours-1": "build_hdf5 --workers 1",
        "ours": f"build_hdf5 (all {os.cpu_count()} cores)",
    }
    print(f"[1] {pairs} ({n} side-by-side 512x256 JPEGs -> 256x256), median of {repeats}")
    for kind, label in labels.items():
        extra = f" main, {wrss:.0f} MB per worker" if kind == "ours" else ""
        print(
            f"    {label:<26} {rate[kind]:7.1f} images/s  {cpu[kind]:5.2f} CPU ms/image  "
            f"peak RSS {rss[kind]:5.0f} MB{extra}"
        )
    print(
        f"    speed ratio ours/seed: {rate['ours'] / rate['seed']:.2f}x "
        f"(workers=1: {rate['ours-1'] / rate['seed']:.2f}x)"
    )

    big = replicate(pairs, tmp / "x4", 4)
    r_seed = measure("seed", big, tmp / "seed4.h5")
    r_ours = measure("ours", big, tmp / "ours4.h5")
    print(f"[2] peak RSS at 1x vs 4x the images ({n} vs {r_seed['images']})")
    print(f"    seed style   {rss['seed']:6.0f} MB -> {r_seed['rss_mb']:6.0f} MB "
          f"({r_seed['rss_mb'] / rss['seed']:.2f}x)")
    print(f"    build_hdf5   {rss['ours']:6.0f} MB -> {r_ours['rss_mb']:6.0f} MB "
          f"({r_ours['rss_mb'] / rss['ours']:.2f}x); workers {wrss:.0f} -> "
          f"{r_ours['worker_rss_mb']:.0f} MB")


def bench_draft(pairs: Path, tmp: Path, count: int, repeats: int) -> None:
    import numpy as np
    from PIL import Image

    from dgf import sources

    folder = tmp / "gopro-sized"
    folder.mkdir()
    photos = sorted((pairs / "train").glob("*.jpg"))[:count]
    for i, photo in enumerate(photos):
        im = Image.open(photo)
        w, h = im.size
        boxes = ((0, 0, w // 2, h), (w // 2, 0, w, h))
        halves = [im.crop(box).resize((1280, 720), Image.BICUBIC) for box in boxes]
        canvas = Image.new("RGB", (2560, 720))
        canvas.paste(halves[0], (0, 0))
        canvas.paste(halves[1], (1280, 0))
        canvas.save(folder / f"{i:03d}.jpg", quality=90)
    files = sorted(folder.glob("*.jpg"))
    warm_cache(folder)
    pairs_ = [sources.PairSource(p, p, p.name, p.name) for p in files]
    best = {False: float("inf"), True: float("inf")}
    for _ in range(repeats):
        for draft in best:  # interleaved so background load hits both alike
            start = time.perf_counter()
            for pair in pairs_:
                sources.decode_pair(pair, 256, draft=draft)
            best[draft] = min(best[draft], time.perf_counter() - start)
    a = np.stack(sources.decode_pair(pairs_[0], 256, draft=True)[:2]).astype(int)
    b = np.stack(sources.decode_pair(pairs_[0], 256, draft=False)[:2]).astype(int)
    print(
        f"[3] {len(files)} side-by-side 2560x720 JPEGs -> 256x256, one process, "
        f"best of {repeats}"
    )
    print(f"    draft off  {len(files) / best[False]:6.1f} images/s")
    print(
        f"    draft on   {len(files) / best[True]:6.1f} images/s   "
        f"({best[False] / best[True]:.2f}x faster; mean |difference| "
        f"{np.abs(a - b).mean():.2f} of 255)"
    )


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
        return
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--pairs", type=Path, default=REPO.parent / "shared" / "data" / "pairs-small")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gopro-images", type=int, default=40)
    args = p.parse_args()
    if not (args.pairs / "train").is_dir():
        sys.exit(f"no pairs at {args.pairs}; pass --pairs DIR with train/ and test/")
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        bench_pairs(args.pairs, Path(tmp), args.repeats)
        bench_draft(args.pairs, Path(tmp), args.gopro_images, args.repeats)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
