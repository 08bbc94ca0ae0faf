"""What a camera does to a blurred exposure, for synthetic pairs.

Three optional steps that :mod:`dgf.synth` applies to the blurred half of a pair:

- **Linear light.** A camera integrates light, and the sRGB levels of a photo are not
  light: they are encoded with the sRGB transfer curve (IEC 61966-2-1). With
  ``linear_light`` the crop is decoded to linear light, convolved with the kernel
  there and encoded back, so a bright streak over a dark background keeps the
  brightness a real exposure gives it instead of the darker average of the codes.
- **Clipped highlights.** A light source that is saturated in the sharp photo was
  brighter than the sensor could record; smeared by shake, it still saturates along
  its streak. With ``highlight_gain`` G > 1, the near-white pixels of the sharp crop
  (any channel from 235 up, ramping in to full weight at 255) are scaled by a gain
  drawn per pair from [1, G] in linear light before blurring, and the blurred result
  is clipped at white. It needs ``linear_light``: a gain on sRGB codes is not a gain
  on light.
- **JPEG.** Blurred photos reach users as camera JPEGs. With ``jpeg_quality_range``
  (LO, HI) the blurred half is re-compressed once at a quality drawn per pair from
  LO..HI (PIL's encoder, 4:2:0 chroma as cameras write) before the pair is saved.

The per-pair draws come from their own random stream, so switching these steps on
leaves the crops and kernels of a seed unchanged.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from dgf.checks import is_int
from dgf.errors import DgfError

HIGHLIGHT_START = 235  # sRGB level from which a sharp pixel counts as a highlight


def srgb_to_linear(codes: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] to linear light in [0, 1] (float64)."""
    codes = np.asarray(codes, dtype=np.float64)
    return np.where(codes <= 0.04045, codes / 12.92, ((codes + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(light: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] to sRGB-encoded values in [0, 1] (float64); values
    outside [0, 1] are clipped first, as a sensor clips."""
    light = np.clip(np.asarray(light, dtype=np.float64), 0.0, 1.0)
    return np.where(light <= 0.0031308, light * 12.92,
                    1.055 * light ** (1.0 / 2.4) - 0.055)


def highlight_mask(codes: np.ndarray) -> np.ndarray:
    """(H, W, 1) weights in [0, 1]: 0 below level 235 in every channel, rising
    linearly to 1 where any channel reaches 255."""
    peak = np.asarray(codes, dtype=np.float64).max(axis=2, keepdims=True)
    return np.clip((peak - HIGHLIGHT_START) / (255.0 - HIGHLIGHT_START), 0.0, 1.0)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode an (H, W, 3) uint8 image as JPEG at ``quality`` and decode it again."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8)


@dataclass(frozen=True)
class Realism:
    """Which camera steps to apply to the blurred half; all off by default."""

    linear_light: bool = False
    highlight_gain: float = 1.0
    jpeg_quality_range: tuple[int, int] | None = None

    def check(self) -> None:
        """DgfError naming the bad value and what is allowed."""
        gain = self.highlight_gain
        if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not (
            math.isfinite(gain) and gain >= 1.0
        ):
            raise DgfError(
                f"highlight gain {gain!r} must be a number >= 1 (1 leaves highlights "
                f"as they are; 4 lets saturated lights be up to 4x brighter than white)."
            )
        if gain > 1.0 and not self.linear_light:
            raise DgfError(
                f"highlight gain {gain} scales light, which needs --linear-light "
                f"(a gain on sRGB codes is not a gain on light); add --linear-light."
            )
        if self.jpeg_quality_range is not None:
            values = tuple(self.jpeg_quality_range)
            if len(values) != 2 or not all(is_int(q) and 1 <= q <= 100 for q in values) \
                    or values[0] > values[1]:
                raise DgfError(
                    f"JPEG quality range {self.jpeg_quality_range!r} must be two whole "
                    f"numbers LO HI with 1 <= LO <= HI <= 100 (e.g. 70 95)."
                )

    def settings(self) -> dict:
        """The manifest's record of these settings."""
        span = self.jpeg_quality_range
        return {"linear_light": self.linear_light, "highlight_gain": self.highlight_gain,
                "jpeg_quality_range": None if span is None else [int(q) for q in span]}

    def blur(
        self, region: np.ndarray, blur_valid: Callable[[np.ndarray], np.ndarray],
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, dict]:
        """Blur a padded uint8 crop with ``blur_valid`` (the kernel's valid-part
        convolution); return float sRGB levels in [0, 255] (not rounded) and the
        per-pair draws."""
        if not self.linear_light:
            return blur_valid(region), {}
        light = srgb_to_linear(region / 255.0)
        drawn = {}
        if self.highlight_gain > 1.0:
            gain = float(rng.uniform(1.0, self.highlight_gain))
            light = light * (1.0 + (gain - 1.0) * highlight_mask(region))
            drawn["highlight_gain"] = round(gain, 4)
        return 255.0 * linear_to_srgb(blur_valid(light)), drawn

    def compress(self, blurred: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """Re-compress the uint8 blurred half once as JPEG, when a range is set."""
        if self.jpeg_quality_range is None:
            return blurred, {}
        low, high = self.jpeg_quality_range
        quality = int(rng.integers(low, high + 1))
        return jpeg_roundtrip(blurred, quality), {"jpeg_quality": quality}
