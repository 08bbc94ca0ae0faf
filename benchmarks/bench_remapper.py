"""The generator's TensorFlow call with Grappler's remapper on and off, per precision.

Grappler's remapper fuses Conv2D + BiasAdd (+ LeakyRelu) into one ``_FusedConv2D``.
With oneDNN on (TensorFlow turns it on by itself on CPUs with AVX512-VNNI/BF16 or
AMX; ``TF_ENABLE_ONEDNN_OPTS=1`` forces it elsewhere) its second pass also fuses
``_FusedConv2D + LeakyRelu`` without checking that the convolution's output has no
other reader; the head convolution's output also feeds the global skip, so that
pass fails ("remapper failed: INVALID_ARGUMENT: Mutation::Apply error: fanout
'generator_1/global_skip_1/concat' exist for missing node
'generator_1/head_conv_1/BiasAdd'") and TensorFlow runs the graph of the first pass.

This measures what the remapper is worth and what its failure costs. The remapper
setting (``tf.config.optimizer.set_experimental_options({"remapping": ...})``) is
part of the key TensorFlow instantiates a function under, so one process holds the
folded generator (``dgf.runtime.inference_model``, no XLA) optimized both ways and
alternates them call by call (on, off, off, on, ...): a busy machine slows both
alike. Each ``--onednn`` setting runs in its own process (TF_ENABLE_ONEDNN_OPTS is
read at start-up), which says whether it printed the remapper's failure. Times are
medians of ``--repeats`` calls per setting on one ``--size`` x ``--size`` input,
after ``--warmup`` untimed calls of each.

    python benchmarks/bench_remapper.py --size 512 --repeats 10
    python benchmarks/bench_remapper.py --onednn default on --precisions fp32
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from dgf import host  # noqa: E402  (no TensorFlow)

WORKER = r"""
import json, sys, time
args = json.loads(sys.argv[1])
sys.path.insert(0, args["repo"])
import numpy as np
import tensorflow as tf
from dgf.runtime import compiled_generator, inference_model, load_generator
from dgf.weights import bundled_model
generator = load_generator(args["model"] or bundled_model())
x = np.random.default_rng(0).uniform(-1, 1, (1, args["size"], args["size"], 3))
x = x.astype("float32")
def timed(call, remapper):
    tf.config.optimizer.set_experimental_options({"remapping": remapper})
    start = time.perf_counter()
    np.asarray(call(x))
    return time.perf_counter() - start
results = {}
for precision in args["precisions"]:
    call = compiled_generator(inference_model(generator, precision), False)
    print(f"@@ {precision}", file=sys.stderr, flush=True)  # its log lines follow
    for _ in range(args["warmup"]):
        for remapper in (True, False):
            timed(call, remapper)
    times = {True: [], False: []}
    for index in range(args["repeats"]):
        for remapper in ((True, False) if index % 2 == 0 else (False, True)):
            times[remapper].append(timed(call, remapper))
    results[precision] = {"on": times[True], "off": times[False]}
print(json.dumps(results))
"""


def run_process(onednn: str, args) -> tuple[dict, set[str]]:
    """Every precision's times with the remapper on and off, in one process with
    oneDNN ``onednn``; and the precisions whose graph made the remapper fail."""
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"  # errors (the remapper's) still printed
    env.pop("DGF_VERBOSE", None)
    if onednn == "default":
        env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    else:
        env["TF_ENABLE_ONEDNN_OPTS"] = "1" if onednn == "on" else "0"
    payload = {"repo": str(REPO), "precisions": args.precisions, "size": args.size,
               "warmup": args.warmup, "repeats": args.repeats, "model": args.model}
    done = subprocess.run([sys.executable, "-c", WORKER, json.dumps(payload)], env=env,
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"worker failed (oneDNN {onednn}):\n{done.stderr[-3000:]}")
    failed = {part.split(None, 1)[0] for part in done.stderr.split("@@ ")[1:]
              if "remapper failed" in part}
    return json.loads(done.stdout.strip().splitlines()[-1]), failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="generator .keras file (default: the bundled model)")
    parser.add_argument("--size", type=int, default=512, help="input edge in pixels")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        choices=["fp32", "bf16"])
    parser.add_argument("--onednn", nargs="+", default=["default", "on"],
                        choices=["default", "on", "off"],
                        help="TF_ENABLE_ONEDNN_OPTS of each process: default leaves it "
                        "unset (TensorFlow decides from the CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per setting")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per setting")
    args = parser.parse_args()

    flags = sorted(host.cpu_flags() & {"avx2", "fma", "avx512f", "avx512_vnni",
                                       "avx512_bf16", "amx_bf16"})
    print(f"{host.cpu_model() or 'unknown CPU'} ({', '.join(flags) or 'no avx2'}), "
          f"{host.cores()} cores; {args.size}x{args.size}, median of {args.repeats} "
          f"calls per setting; ratio off / on (> 1: the remapper makes it faster)")
    for onednn in args.onednn:
        results, failed = run_process(onednn, args)
        for precision, times in results.items():
            on, off = statistics.median(times["on"]), statistics.median(times["off"])
            note = "  (remapper failed; its first pass kept)" if precision in failed else ""
            print(f"{precision} oneDNN {onednn:7s} on {on:.3f} s  off {off:.3f} s  "
                  f"ratio {off / on:.2f}{note}", flush=True)


if __name__ == "__main__":
    main()
