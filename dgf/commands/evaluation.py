"""``dgf-eval``: its choices and defaults come from :mod:`dgf.options`."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from dgf import options
from dgf.commands.common import add_inference_flags, inference_spec, new_parser, run
from dgf.errors import DgfError


def eval_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        "dgf-eval",
        "Score generators with PSNR/SSIM and draw sample strips "
        "(sharp | blurred | deblurred). --run scores every per-epoch snapshot of a "
        "training run into RUN/eval/; --model scores one saved generator; --photos "
        "reports what a generator does to your own photos, without sharp originals.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--run", type=Path, help="training run folder (RUN/snapshots/*.keras)")
    mode.add_argument("--model", type=Path, help="one saved generator (.keras); with "
                      "--photos, the generator that deblurs them (default there: the "
                      "bundled model)")
    parser.add_argument("--photos", type=Path, nargs="+", default=None, metavar="PHOTO",
                        help="photo files or folders (searched recursively) to deblur and "
                        "measure without a sharp original: blur effect, gradient energy "
                        "and streak length before and after, a before | after picture "
                        "each, photos.csv and photos.json in --out (default: "
                        "photos_eval); not with --run or --h5")
    parser.add_argument("--h5", type=Path, default=None,
                        help="HDF5 pairs file; required with --model, default for --run: "
                        "the run's config.json")
    parser.add_argument("--split", default=options.DEFAULT_EVAL_SPLIT,
                        help="split of the HDF5 file to score")
    parser.add_argument("--strips", type=int, default=options.DEFAULT_STRIPS,
                        help="pairs (rows) in each sample strip, evenly spaced over the split")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"images per generator call (default: "
                        f"{options.DEFAULT_EVAL_BATCH}); --photos: tiles per call, as "
                        f"dgf-deblur's --batch ({options.DEFAULT_BATCH} by default)")
    parser.add_argument("--limit", type=int, default=None,
                        help="score only this many pairs, evenly spaced over the split "
                        "(default: all)")
    parser.add_argument("-o", "--out", type=Path, default=None,
                        help="output folder (default: RUN/eval, <model>_eval next to "
                        "the model, or photos_eval for --photos)")
    parser.add_argument("--force", action="store_true",
                        help="--run: re-score epochs already in metrics.csv")
    parser.add_argument("--overwrite", action="store_true",
                        help="--model: replace existing summary.json/per_image.csv/strip.png; "
                        "--photos: photos.csv/photos.json and the pictures")
    add_inference_flags(parser, precision=options.DEFAULT_PRECISION, shape="batch")
    parser.add_argument("--crop-border", type=int, default=options.DEFAULT_CROP_BORDER,
                        metavar="N",
                        help="pixels removed at each side before PSNR/SSIM, as BasicSR's "
                        "crop_border; 8 judges the interior")
    parser.add_argument("--protocol", choices=options.METRIC_PROTOCOLS,
                        default=options.DEFAULT_PROTOCOL,
                        help="metric definitions: skimage (scikit-image's defaults, 7x7 "
                        "uniform SSIM window) or basicsr (BasicSR's calculate_psnr/"
                        "calculate_ssim: 11x11 Gaussian window, sigma 1.5, valid region)")
    parser.add_argument("--y-channel", action="store_true",
                        help="score the luma Y = 16 + (65.481 R + 128.553 G + 24.966 B)"
                        "/255 (BT.601, MATLAB's rgb2ycbcr) instead of RGB")
    parser.add_argument("--record", action="store_true",
                        help="--model: also record the scores in the model file's own "
                        "record (dgf-info shows them), replacing an earlier entry of the "
                        "same data, split, pair count and settings; the file is rewritten "
                        "atomically")
    parser.add_argument("--scale", default=None, metavar="F|auto",
                        help="--photos: the scale each photo is deblurred at, as "
                        "dgf-deblur's --scale (auto when not given: from the photo's "
                        "blur)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def eval_main(argv: Sequence[str] | None = None) -> int:
    args = eval_parser().parse_args(argv)

    def main() -> int:
        from dgf import evaluate
        from dgf.config import RunDir
        from dgf.fileio import require_file
        from dgf.metrics import ScoreSettings
        from dgf.scoring import EvalOptions

        for name in ("strips", "batch_size", "limit"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise DgfError(f"--{name.replace('_', '-')} must be at least 1; got {value}")
        if args.crop_border < 0:
            raise DgfError(f"--crop-border must be >= 0 pixels; got {args.crop_border}")
        if args.photos is not None:
            return _photos_main(args)
        if args.run is None and args.model is None:
            raise DgfError("give --run RUN, --model MODEL --h5 H5, or --photos PHOTO ...")
        if args.scale is not None:
            raise DgfError("--scale applies to --photos; --run and --model score HDF5 "
                           "pairs at their own size")
        settings = ScoreSettings(args.crop_border, args.protocol, args.y_channel)
        named = settings.describe()
        crop = f" ({named})" if named else ""
        spec = inference_spec(args, batch=args.batch_size or options.DEFAULT_EVAL_BATCH)
        scoring = EvalOptions(split=args.split, limit=args.limit, strips=args.strips,
                              settings=settings)
        if args.model is not None:
            if args.force:
                raise DgfError("--force applies to --run; with --model use --overwrite")
            if args.h5 is None:
                raise DgfError("--model needs --h5 PATH (the pairs file to score on)")
            require_file(args.model, "model file")
            if args.record:
                from dgf.fileio import check_output

                check_output(args.model)
            summary = evaluate.evaluate_model(
                args.model, args.h5, args.out, spec=spec, options=scoring,
                overwrite=args.overwrite, progress=not args.no_progress)
            out = Path(summary["out_dir"])
            from dgf.metadata import describe

            print(f"{args.model}: {describe(summary['model_metadata'])}")
            print(f"{args.model} on {args.h5} [{args.split}], {summary['count']} pairs"
                  f"{crop}:")
            print(f"  {'':10} {'PSNR (dB)':>10} {'SSIM':>8}")
            print(f"  {'deblurred':10} {summary['psnr']:>10.2f} {summary['ssim']:>8.4f}")
            print(f"  {'blurred':10} {summary['blurred_psnr']:>10.2f} "
                  f"{summary['blurred_ssim']:>8.4f}")
            print(f"  {summary['seconds_per_image']:.4f} s per image")
            for name in ("summary.json", "per_image.csv", "strip.png"):
                print(f"wrote {out / name}")
            if args.record:
                from dgf.metadata import add_evaluation

                add_evaluation(args.model, summary)
                print(f"recorded the scores in {args.model} (dgf-info shows them)")
            return 0
        if args.overwrite:
            raise DgfError("--overwrite applies to --model; with --run use --force")
        if args.record:
            raise DgfError("--record applies to --model (one model file); with --run each "
                           "snapshot's scores are in RUN/eval/metrics.csv")
        rows = evaluate.evaluate_run(
            args.run, h5_path=args.h5, out_dir=args.out, spec=spec, options=scoring,
            force=args.force, progress=not args.no_progress)
        out = args.out if args.out is not None else RunDir(args.run).eval
        print(f"{'epoch':>5} {'PSNR (dB)':>10} {'SSIM':>8}{crop}")
        for row in rows:
            print(f"{row['epoch']:>5} {row['psnr']:>10.2f} {row['ssim']:>8.4f}")
        print(f"{'input':>5} {rows[-1]['blurred_psnr']:>10.2f} {rows[-1]['blurred_ssim']:>8.4f}"
              f"   (blurred vs sharp)")
        print(f"wrote {out / 'metrics.csv'}, {out / 'metrics.png'}, "
              f"{out / 'progress.png'} and {out / 'strips'}/")
        return 0

    return run(main, program=argv is None, verbose=args.verbose)


def _photos_main(args) -> int:
    """``dgf-eval --photos``: :func:`dgf.photos.report_photos`, and its table."""
    from dgf import options
    from dgf.fileio import require_file
    from dgf.photos import report_photos

    if args.run is not None or args.h5 is not None:
        raise DgfError("--photos measures photos without sharp originals; it takes no "
                       "--run or --h5 (use --model for the generator)")
    for flag, given in (("--force", args.force), ("--record", args.record),
                        ("--limit", args.limit is not None)):
        if given:
            raise DgfError(f"{flag} applies to --run or --model, not to --photos")
    if args.model is None:
        from dgf.weights import bundled_model

        args.model = bundled_model()
    require_file(args.model, "model file")
    out = args.out if args.out is not None else Path("photos_eval")
    spec = inference_spec(args, batch=args.batch_size or options.DEFAULT_BATCH,
                          scale=options.DEFAULT_SCALE if args.scale is None else args.scale)
    summary = report_photos(args.model, args.photos, out, spec, overwrite=args.overwrite,
                            progress=not args.no_progress)
    print(f"{'photo':30} {'scale':>6} {'blur effect':>15} {'gradient energy':>19} "
          f"{'streak px':>13}")
    for row in summary["photos"]:
        cells = []
        for key, width in (("blur_effect", 15), ("gradient_energy", 19), ("streak_px", 13)):
            a, b = row[f"{key}_before"], row[f"{key}_after"]
            text = "-" if a is None or b is None else (
                f"{a:.3f}>{b:.3f}" if key == "blur_effect" else f"{a:.0f}>{b:.0f}")
            cells.append(f"{text:>{width}}")
        print(f"{Path(row['photo']).name[:30]:30} {row['scale']:>6.3g} {' '.join(cells)}")
    print(f"wrote {out / 'photos.csv'}, {out / 'photos.json'} and a picture per photo "
          f"(NAME_compare.jpg)")
    return 1 if summary["failed"] else 0
