"""Inference speed of the generator against what this CPU's convolutions can do.

In one run:

(a) **peak**: a large 3x3 convolution (256 -> 256 channels, 'same' padding, float32,
    compiled) at ``--peak-size``, in GFLOP/s: the most a convolution reaches here.
(b) **generator**: at each channel rate (8, 16, 64 by default) on ``--size`` images,
    the seconds per image and GFLOP/s of
      * ``today``: ``dgf.runtime.compiled_generator`` on the model as built (the path
        every inference entry point used before BatchNorm folding);
      * ``fp32``: ``dgf.runtime.inference_call(g, "fp32")``, what every entry point
        runs now: the BatchNorm-folded copy, compiled with XLA;
      * ``bf16``: ``inference_call(g, "bf16")``, unless ``--no-bf16``. Where the CPU
        has no bfloat16 instructions TensorFlow converts in software; the output
        says so.
      * with ``--ablate`` also ``fold only`` (the folded copy without XLA) and
        ``xla only`` (today's model under XLA), to show what each part gives.
    GFLOP/s counts the convolutions only, analytically (``dgf.runtime.conv_flops``:
    ``2 * H * W * kh * kw * C_in * C_out`` per convolution), so the same FLOP count
    divides both paths' times; the fraction is of the peak in (a).
(c) the ratios today/fp32 (>1: the new path is faster) and fp32/bf16 per image.
(d) **convs alone**: every convolution of the folded generator timed on its own
    (compiled, its own shape), summed: the floor the generator would reach if the
    concatenations, activations and memory traffic between layers were free. Its
    share of the fp32 path's time says how much any fusion could still gain.

The paths are measured interleaved (today, fp32, bf16, today, ...) ``--repeats``
times after a warm-up call each, and medians are reported, so a machine shared with
other work slows all of them alike. Weights are random (speed does not depend on
them); BatchNorm statistics are randomised so the folded kernels are not trivial.

    .venv/bin/python benchmarks/bench_inference.py
    .venv/bin/python benchmarks/bench_inference.py --channel-rates 16 --repeats 7 --ablate
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _randomise_batchnorm(model, seed: int) -> None:
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c),
                               rng.normal(0, 0.1, c), rng.uniform(0.5, 2.0, c)])


def _time(fn, x) -> float:
    import numpy as np

    start = time.perf_counter()
    np.asarray(fn(x))  # the result must reach the host, as it does for a user
    return time.perf_counter() - start


def _peak_conv(args):
    """A compiled large 3x3 convolution, its input, and its FLOPs per call."""
    import numpy as np
    import tensorflow as tf

    b, s, c = args.peak_batch, args.peak_size, 256
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((b, s, s, c)), tf.float32)
    w = tf.constant(rng.standard_normal((3, 3, c, c)) * 0.02, tf.float32)
    conv = tf.function(lambda t: tf.nn.conv2d(t, w, 1, "SAME"))
    conv(x)
    return conv, x, 2 * b * s * s * 9 * c * c


def _conv_floor(generator, batch: int, size: int, repeats: int) -> float:
    """Seconds per image that the generator's convolutions need on their own.

    Every Conv2D of ``generator`` (run it on the folded copy: no BatchNorm) is timed
    alone as one compiled (XLA) convolution with its own kernel size, channels,
    dilation and padding on a ``batch`` x ``size``² input; layers of the same shape are
    timed once. The sum is the time with no concatenation, activation or memory
    traffic between the layers: how fast the network could run if all of that were
    free.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from dgf.runtime import _nodes

    rng = np.random.default_rng(0)
    timed: dict[tuple, float] = {}
    total = 0.0
    for node in _nodes(generator):
        conv = node.operation
        if not isinstance(conv, keras.layers.Conv2D):
            continue
        c_in = node.input_tensors[0].shape[-1]
        key = (conv.kernel_size, conv.strides, conv.dilation_rate, conv.padding, c_in,
               conv.filters)
        if key not in timed:
            x = tf.constant(rng.standard_normal((batch, size, size, c_in)), tf.float32)
            w = tf.constant(rng.standard_normal((*conv.kernel_size, c_in, conv.filters))
                            * 0.05, tf.float32)
            fn = tf.function(lambda t, w=w, conv=conv: tf.nn.conv2d(
                t, w, conv.strides, conv.padding.upper(), dilations=conv.dilation_rate),
                jit_compile=True)
            fn(x)
            timed[key] = statistics.median(_time(fn, x) for _ in range(repeats)) / batch
        total += timed[key]
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channel-rates", type=int, nargs="+", default=[8, 16, 64])
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--batch", type=int, default=8, help="images per call")
    p.add_argument("--batch-cr64", type=int, default=2,
                   help="images per call at channel rates >= 64 (seconds per call)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per path")
    p.add_argument("--peak-size", type=int, default=256)
    p.add_argument("--peak-batch", type=int, default=2)
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 path")
    p.add_argument("--ablate", action="store_true",
                   help="also time the folded copy without XLA, and today's model with XLA")
    args = p.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO))
    import keras
    import numpy as np
    import tensorflow as tf

    from dgf.models import build_generator
    from dgf.runtime import (bf16_native, compiled_generator, conv_flops, inference_call,
                             inference_model)

    print(f"{os.cpu_count()} CPU cores; TensorFlow {tf.__version__}, Keras "
          f"{keras.__version__}; intra-op threads "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'}, "
          f"inter-op {tf.config.threading.get_inter_op_parallelism_threads() or 'default'}")
    if not args.no_bf16:
        print("bf16: " + ("native bfloat16 instructions" if bf16_native() else
                          "no bfloat16 instructions: TensorFlow converts in software"))
    peak_conv, peak_x, peak_flops = _peak_conv(args)
    peak_times: list[float] = []

    rows = []
    for cr in args.channel_rates:
        keras.utils.set_random_seed(cr)
        generator = build_generator(channel_rate=cr)
        _randomise_batchnorm(generator, cr)
        batch = args.batch if cr < 64 else args.batch_cr64
        x = np.random.default_rng(cr).uniform(-1, 1, (batch, args.size, args.size, 3))
        x = x.astype(np.float32)
        paths = {"today": compiled_generator(generator), "fp32": inference_call(generator)}
        if not args.no_bf16:
            paths["bf16"] = inference_call(generator, "bf16")
        if args.ablate:
            # Which part gives what: folding without XLA, XLA without folding.
            paths["fold only"] = compiled_generator(inference_model(generator))
            paths["xla only"] = compiled_generator(generator, jit_compile=True)
        for fn in paths.values():  # warm-up: tracing and first-call setup
            fn(x)
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.repeats):
            # The peak is timed in every round too, so it sees the same machine load.
            peak_times.append(_time(peak_conv, peak_x))
            for name, fn in paths.items():
                times[name].append(_time(fn, x) / batch)
        flops = conv_flops(generator, args.size, args.size)
        med = {name: statistics.median(t) for name, t in times.items()}
        med["convs alone"] = _conv_floor(inference_model(generator), batch, args.size,
                                         args.repeats)
        rows.append((cr, batch, flops, med))

    peak = peak_flops / statistics.median(peak_times) / 1e9
    print(f"(a) peak: 3x3 conv 256->256 at {args.peak_batch}x{args.peak_size}^2, "
          f"float32, compiled: {peak:.1f} GFLOP/s (median of {len(peak_times)}, "
          f"timed between the generator calls)")
    print(f"(b) generator at {args.size}^2, random weights, median seconds per image "
          f"of {args.repeats} interleaved calls; GFLOP counts convolutions only")
    print(f"{'cr':>3} {'batch':>5} {'GFLOP/img':>9} {'path':>11} {'s/img':>8} "
          f"{'GFLOP/s':>8} {'of peak':>8}")
    for cr, batch, flops, med in rows:
        for name, sec in med.items():
            gflops = flops / sec / 1e9
            print(f"{cr:>3} {batch:>5} {flops / 1e9:>9.2f} {name:>11} {sec:>8.3f} "
                  f"{gflops:>8.1f} {gflops / peak:>8.0%}")
    print("(c) ratios per image (>1: the second path is faster)")
    for cr, _, _, med in rows:
        line = (f"cr {cr:>3}: today/fp32 {med['today'] / med['fp32']:.2f}x, the "
                f"convolutions alone are {med['convs alone'] / med['fp32']:.0%} of fp32's time")
        if "bf16" in med:
            line += f", fp32/bf16 {med['fp32'] / med['bf16']:.2f}x"
            if not bf16_native():
                line += " (bf16 in software)"
        for name in ("fold only", "xla only"):
            if name in med:
                line += f", today/{name} {med['today'] / med[name]:.2f}x"
        print(line)


if __name__ == "__main__":
    main()
