"""Turning a raw image into what the network expects."""

from __future__ import annotations

import numpy as np

MAX_SAMPLE = 4_000_000  # pixels used to estimate percentiles of large images


def check_pixel_dtype(dtype) -> None:
    """Raise ``ValueError`` unless pixels of ``dtype`` are real numbers (bool, integer, float).

    Complex pixels would silently lose their imaginary part; text, objects, records and
    dates are not intensities at all.
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "biuf":
        return
    if dtype.kind == "c":
        raise ValueError(
            f"complex pixels ({dtype}) are not supported; segment the magnitude (np.abs) "
            "or the real part (.real) instead"
        )
    raise ValueError(f"pixels of type {dtype} are not numbers; expected bool, integer or float pixels")


def percentile_range(image, low: float = 1.0, high: float = 99.8) -> tuple[float, float]:
    """Intensity percentiles of ``image`` (numpy, dask or zarr), from a strided sample when
    the image is large, so this never loads a large stack whole.

    NaN and infinite pixels are left out; an image without any finite pixel gives
    ``(0.0, 1.0)`` (it normalises to all zeros, i.e. background).
    """
    check_pixel_dtype(image.dtype)
    size = int(np.prod(image.shape))
    if size > MAX_SAMPLE:
        step = int(np.ceil((size / MAX_SAMPLE) ** (1 / image.ndim)))
        sample = np.asarray(image[tuple(slice(None, None, step) for _ in image.shape)])
    else:
        sample = np.asarray(image)
    sample = sample.astype(_work_dtype(sample.dtype), copy=False)
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite.astype(np.float64), [low, high])
    return float(lo), float(hi)


def normalize(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Scale so that ``lo`` maps to 0 and ``hi`` to 1 (float32; NaN/Inf become 0).

    A constant image (``hi == lo``) becomes all zeros, without dividing by zero.
    """
    work = _work_dtype(x.dtype)
    x = x.astype(work, copy=True)
    scale = hi - lo
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        x -= work(lo)
        if np.isfinite(scale) and scale > 1e-12:
            x /= work(scale)
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        if work is not np.float32:
            x = x.astype(np.float32)
            np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return x


def _work_dtype(dtype) -> type:
    """float64 for float64 pixels (values beyond float32's range stay finite), else float32."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def to_grey(image: np.ndarray, channel_axis: int) -> np.ndarray:
    """Average the channels (RGB to grey) of ``image`` along ``channel_axis``."""
    return np.asarray(image, dtype=np.float32).mean(axis=channel_axis)
