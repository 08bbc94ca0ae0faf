"""Choices and defaults of the inference commands, in a module without TensorFlow.

``dgf-deblur``, ``dgf-eval`` and ``dgf-export`` build their argument parsers from
these values, and the modules that do the work (:mod:`dgf.runtime`,
:mod:`dgf.infer`, :mod:`dgf.scoring`, :mod:`dgf.evaluate`, :mod:`dgf.export`) take their defaults and
validate against the same names. Those modules import TensorFlow when they load
(about two seconds), which a parser must not do so that every command's ``--help``
stays instant; hence this module, which imports nothing, is the one home of these
values. The data-preparation commands' choices live in their own modules, which are
free of TensorFlow already (:mod:`dgf.sources`, :mod:`dgf.hdf5`, :mod:`dgf.synth`),
and the trainer's in :mod:`dgf.config`.
"""
from __future__ import annotations

from dataclasses import dataclass

from dgf.errors import DgfError

#: Precisions of ``dgf-deblur --precision`` and ``dgf-eval --precision``: fp32, bf16
#: (the body in bfloat16, :mod:`dgf.runtime`) and int8 (post-training static
#: quantisation of the folded generator, :mod:`dgf.quantize`, on the engines whose row
#: below lists it). The trainer takes fp32, bf16 and fp16 (mixed float16 with loss
#: scaling, which only an optimiser has), :class:`dgf.config.TrainConfig`.
PRECISIONS = ("fp32", "bf16", "int8")
#: The precisions TensorFlow computes (the folded copy's dtype policy, dgf.runtime).
FLOAT_PRECISIONS = ("fp32", "bf16")
DEFAULT_PRECISION = "fp32"
#: What ``--precision`` accepts: a precision, or "auto" (dgf.runtime.resolve_precision):
#: bf16 on a CPU with native bfloat16 (AVX512_BF16 or AMX) and no GPU, fp32 elsewhere.
#: auto never picks int8, which changes the output: it runs only when asked.
PRECISION_CHOICES = ("auto",) + PRECISIONS
#: dgf-deblur's default; dgf-eval keeps fp32, so scores do not depend on the host.
DEFAULT_DEBLUR_PRECISION = "auto"
#: XLA for TensorFlow's call (``--jit``): "auto" measures both compiled paths on the
#: first input of each shape and keeps the faster, per host (dgf.calibration); "on"
#: always compiles with XLA, "off" never does.
JIT_CHOICES = ("auto", "on", "off")
DEFAULT_JIT = "auto"


@dataclass(frozen=True)
class EngineRow:
    """One inference engine: what ``--engine NAME`` runs (the module
    ``dgf.engines.NAME_engine`` implements it, :class:`dgf.engines.base.Engine`)."""

    #: The ``--engine`` value.
    name: str
    #: What messages call it.
    words: str
    #: The extra of pyproject.toml that installs it (None: always installed).
    extra: str | None
    #: The precisions it can run on some host (``available`` says which run here).
    precisions: tuple[str, ...]
    #: The paths ``--engine auto`` measures for it, the names of calibration entries:
    #: TensorFlow's two (without and with XLA), one for every other engine.
    paths: tuple[str, ...]


#: The engine table: ``--engine``'s choices, auto's candidates, the calibration
#: cache's path names, the missing-engine errors and docs/inference.md's table all
#: come from it. Adding an engine is one module and one row.
ENGINE_TABLE = (
    EngineRow("tensorflow", "TensorFlow", None, ("fp32", "bf16"), ("plain", "xla")),
    EngineRow("onnxruntime", "ONNX Runtime (CPU provider)", "onnx", ("fp32", "int8"),
              ("onnxruntime",)),
    EngineRow("openvino", "OpenVINO (CPU plugin)", "openvino", ("fp32", "bf16", "int8"),
              ("openvino",)),
)
ENGINES = tuple(row.name for row in ENGINE_TABLE)
#: "auto" measures every installed engine that runs the precision on the first input of
#: each shape, with TensorFlow's XLA choice, and keeps the fastest, per host.
ENGINE_CHOICES = ("auto",) + ENGINES
DEFAULT_ENGINE = "auto"
#: The extra of pyproject.toml that installs each optional engine
#: (dgf.errors.install_hint says how).
ENGINE_EXTRAS = {row.name: row.extra for row in ENGINE_TABLE if row.extra}
#: Every path name of the table (dgf.calibration's entries), TensorFlow's first.
PATHS = tuple(path for row in ENGINE_TABLE for path in row.paths)


