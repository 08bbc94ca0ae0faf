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

#: Precisions of ``dgf-deblur --precision`` and ``dgf-eval --precision`` (see
#: :mod:`dgf.runtime`); the trainer takes these and fp16 (mixed float16 with loss
#: scaling, which only an optimiser has), :class:`dgf.config.TrainConfig`.
PRECISIONS = ("fp32", "bf16")
DEFAULT_PRECISION = "fp32"
#: What ``--precision`` accepts: a precision, or "auto" (dgf.runtime.resolve_precision):
#: bf16 on a CPU with native bfloat16 (AVX512_BF16 or AMX) and no GPU, fp32 elsewhere.
#: There bf16 without XLA was 2.0x faster than fp32 and changed the bundled model's mean
#: PSNR on the 64 real test pairs of pairs-small by -0.001 dB (docs/inference.md).
PRECISION_CHOICES = ("auto",) + PRECISIONS
#: dgf-deblur's default; dgf-eval keeps fp32, so scores do not depend on the host.
DEFAULT_DEBLUR_PRECISION = "auto"
#: XLA for the inference call (``--jit``): "auto" measures both compiled paths on the
#: first input of each shape and keeps the faster, per host (dgf.calibration); "on"
#: always compiles with XLA, "off" never does.
JIT_CHOICES = ("auto", "on", "off")
DEFAULT_JIT = "auto"
#: Inference engines of ``--engine`` (dgf.engines): TensorFlow, and the generator's
#: ONNX conversion under ONNX Runtime or OpenVINO.
ENGINES = ("tensorflow", "onnxruntime", "openvino")
#: "auto" measures every installed engine on the first input of each shape, with
#: TensorFlow's XLA choice, and keeps the fastest, per host (dgf.calibration).
ENGINE_CHOICES = ("auto",) + ENGINES
DEFAULT_ENGINE = "auto"
#: The extra of pyproject.toml that installs each optional engine
#: (dgf.errors.install_hint says how).
ENGINE_EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino"}

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
#: image side over the photo's shorter side, at most 1; see dgf.tiling.auto_scale).
#: auto, because on 1024 px photos with 4x the training blur the bundled model loses
#: 0.16 dB at scale 1 and gains 1.80 dB at auto (1/4): benchmarks/bench_scale.py.
DEFAULT_SCALE = "auto"

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
