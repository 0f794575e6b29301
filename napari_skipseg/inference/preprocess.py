"""Turning a raw image into what the network expects."""

from __future__ import annotations

import numpy as np

MAX_SAMPLE = 4_000_000  # pixels used to estimate percentiles of large images


def percentile_range(image, low: float = 1.0, high: float = 99.8) -> tuple[float, float]:
    """Intensity percentiles of ``image`` (numpy, dask or zarr), from a strided sample when
    the image is large, so this never loads a large stack whole."""
    size = int(np.prod(image.shape))
    if size > MAX_SAMPLE:
        step = int(np.ceil((size / MAX_SAMPLE) ** (1 / image.ndim)))
        sample = np.asarray(image[tuple(slice(None, None, step) for _ in image.shape)])
    else:
        sample = np.asarray(image)
    sample = sample.astype(np.float32, copy=False)
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        raise ValueError("the image has no finite pixel values (all NaN or Inf)")
    lo, hi = np.percentile(finite, [low, high])
    return float(lo), float(hi)


def normalize(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Scale so that ``lo`` maps to 0 and ``hi`` to 1 (float32; NaN/Inf become 0)."""
    x = x.astype(np.float32, copy=True)
    scale = hi - lo
    if scale <= 1e-12:
        x -= lo
    else:
        x -= lo
        x /= scale
    np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return x


def to_grey(image: np.ndarray, channel_axis: int) -> np.ndarray:
    """Average the channels (RGB to grey) of ``image`` along ``channel_axis``."""
    return np.asarray(image, dtype=np.float32).mean(axis=channel_axis)
