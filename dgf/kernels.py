"""Camera-shake kernels and blurring with them.

Kernels follow the idea of Boracchi and Foi (2012), as used by DeblurGAN: the path
of the camera during the exposure is a particle with inertia, nudged by small random
accelerations, jerked now and then by impulsive shakes and pulled back towards where
it started. The path is sampled far finer than a pixel, splatted bilinearly onto a
small canvas and normalised to sum 1; a random exposure fraction decides how much of
the path the shutter sees, so one strength setting yields short and long kernels.

:func:`blur` on a whole image extends it past its borders by mirror reflection that
repeats the edge pixel (NumPy ``symmetric``, SciPy ``reflect``).
"""
from __future__ import annotations

import numpy as np

from dgf.checks import is_int
from dgf.errors import DgfError

DEFAULT_STRENGTH = 0.75  # sample photos: blurred-vs-sharp PSNR about 25.7 dB, near GOPRO

# Trajectory model constants. The path is simulated with unit speed per step; the
# constants below are per step, so they do not depend on the kernel size.
_STEPS = 2000
_JITTER = 0.03  # std of the per-step random acceleration, times strength
_SHAKE_RATE = 0.002  # chance per step of an impulsive shake, times strength
_SHAKE_SIZE = 1.2  # size of an impulsive shake relative to the (unit) velocity
_PULL = 12.0  # most centripetal pull; orbits shrink to steps / sqrt(pull)
_EXPOSURE = (0.3, 1.0)  # fraction of the trajectory the shutter sees


def check_kernel_args(size: int, strength: float) -> None:
    if not is_int(size):
        raise DgfError(f"kernel size must be an integer, got {size!r}.")
    if size < 3 or size % 2 == 0:
        raise DgfError(
            f"kernel size {size} is not allowed: use an odd size of at least 3 "
            f"(e.g. 31) so the kernel has a centre pixel and does not shift the image."
        )
    if not (isinstance(strength, (int, float)) and 0.0 < float(strength) <= 1.0):
        raise DgfError(
            f"strength {strength!r} is outside (0, 1]: 0.1 gives short, smooth "
            f"strokes, 1 gives long, shaky ones that fill the kernel canvas."
        )


def _trajectory(rng: np.random.Generator, strength: float) -> np.ndarray:
    """A camera path as complex positions, unit speed, ``_STEPS`` samples."""
    velocity = np.exp(1j * rng.uniform(0.0, 2.0 * np.pi))
    pull = rng.uniform(0.0, _PULL) / _STEPS**2
    jitter = _JITTER * strength
    shake_rate = _SHAKE_RATE * strength
    kicks = jitter * (rng.standard_normal(_STEPS) + 1j * rng.standard_normal(_STEPS))
    shakes = rng.random(_STEPS) < shake_rate
    shake_dirs = np.exp(1j * rng.uniform(0.0, 2.0 * np.pi, _STEPS))
    positions = np.empty(_STEPS, dtype=np.complex128)
    position = 0j
    # Sequential by nature: each step's velocity depends on the last one (inertia)
    # and on the position (the pull back towards the start).
    for t in range(_STEPS):
        positions[t] = position
        change = kicks[t] - pull * position
        if shakes[t]:
            change += _SHAKE_SIZE * shake_dirs[t]
        velocity = velocity + change
        speed = abs(velocity)
        velocity = velocity / speed if speed > 1e-12 else np.exp(1j * rng.uniform(0, 2 * np.pi))
        position = position + velocity
    return positions


def random_kernel(
    rng: np.random.Generator, size: int = 31, strength: float = DEFAULT_STRENGTH
) -> np.ndarray:
    """Draw one random camera-shake point-spread function.

    Args:
        rng: source of randomness; the same generator state gives the same kernel.
        size: side of the square canvas in pixels; odd, at least 3.
        strength: in (0, 1]. Scales the length of the camera path (at full exposure
            ``strength * 1.5 * (size - 1)`` pixels of travel) and how irregular it
            is (random jitter and the rate of impulsive shakes). Paths that would
            leave the canvas are shrunk to fit.

    Returns:
        (size, size) float32, non-negative, summing to 1, with its centre of mass on
        the centre pixel so blurring does not shift the image.
    """
    check_kernel_args(size, strength)
    path = _trajectory(rng, float(strength))
    exposure = rng.uniform(*_EXPOSURE)
    path = path[: max(2, int(round(exposure * _STEPS)))]
    length = float(strength) * 1.5 * (size - 1) * exposure
    # Unit speed per step: scaling by length / steps gives the wanted path length.
    path = path * (length / _STEPS)
    # Centring the mean sample centres the PSF's mass: bilinear splatting keeps the
    # first moment exactly, so the blurred image is not displaced from the sharp one.
    path = path - path.mean()
    half = (size - 1) / 2.0
    reach = max(np.abs(path.real).max(), np.abs(path.imag).max())
    limit = half - 0.5  # keeps the right/bottom splat neighbour on the canvas
    if reach > limit:
        path = path * (limit / reach)
    x = path.real + half
    y = path.imag + half
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx = x - x0
    fy = y - y0
    kernel = np.zeros(size * size, dtype=np.float64)
    for dy, dx, w in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        np.add.at(kernel, (y0 + dy) * size + (x0 + dx), w)
    kernel = kernel.reshape(size, size)
    kernel /= kernel.sum()
    return kernel.astype(np.float32)


def blur_valid(padded: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve a padded (H + k - 1, W + k - 1, 3) image; return the valid (H, W, 3)
    part as float64 (not rounded)."""
    k = kernel.shape[0]
    ph, pw = padded.shape[:2]
    # Circular convolution on the padded canvas: rows/cols from k - 1 on never wrap,
    # so they equal the linear convolution's valid part.
    spectrum = np.fft.rfft2(padded.astype(np.float64), axes=(0, 1))
    kernel_spectrum = np.fft.rfft2(kernel.astype(np.float64), s=(ph, pw))
    full = np.fft.irfft2(spectrum * kernel_spectrum[:, :, None], s=(ph, pw), axes=(0, 1))
    return full[k - 1 :, k - 1 :]


def round_levels(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _check_kernel(kernel: np.ndarray) -> np.ndarray:
    kernel = np.asarray(kernel)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
        raise DgfError(
            f"kernel has shape {kernel.shape}; expected a square 2-D array with an odd "
            f"side (e.g. (31, 31)) so it has a centre pixel."
        )
    if not np.all(np.isfinite(kernel)):
        raise DgfError("kernel contains NaN or infinite values.")
    return kernel


def blur(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Blur an RGB image with a point-spread function, channel by channel.

    Args:
        image: (H, W, 3) uint8.
        kernel: (k, k) float, k odd; normally non-negative and summing to 1
            (as from :func:`random_kernel`). Applied as a true convolution with its
            centre pixel as origin.

    Returns:
        (H, W, 3) uint8, rounded to the nearest level. Pixels beyond the border are
        mirror reflections that repeat the edge pixel (NumPy ``symmetric``).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DgfError(
            f"image has shape {image.shape} and dtype {image.dtype}; expected "
            f"(H, W, 3) uint8 RGB."
        )
    kernel = _check_kernel(kernel)
    r = kernel.shape[0] // 2
    padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode="symmetric")
    return round_levels(blur_valid(padded, kernel))
