"""Epoch-end cost: the work at each epoch's end as a share of the epoch's steps.

Every epoch record in ``metrics.jsonl`` carries ``train_seconds`` (the epoch's
steps), ``end_seconds`` (everything after them: BatchNorm re-estimation, scoring
with its strip, TensorBoard, the model files) and ``end_parts`` (seconds per
action). Both are timed in the same run, so the share is a ratio that a busy
machine shifts much less than the absolute seconds.

    # train a config for N epochs into a temporary folder, then report
    python benchmarks/bench_epoch_end.py --config configs/cpu-pairs-small.yaml --epochs 1
    # report a finished run (for example the demo's)
    python benchmarks/bench_epoch_end.py --run demo_out/run

Extra ``dgf-train`` flags go after ``--``, e.g. ``-- --eval-every 2``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def epoch_records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, filter(None, lines)) if r.get("kind") == "epoch"]


def report(run: Path) -> float:
    """Print one row per epoch and the run's share; returns the share."""
    records = epoch_records(run)
    if not records:
        raise SystemExit(f"{run / 'metrics.jsonl'} has no epoch records")
    names = sorted({k for r in records for k in r.get("end_parts", {})})
    print(f"{'epoch':>5} {'steps s':>8} {'end s':>6} {'share':>6}  "
          + " ".join(f"{n:>11}" for n in names))
    for r in records:
        parts = r.get("end_parts", {})
        print(f"{r['epoch']:>5} {r['train_seconds']:>8.2f} {r['end_seconds']:>6.2f} "
              f"{r['end_seconds'] / r['train_seconds']:>6.1%}  "
              + " ".join(f"{parts[n]:>11.2f}" if n in parts else f"{'-':>11}" for n in names))
    share = sum(r["end_seconds"] for r in records) / sum(r["train_seconds"] for r in records)
    print(f"epoch-end work over the run: {share:.1%} of the steps' time "
          f"({len(records)} epochs)")
    return share


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="report this finished run folder")
    parser.add_argument("--config", type=Path, help="train this config file")
    parser.add_argument("--epochs", type=int, default=1, help="epochs to train")
    args = parser.parse_args(argv)
    if (args.run is None) == (args.config is None):
        parser.error("give exactly one of --run and --config")
    if args.run is not None:
        report(args.run)
        return
    from dgf import cli

    with tempfile.TemporaryDirectory(prefix="bench_epoch_end_") as tmp:
        run = Path(tmp) / "run"
        status = cli.train_main(["--config", str(args.config), "--run-dir", str(run),
                                 "--epochs", str(args.epochs), *extra])
        if status:
            raise SystemExit(f"dgf-train exited {status}")
        report(run)


if __name__ == "__main__":
    main()
