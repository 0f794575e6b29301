"""Tile grids of one fixed shape and the smooth window used to blend them."""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``[0, size)``.

    Consecutive tiles overlap by at least ``overlap``; the last tile ends exactly at
    ``size`` (it is shifted back rather than shrunk, so every tile has the same shape).
    """
    if tile >= size:
        return [0]
    step = max(tile - overlap, 1)
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)
    return starts


def tile_grid(
    shape: tuple[int, ...], tile: tuple[int, ...], overlap: tuple[int, ...]
) -> list[tuple[slice, ...]]:
    """Slices of every tile of shape ``min(tile, shape)`` covering an array of ``shape``."""
    per_axis = [
        [slice(s, s + min(t, n)) for s in tile_starts(n, t, o)]
        for n, t, o in zip(shape, tile, overlap, strict=True)
    ]
    return [tuple(combo) for combo in itertools.product(*per_axis)]


@lru_cache(maxsize=16)
def blend_window(shape: tuple[int, ...], overlap: tuple[int, ...]) -> np.ndarray:
    """Weights for blending overlapping tiles: 1 in the middle, a raised-cosine ramp over
    ``overlap`` pixels at each border, never below a small floor (so that the border of the
    image, covered by one tile only, still gets a well-defined value)."""
    window = np.ones(shape, dtype=np.float32)
    for axis, (n, o) in enumerate(zip(shape, overlap, strict=True)):
        o = min(o, n // 2)
        if o < 1:
            continue
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(o) + 0.5) / o)
        profile = np.ones(n, dtype=np.float32)
        profile[:o] = ramp
        profile[n - o :] = ramp[::-1]
        profile = np.maximum(profile, 1e-3)
        window *= profile.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    window.setflags(write=False)
    return window
