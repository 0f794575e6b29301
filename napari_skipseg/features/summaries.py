"""Summaries of a stack of feature maps ``(C, *spatial)``: norm, PCA colours, top channels.

All functions take and return numpy arrays (float32 or uint8) and never import torch.
"""

from __future__ import annotations

import numpy as np

VIEWS = ("channels", "norm", "pca", "topk")
MAX_FIT_PIXELS = 65_536  # pixels used to fit the PCA basis and contrast ranges of large maps


def _check(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps)
    if maps.ndim < 2:
        raise ValueError(f"feature maps must be shaped (C, *spatial), got shape {maps.shape}")
    return maps


def _sample(flat: np.ndarray, limit: int = MAX_FIT_PIXELS) -> np.ndarray:
    """Every n-th column of ``(C, N)`` so that at most ``limit`` remain."""
    step = max(1, int(np.ceil(flat.shape[1] / limit)))
    return flat[:, ::step]


def channel_norm(maps: np.ndarray) -> np.ndarray:
    """L2 norm over channels at every pixel, float32 shaped like one channel."""
    maps = _check(maps).astype(np.float32, copy=False)
    return np.sqrt(np.einsum("c...,c...->...", maps, maps, dtype=np.float32)).astype(np.float32)


def pca_rgb(maps: np.ndarray, components: int = 3) -> np.ndarray:
    """The first three principal components of the channels as an RGB uint8 image.

    Pixels are points in channel space; their three main directions of variation become
    red, green and blue. Each component is stretched from its 1st to 99th percentile.
    The basis is fitted on at most :data:`MAX_FIT_PIXELS` pixels and applied to all;
    signs are fixed (largest loading positive) so that the colours are reproducible.
    Returns ``(*spatial, 3)`` uint8; channels missing (C < 3) stay black.
    """
    maps = _check(maps)
    c, spatial = maps.shape[0], maps.shape[1:]
    flat = maps.reshape(c, -1).astype(np.float64)
    fit = _sample(flat)
    mean = fit.mean(axis=1, keepdims=True)
    k = min(components, c)
    if fit.shape[1] > 1:
        cov = np.cov(fit - mean)
        cov = np.atleast_2d(cov)
        vals, vecs = np.linalg.eigh(cov)
        order = np.argsort(vals)[::-1][:k]
        basis = vecs[:, order]  # (C, k)
    else:
        basis = np.eye(c)[:, :k]
    signs = np.sign(basis[np.argmax(np.abs(basis), axis=0), np.arange(k)])
    basis = basis * np.where(signs == 0, 1.0, signs)
    proj = basis.T @ (flat - mean)  # (k, N)
    rgb = np.zeros((3, flat.shape[1]), np.float32)
    ref = basis.T @ (fit - mean)
    for i in range(k):
        lo, hi = np.percentile(ref[i], [1.0, 99.0])
        if hi - lo <= 1e-12:
            continue  # a constant component stays black
        rgb[i] = np.clip((proj[i] - lo) / (hi - lo), 0.0, 1.0)
    out = (rgb * 255.0 + 0.5).astype(np.uint8)
    return np.moveaxis(out.reshape(3, *spatial), 0, -1)


def top_channels(maps: np.ndarray, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` channels with the highest mean activation.

    Returns ``(indices, maps[indices])``: channel indices, most active first, and their
    maps as float32 ``(k, *spatial)``.
    """
    maps = _check(maps)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    means = maps.reshape(maps.shape[0], -1).mean(axis=1)
    order = np.argsort(-means, kind="stable")[: min(k, maps.shape[0])]
    return order.astype(np.int64), np.ascontiguousarray(maps[order], dtype=np.float32)


def contrast_range(data: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """Display range of ``data`` from percentiles of a sample (never an empty range)."""
    flat = np.asarray(data).reshape(1, -1)
    sample = _sample(flat, 4 * MAX_FIT_PIXELS)[0].astype(np.float32)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(sample, [low, high]))
    if hi - lo <= 1e-6:
        hi = lo + max(abs(lo) * 1e-3, 1e-3)
    return lo, hi


def summarise(maps: np.ndarray, view: str, k: int = 4) -> tuple[np.ndarray, dict]:
    """One view of a feature stack for display, and facts about it.

    ``view`` is ``"channels"`` (the stack itself, float32 ``(C, *spatial)``), ``"norm"``
    (float32 ``(*spatial)``), ``"pca"`` (uint8 ``(*spatial, 3)``) or ``"topk"``
    (float32 ``(k, *spatial)``; ``info["channels"]`` lists which).
    """
    if view == "channels":
        return np.ascontiguousarray(maps, dtype=np.float32), {"channels": list(range(maps.shape[0]))}
    if view == "norm":
        return channel_norm(maps), {}
    if view == "pca":
        return pca_rgb(maps), {}
    if view == "topk":
        idx, top = top_channels(maps, k)
        return top, {"channels": [int(i) for i in idx]}
    raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
