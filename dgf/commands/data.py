"""The data commands: ``build-hdf5`` and ``dgf-make-pairs``. Their choices and
defaults come from the modules that do the work (:mod:`dgf.sources`, :mod:`dgf.hdf5`,
:mod:`dgf.synth`: constants, the fields of the options class the command fills,
:class:`dgf.hdf5.BuildOptions` or :class:`dgf.synth.MakePairsOptions`, and the keyword
defaults of the function it calls), which import no TensorFlow. Each command builds
its options object once from its flags."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from dgf.commands.common import defaults_of, new_parser, run
from dgf.errors import DgfError


def build_hdf5_parser() -> argparse.ArgumentParser:
    from dgf import hdf5, sources

    defaults = {**defaults_of(hdf5.build_hdf5), **defaults_of(hdf5.BuildOptions)}
    p = new_parser(
        "build-hdf5",
        "Pack pairs of sharp and blurred images into one HDF5 file with train, test "
        "(and val, if present) splits. JPEG_DIR holds train/ and test/ folders of "
        "side-by-side images (left sharp, right blurred) or paired folders "
        "(GOPRO's SCENE/sharp + SCENE/blur or SCENE/blur_gamma, or A = blurred + "
        "B = sharp). Instead of JPEG_DIR, --pairs-list reads one list of pairs per "
        "split (RealBlur's *_list.txt).",
    )
    p.add_argument(
        "jpeg_dir", type=Path, metavar="JPEG_DIR", nargs="?", default=None,
        help="folder holding train/ and test/ (omit with --pairs-list)",
    )
    p.add_argument(
        "--pairs-list",
        action="append",
        metavar="SPLIT=FILE",
        default=argparse.SUPPRESS,
        help="read SPLIT's pairs from FILE instead of JPEG_DIR: one pair per line, two "
        "paths relative to FILE's folder, in --order; repeat per split, train and test "
        "needed, e.g. --pairs-list train=RealBlur_J_train_list.txt "
        "--pairs-list test=RealBlur_J_test_list.txt",
    )
    p.add_argument(
        "--blur-folder",
        choices=sources.BLUR_FOLDERS,
        default=defaults["blur_folder"],
        help="GOPRO layout: the folder beside SCENE/sharp read as blurred (blur is what "
        "most papers report); a scene without it is skipped",
    )
    p.add_argument(
        "-o", "--output", type=Path, default=Path(defaults["output"]), help="HDF5 file to write"
    )
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--size", type=int, default=defaults["size"],
                       help="resize each image to N x N (LANCZOS)")
    shape.add_argument(
        "--native",
        action="store_true",
        help="keep native resolution (every pair of a split must share one size)",
    )
    p.add_argument(
        "--layout",
        choices=("auto", *sources.LAYOUTS),
        default=defaults["layout"],
        help="input layout; auto picks paired when train/ has sharp+blur (or blur_gamma) "
        "or A+B folders",
    )
    p.add_argument(
        "--order",
        choices=sources.ORDERS,
        default=defaults["order"],
        help="which half of a side-by-side image is sharp (left-right), or which path "
        "of a --pairs-list line (first-second; the default reads sharp then blurred, "
        "RealBlur's gt then blur)",
    )
    p.add_argument(
        "--compression",
        choices=hdf5.COMPRESSIONS,
        default=defaults["compression"],
        help="HDF5 compression of the image datasets (none reads fastest)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=argparse.SUPPRESS,
        help="decoding processes; all cores when omitted, 1 decodes in this process",
    )
    p.add_argument(
        "--on-error",
        choices=hdf5.ON_ERROR,
        default=defaults["on_error"],
        help="skip unreadable images (listed in the summary) or stop at the first",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def build_hdf5_main(argv: Sequence[str] | None = None) -> int:
    """``build-hdf5 JPEG_DIR``: pack sharp/blurred pairs into one HDF5 file."""
    args = build_hdf5_parser().parse_args(argv)

    def work() -> int:
        from dgf import hdf5

        options = hdf5.BuildOptions(
            size=args.size,
            native=args.native,
            layout=args.layout,
            order=args.order,
            blur_folder=args.blur_folder,
            pairs_lists=_pairs_lists(getattr(args, "pairs_list", None)),
            compression=args.compression,
            workers=getattr(args, "workers", None),
            on_error=args.on_error,
        )
        report = hdf5.build_hdf5(args.jpeg_dir, args.output, options,
                                 overwrite=args.overwrite, progress=not args.no_progress)
        print(report.summary())
        return 0

    return run(work, program=argv is None, verbose=args.verbose)


def _pairs_lists(values: Sequence[str] | None) -> dict[str, Path] | None:
    """``--pairs-list SPLIT=FILE`` values as ``{split: FILE}``; DgfError for a value
    without ``SPLIT=`` or a split given twice."""
    if not values:
        return None
    lists: dict[str, Path] = {}
    for value in values:
        split, sep, file = value.partition("=")
        if not sep or not split or not file:
            raise DgfError(
                f"--pairs-list {value}: expected SPLIT=FILE, one per split, e.g. "
                f"--pairs-list train=RealBlur_J_train_list.txt "
                f"--pairs-list test=RealBlur_J_test_list.txt."
            )
        if split in lists:
            raise DgfError(
                f"--pairs-list: split '{split}' given twice ({lists[split]} and {file})."
            )
        lists[split] = Path(file)
    return lists


# --- dgf-make-pairs ---------------------------------------------------------
def make_pairs_parser() -> argparse.ArgumentParser:
    from dgf import synth

    defaults = defaults_of(synth.MakePairsOptions)
    parser = new_parser(
        "dgf-make-pairs",
        "Blur sharp photos with random camera-shake kernels and write side-by-side "
        "sharp|blurred pairs (the input of build-hdf5) to OUT_DIR/train and "
        "OUT_DIR/test, each with its kernel as NAME.kernel.npy. Whole photos are "
        "split between train and test. Photos smaller than --size are upscaled; "
        "crop borders are blurred with the photo around them (mirrored past its edge).",
    )
    parser.usage = "%(prog)s [options] (SHARP_DIR | --sample-photos) OUT_DIR"
    parser.add_argument("dirs", nargs="+", type=Path, metavar="[SHARP_DIR] OUT_DIR",
                        help="folder of sharp photos (searched recursively for "
                        ".jpg/.jpeg/.png), then the output folder")
    parser.add_argument("--sample-photos", action="store_true",
                        help="use the photos bundled with scikit-image instead of SHARP_DIR")
    parser.add_argument("--per-image", type=int, default=defaults["per_image"],
                        help="random crops, each with its own kernel, per photo")
    parser.add_argument("--size", type=int, default=defaults["size"],
                        help="side of the square crops")
    parser.add_argument("--test-fraction", type=float, default=defaults["test_fraction"],
                        help="share of the source photos that go to test (0: no test split)")
    parser.add_argument("--seed", type=int, default=defaults["seed"],
                        help="random seed; the same seed gives byte-identical files")
    parser.add_argument("--kernel-size", type=int, default=defaults["kernel_size"],
                        help="odd side of the kernel canvas in pixels")
    parser.add_argument("--strength", type=float, default=defaults["strength"],
                        help="camera shake in (0, 1]: path length up to "
                        "1.5*strength*(kernel-size - 1) px and how jerky it is")
    parser.add_argument("--noise", type=float, default=defaults["noise"],
                        help="std of Gaussian noise added to the blurred half, in 8-bit levels")
    parser.add_argument("--format", choices=synth.OUTPUT_FORMATS, default=defaults["fmt"],
                        help="pair image format; png is lossless")
    parser.add_argument("--quality", type=int, default=defaults["quality"],
                        help="JPEG quality (1-100)")
    camera = parser.add_argument_group(
        "camera realism", "what a camera adds to the blurred exposure (all off by default)")
    camera.add_argument("--linear-light", action="store_true",
                        help="blur in linear light: sRGB decoded, convolved, encoded back")
    camera.add_argument("--highlight-gain", type=float, metavar="G",
                        default=defaults["highlight_gain"],
                        help="with --linear-light: near-white pixels of the sharp crop become "
                        "up to G times brighter than white (drawn per pair) before blurring, "
                        "and the result is clipped, so lights smear into saturated streaks "
                        "(1: off)")
    camera.add_argument("--jpeg-quality-range", type=int, nargs=2, metavar=("LO", "HI"),
                        help="re-compress the blurred half once as JPEG at a quality drawn "
                        "per pair from LO..HI, as a camera writes it (e.g. 70 95)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace pairs and kernels already in OUT_DIR")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def make_pairs_main(argv: Sequence[str] | None = None) -> int:
    """``dgf-make-pairs [SHARP_DIR] OUT_DIR``: synthetic blurred/sharp pairs."""
    args = make_pairs_parser().parse_args(argv)

    def work() -> int:
        from dgf import synth

        if args.sample_photos:
            if len(args.dirs) != 1:
                raise DgfError(
                    "with --sample-photos give only OUT_DIR (no SHARP_DIR); got "
                    f"{' '.join(str(d) for d in args.dirs)}."
                )
            sharp_dir, out_dir = None, args.dirs[0]
        else:
            if len(args.dirs) != 2:
                raise DgfError(
                    "give SHARP_DIR and OUT_DIR, or --sample-photos and OUT_DIR; got "
                    f"{len(args.dirs)} folder(s): {' '.join(str(d) for d in args.dirs)}."
                )
            sharp_dir, out_dir = args.dirs
        options = synth.MakePairsOptions(
            per_image=args.per_image, size=args.size, test_fraction=args.test_fraction,
            seed=args.seed, kernel_size=args.kernel_size, strength=args.strength,
            noise=args.noise, quality=args.quality, fmt=args.format,
            linear_light=args.linear_light, highlight_gain=args.highlight_gain,
            jpeg_quality_range=args.jpeg_quality_range, sample_photos=args.sample_photos,
        )
        report = synth.make_pairs(sharp_dir, out_dir, options, overwrite=args.overwrite,
                                  progress=not args.no_progress)
        print(report.summary())
        return 0

    return run(work, program=argv is None, verbose=args.verbose)
