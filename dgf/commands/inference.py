"""The inference commands: ``dgf-deblur``, ``dgf-export`` and ``dgf-info``. Their
choices and defaults come from :mod:`dgf.options`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from dgf import options
from dgf.commands.common import add_inference_flags, inference_spec, new_parser, run
from dgf.errors import DgfError, install_hint


def deblur_parser() -> argparse.ArgumentParser:
    p = new_parser(
        "dgf-deblur",
        "Deblur photos (JPEG, PNG, WebP, AVIF; HEIC with the 'heif' extra: "
        f"{install_hint('heif')}) with a trained generator. Outputs keep the input's "
        "name, size, format, EXIF and ICC profile; folders are searched recursively "
        "and their tree is mirrored under OUT. Output is upright RGB (EXIF orientation "
        "applied); an alpha channel is kept where the format has one. Exit status 1 if "
        "any file failed.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                   help="image files and/or folders")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("--model", type=Path, default=None,
                   help="generator .keras file written by dgf-train (default: the "
                   "bundled model (channel rate 32, space-to-depth 4) trained on pairs-small; see "
                   "dgf/weights/MODEL_CARD.md)")
    p.add_argument("--tile", type=int, default=None,
                   help="most pixels per tile for large images, as a square's edge "
                   "(each image gets the tile shape that covers it with the fewest "
                   "pixels); 0 = whole image at once "
                   f"(default: {options.DEFAULT_TILE}, or 4 overlaps if that is more)")
    p.add_argument("--overlap", type=int, default=None,
                   help="overlap of neighbouring tiles in pixels (< tile/2) (default: "
                   "from the model's receptive field, so tiles leave no seams: 1.5x its "
                   f"radius, a multiple of 8, at least {options.DEFAULT_OVERLAP}: "
                   f"{options.DEFAULT_OVERLAP} for the paper's layout (35 px field), 216 "
                   "for space-to-depth 4 such as the bundled model (140 px))")
    p.add_argument("--batch", type=int, default=options.DEFAULT_BATCH,
                   help="tiles per generator call")
    p.add_argument("--quality", type=int, default=options.DEFAULT_QUALITY,
                   help="quality of lossy outputs: JPEG, WebP, AVIF, HEIC (1-100)")
    p.add_argument("--compare", action="store_true",
                   help="also write blurred | deblurred side by side as "
                        "OUT/compare/REL/NAME_compare.EXT")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_inference_flags(p, precision=options.DEFAULT_DEBLUR_PRECISION, shape="tile")
    p.add_argument("--scale", default=options.DEFAULT_SCALE, metavar="F|auto",
                   help="run the generator on the photo shrunk by F in (0, 1], where "
                   "a long blur is within its reach, and add the enlarged correction "
                   "to the full-size photo (the output keeps the input's size and "
                   "detail). auto: F = the model's training blur / the photo's measured "
                   "blur streak, at most 1 (printed per photo; a photo too flat to measure "
                   "runs at 1; a model recording no training blur uses its training "
                   "image side / the photo's shorter side)")
    p.add_argument("--max-megapixels", type=float, default=options.DEFAULT_MAX_MEGAPIXELS,
                   metavar="MP",
                   help="refuse a photo larger than this, from its header, before "
                   "decoding it; a photo that needs more memory than is available is "
                   "refused too, naming both numbers")
    p.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true",
                   help="hide the progress bar (--quiet is the same flag)")
    return p


def deblur_main(argv: Sequence[str] | None = None) -> int:
    args = deblur_parser().parse_args(argv)

    def work() -> int:
        from tqdm import tqdm

        from dgf import prefetch

        def tell(path: Path, reason: str) -> None:
            tqdm.write(f"failed: {path}: {reason}", file=sys.stderr)

        model = args.model
        if model is None:
            from dgf.weights import MODEL_CARD, bundled_model

            model = bundled_model()
            print(f"using the bundled model {model} (channel rate 32, space-to-depth 4, trained on "
                  f"pairs-small on a CPU; see {MODEL_CARD}). Pass --model for your own.")
        else:
            print(f"using the model {model}")
        # The first photo is decoded (and shrunk) while TensorFlow loads (dgf.prefetch).
        if args.inputs and 0 < args.max_megapixels < float("inf"):
            prefetch.start(args.inputs[0], max_pixels=int(args.max_megapixels * 1e6),
                           scale=args.scale, model=model)
        from dgf import infer
        spec = inference_spec(args, tile=args.tile, overlap=args.overlap, batch=args.batch,
                              scale=args.scale)
        writing = infer.WriteOptions(compare=args.compare, overwrite=args.overwrite,
                                     quality=args.quality)
        report = infer.deblur_paths(model, args.inputs, args.out, spec, writing=writing,
                                    progress=not args.no_progress, on_failure=tell,
                                    max_megapixels=args.max_megapixels)
        print(f"deblurred {len(report.processed)} image(s) into {args.out}"
              + (f"; {len(report.failed)} failed" if report.failed else ""))
        return 1 if report.failed else 0

    return run(work, program=argv is None, verbose=args.verbose)


# --- dgf-export -------------------------------------------------------------
def export_parser() -> argparse.ArgumentParser:
    p = new_parser(
        "dgf-export",
        "Export a trained generator for serving. Every format takes uint8 images "
        "and returns uint8 images. savedmodel: signature 'serving_default', input "
        "'images' (B, H, W, 3) uint8 of any size, output 'deblurred'. tflite: input "
        "(1, H, W, 3) uint8; H and W are dynamic (resize_tensor_input) unless "
        f"--input-size is given. onnx ({install_hint('onnx')}): input 'images' "
        "(B, H, W, 3) uint8, all three dynamic, output 'deblurred', ONNX opset 17. "
        "--quantize int8 (tflite, onnx) keeps that interface and checks the result "
        "against fp32 on held-out crops before writing.",
    )
    p.add_argument("--model", type=Path, required=True,
                   help="generator .keras file written by dgf-train")
    p.add_argument("--format", choices=options.EXPORT_FORMATS, required=True,
                   help="export format")
    p.add_argument("-o", "--out", type=Path, required=True,
                   help="SavedModel folder, or .tflite or .onnx file to create")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                   help="fix the TFLite input to H x W (default: dynamic)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="post-training int8, calibrated on real crops: tflite full-integer, "
                   "onnx QDQ (onnxruntime quantises it); refused when int8 loses more than "
                   "0.15 dB interior PSNR against fp32 on held-out crops")
    p.add_argument("--calibration", type=Path, default=None, metavar="H5|DIR",
                   help="images to calibrate --quantize on: an HDF5 pairs file (its test "
                   "split) or a folder of at least 16 blurred JPEG/PNG photos (default: the "
                   "training HDF5 file the model's record names, where it exists)")
    return p


def export_main(argv: Sequence[str] | None = None) -> int:
    args = export_parser().parse_args(argv)

    def work() -> int:
        from dgf.export import export_model

        path = export_model(args.model, args.out, args.format,
                            input_size=args.input_size, overwrite=args.overwrite,
                            quantize=args.quantize, calibration=args.calibration)
        kind = f"{args.quantize} " if args.quantize else ""
        print(f"wrote {kind}{args.format} export to {path}")
        return 0

    return run(work, program=argv is None, verbose=args.verbose)


# --- dgf-info ---------------------------------------------------------------
def info_parser() -> argparse.ArgumentParser:
    p = new_parser(
        "dgf-info",
        "Describe a saved generator: its layout, trainable and non-trainable "
        "parameters, the work of its convolutions on one H x W image (MACs; FLOPs = "
        "2 x MACs), its receptive field and what the file records of its training.",
    )
    p.add_argument("model", type=Path, metavar="MODEL",
                   help="generator .keras file written by dgf-train")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   default=list(options.DEFAULT_INFO_SIZE),
                   help="image size at which the work is counted")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument("--measure-blur", nargs="?", const="", default=None, type=str,
                   metavar="H5",
                   help="measure the blur of the training images (256 blurred train "
                   "images of H5, or of the training file the model's record names) "
                   "with this version's estimator and record it in MODEL (rewritten in "
                   "place): what --scale auto maps each photo's streaks onto")
    return p


def _record_training_blur(model: Path, h5: str | None) -> None:
    """dgf-info --measure-blur: the training blur of ``h5`` (else the file the model's
    record names) measured as dgf-train measures it, recorded in ``model``."""
    from dgf.actions import ModelFiles
    from dgf.blur import measure_training_blur
    from dgf.fileio import require_file
    from dgf.metadata import read_metadata, set_training_blur, training_file

    record = read_metadata(model)
    if record is None:
        raise DgfError(f"{model} has no dgf record (it was not written by dgf-train); "
                       f"it cannot hold a training blur.")
    if h5 is None:
        named = (record.get("data") or {}).get("h5")
        found = training_file(record)
        if found is None:
            raise DgfError(
                f"--measure-blur: {model} names "
                + (f"its training file {named}, which is not here" if named else
                   "no training file")
                + "; pass the HDF5 file it was trained on: --measure-blur FILE.h5")
        h5 = str(found)
    require_file(Path(h5), "training file")
    blur = measure_training_blur(h5, limit=ModelFiles.TRAINING_BLUR_IMAGES)
    set_training_blur(model, blur)
    print(f"recorded in {model}: training blur {blur['streak_px']:.1f} px (median of "
          f"{blur['count']} blurred train images of {h5}, estimator {blur['estimator']})")


def info_main(argv: Sequence[str] | None = None) -> int:
    args = info_parser().parse_args(argv)

    def work() -> int:
        import json

        from dgf.fileio import require_file
        from dgf.info import format_info, model_info

        height, width = args.size
        if min(height, width) < 1:
            raise DgfError(f"--size must be two positive numbers of pixels; got "
                           f"{height} {width}")
        require_file(args.model, "model file")  # dgf-eval --model's messages
        if args.measure_blur is not None:
            _record_training_blur(args.model, args.measure_blur or None)
        info = model_info(args.model, height, width)
        print(json.dumps(info, indent=2) if args.json else format_info(info))
        return 0

    return run(work, program=argv is None, verbose=args.verbose)