def engine_row(name: str) -> EngineRow:
    """The row of engine ``name``; DgfError naming the choices for another name."""
    for row in ENGINE_TABLE:
        if row.name == name:
            return row
    raise DgfError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_CHOICES)}")


def path_engine(path: str) -> EngineRow:
    """The row of the engine a path (a name of ``PATHS``) belongs to."""
    for row in ENGINE_TABLE:
        if path in row.paths:
            return row
    raise DgfError(f"unknown inference path {path!r}; choose one of {', '.join(PATHS)}")


# int8 (dgf.quantize).
#: Calibration crops and their side, and the seed that draws them.
DEFAULT_CALIBRATION_COUNT = 300
DEFAULT_CALIBRATION_SIDE = 256
DEFAULT_CALIBRATION_SEED = 0

# dgf-deblur (dgf.tiling.deblur_image, dgf.infer.deblur_paths).
#: Tile edge in pixels; 0 runs the whole image at once.
DEFAULT_TILE = 512
#: Least overlap of neighbouring tiles in pixels. dgf.tiling.seamless_tiling raises
#: it to 1.5x the model's receptive-field radius (a multiple of 8) for a seamless
#: result: 64 for the paper's layout (35 px field), 216 at space-to-depth 4 (140 px).
DEFAULT_OVERLAP = 64
#: Tiles per generator call.
DEFAULT_BATCH = 1
#: JPEG quality of the outputs.
DEFAULT_QUALITY = 95
#: Factor photos are shrunk by before the generator runs ("auto": the model's training
#: blur over the photo's measured streak length, at most 1; dgf.blur and
#: dgf.tiling.auto_scale). On pairs-small test pairs enlarged 4x, auto gained 2.11 dB
#: over the blurred input against 1.80 for the best fixed scale: bench_scale.py,
#: docs/results.md.
DEFAULT_SCALE = "auto"
#: Largest photo, in megapixels, that dgf-deblur decodes (checked on the file's header,
#: before decoding; a photo that does not fit in the memory available is refused too).
#: 250: phones shoot up to 200 MP; at the default scale a 200 MP photo peaks under
#: 4 GB (benchmarks/bench_deblur.py --photos).
DEFAULT_MAX_MEGAPIXELS = 250

# dgf-eval (dgf.evaluate).
#: Split of the HDF5 file that is scored.
DEFAULT_EVAL_SPLIT = "test"
#: Rows (pairs) of a sample strip.
DEFAULT_STRIPS = 4
#: Images per generator call when scoring.
DEFAULT_EVAL_BATCH = 8
#: Pixels removed at each side of both images before PSNR/SSIM (BasicSR's
#: ``crop_border``); 0 scores the whole image.
DEFAULT_CROP_BORDER = 0
#: Metric definitions of ``dgf-eval --protocol`` and the trainer's
#: ``metric_protocol``: "skimage" is scikit-image's defaults (7x7 uniform SSIM
#: window), "basicsr" BasicSR's calculate_psnr/calculate_ssim (11x11 Gaussian
#: window, sigma 1.5, valid region); see dgf.metrics.
METRIC_PROTOCOLS = ("skimage", "basicsr")
DEFAULT_PROTOCOL = "skimage"
#: Score the luma Y of ITU-R BT.601 (MATLAB's rgb2ycbcr) instead of RGB.
DEFAULT_Y_CHANNEL = False
#: Image size (H, W) at which dgf-info counts a generator's work.
DEFAULT_INFO_SIZE = (256, 256)

# dgf-export (dgf.export).
#: Export formats.
EXPORT_FORMATS = ("savedmodel", "tflite", "onnx")
