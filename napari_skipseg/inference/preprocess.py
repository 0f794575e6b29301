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


# -- colour and contrast handling named in a model's ``normalization`` ---------------------------
#
# ``{"stain": "hematoxylin"}``: an RGB bright-field image enters the network as its
# haematoxylin optical density (colour deconvolution, ``skimage.color.rgb2hed``): stained
# nuclei become bright on a dark background, like fluorescence. Grey images are left grey.
# ``{"invert": "auto" | true}``: after percentile scaling, a grey image whose background is
# bright (median above 0.5) is turned over (``1 - x``), so dark objects on a bright field look
# like bright objects on a dark one; ``true`` always inverts. Both are decided once per image
# (on a strided sample, like the percentiles), so every slice and tile is treated alike.


def wants_input_transform(norm: dict | None) -> bool:
    """Whether ``norm`` asks for stain separation or contrast inversion."""
    norm = norm or {}
    return bool(norm.get("stain")) or norm.get("invert") not in (None, False, "none", "no")


def stain_channel(rgb: np.ndarray, stain: str = "hematoxylin") -> np.ndarray:
    """Optical density of one stain of an RGB image ``(..., 3)`` (channels last), float32."""
    from skimage.color import rgb2hed

    stains = {"hematoxylin": 0, "haematoxylin": 0, "eosin": 1, "dab": 2}
    if stain not in stains:
        raise ValueError(f"unknown stain {stain!r}; choose one of {', '.join(stains)}")
    rgb = np.asarray(rgb)[..., :3]
    if rgb.dtype.kind in "iu":
        scale = float(np.iinfo(rgb.dtype).max)
    else:
        finite = rgb[np.isfinite(rgb)]
        scale = float(finite.max()) if finite.size and finite.max() > 1.0 else 1.0
    rgb = np.clip(np.nan_to_num(rgb.astype(np.float32) / scale), 0.0, 1.0)
    return rgb2hed(rgb)[..., stains[stain]].astype(np.float32)


class InputTransform:
    """Raw slices (channels last, or none) -> normalised ``(1, *spatial)`` float32 network input.

    Built once per image from a strided sample of it (``image`` channels last when
    ``n_channels``): the percentiles, the stain and the inversion it decides hold for every
    slice and tile afterwards.
    """

    def __init__(self, image, n_channels: int, norm: dict | None) -> None:
        norm = dict(norm or {})
        self.stain = norm.get("stain") if n_channels >= 3 else None
        self.n_channels = n_channels
        size = int(np.prod(image.shape))
        if size > MAX_SAMPLE:
            step = int(np.ceil((size / MAX_SAMPLE) ** (1 / max(len(image.shape) - bool(n_channels), 1))))
            idx = tuple(slice(None, None, step) for _ in range(len(image.shape) - bool(n_channels)))
            sample = np.asarray(image[idx + ((slice(None),) if n_channels else ())])
        else:
            sample = np.asarray(image)
        grey = self.to_grey(sample)
        if norm.get("kind", "percentile") == "percentile":
            self.lo, self.hi = percentile_range(grey, norm.get("low", 1.0), norm.get("high", 99.8))
        else:
            self.lo, self.hi = 0.0, 1.0
        invert = norm.get("invert")
        if invert == "auto":
            scaled = normalize(grey, self.lo, self.hi)
            self.invert = bool(np.median(scaled) > 0.5) if scaled.size else False
        else:
            self.invert = invert not in (None, False, "none", "no")

    def to_grey(self, data: np.ndarray) -> np.ndarray:
        data = np.asarray(data)
        if not self.n_channels:
            return data
        if self.stain:
            return stain_channel(data, self.stain)
        return data[..., : min(self.n_channels, 3)].astype(np.float32).mean(axis=-1)

    def __call__(self, data: np.ndarray) -> np.ndarray:
        x = normalize(self.to_grey(data), self.lo, self.hi)
        if self.invert:
            x = 1.0 - x
        return np.ascontiguousarray(x[None], dtype=np.float32)
