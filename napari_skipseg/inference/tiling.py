"""Tile grids of one fixed shape and the smooth window used to blend them."""

from __future__ import annotations

import itertools
import math
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


def fit_tile(
    shape: tuple[int, ...], tile: tuple[int, ...], overlap: float, multiple: tuple[int, ...] | None = None,
    grow: float = 1.25,
) -> tuple[int, ...]:
    """The tile shape that covers ``shape`` with the least computation, near ``tile``.

    Along each axis, the configured tile may cover the image wastefully: 256 pixels with
    tiles of 128 overlapping by 16 take 3 tiles (384 pixels computed), 50 with 48 take 2
    (96). For each possible tile count up to the configured one, the smallest tile (a
    multiple of ``multiple``, what the network pads to anyway) that covers the axis with
    that many tiles overlapping by ``overlap`` of their length is found; the count with
    the fewest computed pixels wins (ties: fewer tiles), among tiles at most ``grow`` times
    the configured one. 256 / 128 -> 2 tiles of 144; 50 / 48 -> 1 tile of 50.
    """
    multiple = multiple or (1,) * len(shape)
    out = []
    for n, t, m in zip(shape, tile, multiple, strict=True):
        n, t, m = int(n), int(t), max(int(m), 1)
        if n <= t:
            out.append(n)
            continue
        k0 = len(tile_starts(n, t, int(round(t * overlap))))
        t_max = max(t, int(t * grow) // m * m)

        def padded(size: int, m: int = m) -> int:
            return -(-size // m) * m

        best = (k0 * padded(t), k0, t)
        for k in range(1, k0 + 1):
            size = padded(-(-n // k))
            while size <= t_max and len(tile_starts(n, size, int(round(size * overlap)))) > k:
                size += m
            if size > t_max:
                continue
            size = min(size, n)
            cand = (k * padded(size), k, size)
            if cand[:2] < best[:2]:
                best = cand
        out.append(best[2])
    return tuple(out)


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


def default_block(
    spatial: tuple[int, ...], tile: tuple[int, ...], budget: int = 2**24
) -> tuple[int, ...]:
    """The block of an image processed at a time: the whole spatial extent when it has at
    most ``budget`` voxels, else that extent halved along its longest axes (never below one
    tile) until it fits. Memory per block is about 16 bytes per voxel and class."""
    block = list(spatial)
    while int(np.prod(block)) > budget:
        axis = max(range(len(block)), key=lambda a: block[a] / max(tile[a], 1))
        half = -(-block[axis] // 2)
        if half < tile[axis]:
            break
        block[axis] = half
    return tuple(block)


def block_grid(shape: tuple[int, ...], block: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """Regular blocks of ``block`` (the last ones cut at the edge) covering ``shape``, in
    row-major order; they line up with zarr chunks of the same shape."""
    per_axis = [
        [slice(s, min(s + b, n)) for s in range(0, n, b)] for n, b in zip(shape, block, strict=True)
    ]
    return [tuple(combo) for combo in itertools.product(*per_axis)]


def block_tiles(
    block: tuple[slice, ...], shape: tuple[int, ...], tile: tuple[int, ...], overlap: tuple[int, ...]
) -> tuple[tuple[slice, ...], list[tuple[tuple[slice, ...], tuple[slice, ...], tuple[slice, ...]]]]:
    """The tiles of the whole image's grid (:func:`tile_grid`) that touch ``block``.

    Returns the region to read (the block plus the halo those tiles need) and, per tile in
    grid order: its slices within that region, the part of the tile inside the block (tile
    coordinates) and where that part goes (block coordinates). Blending these tiles gives
    the block exactly the values the whole-image computation gives it.
    """
    read, per_axis = [], []
    for b, n, t, o in zip(block, shape, tile, overlap, strict=True):
        te = min(t, n)
        starts = [s for s in tile_starts(n, t, o) if s < b.stop and s + te > b.start]
        r0 = starts[0]
        read.append(slice(r0, starts[-1] + te))
        per_axis.append([
            (slice(s - r0, s - r0 + te),
             slice(max(b.start, s) - s, min(b.stop, s + te) - s),
             slice(max(b.start, s) - b.start, min(b.stop, s + te) - b.start))
            for s in starts
        ])
    tiles = [
        tuple(tuple(part[k] for part in combo) for k in range(3))
        for combo in itertools.product(*per_axis)
    ]
    return tuple(read), tiles



def fit_tile_volume(
    shape: tuple[int, ...], tile: tuple[int, ...], overlap: float, multiple: tuple[int, ...] | None = None,
    max_voxels: int | None = None,
) -> tuple[int, ...]:
    """The tile shape for a volume: the whole volume when it has at most ``max_voxels``
    voxels (padded to ``multiple``), else the tiles of at most ``max_voxels`` voxels that
    cover it with the fewest voxels computed (:func:`fit_volume_tiles`); no cap:
    :func:`fit_tile`.

    A volume a few times larger than the configured tile is cut by :func:`fit_tile` into
    many tiles that overlap (128^3 with nuclei3d's 48 x 96 x 96: 12 tiles of 48 x 72 x 72,
    1.42 times the voxels computed, and seams where the tiles meet); as one tile it is
    computed once and exactly as a whole-volume pass computes it. ``max_voxels`` bounds the
    memory that tile needs (the engine passes a few configured tiles' worth).
    """
    multiple = tuple(max(int(m), 1) for m in (multiple or (1,) * len(shape)))
    whole = math.prod(-(-int(n) // m) * m for n, m in zip(shape, multiple, strict=True))
    if max_voxels is not None and whole <= max_voxels:
        return tuple(int(n) for n in shape)
    if max_voxels is None:
        return fit_tile(shape, tile, overlap, multiple)
    pixels = tuple(int(round(t * overlap)) for t in tile)
    return fit_volume_tiles(shape, tile, pixels, multiple, max_voxels)


def fit_volume_tiles(
    shape: tuple[int, ...], tile: tuple[int, ...], overlap: tuple[int, ...], multiple: tuple[int, ...],
    max_voxels: int,
) -> tuple[int, ...]:
    """Tiles of at most ``max_voxels`` voxels (padded to ``multiple``) that cover ``shape``,
    consecutive tiles overlapping by ``overlap`` pixels, with the fewest voxels computed.

    Larger tiles than the configured ``tile`` recompute less: the overlap is what the
    configured tile shares with its neighbours (the context a tile border lacks does not
    grow with the tile), so it is a smaller part of a large tile. For each axis and each
    tile count, the smallest tile (a multiple of ``multiple``, or the whole axis) covering
    the axis with that count; of all combinations within ``max_voxels`` the one computing
    the fewest voxels wins (ties: fewer tiles, then larger along the last axes). No
    axis gets less than the configured tile (or the axis). 256^3 with nuclei3d's
    48 x 96 x 96, overlap 6 x 12 x 12 and at most 5 configured tiles' voxels: 10 tiles of
    56 x 136 x 256 (1.16 times the voxels computed; :func:`fit_tile`'s 54 tiles of
    48 x 96 x 96: 1.42 times).
    """
    def padded(size: int, m: int) -> int:
        return -(-size // m) * m

    options = []  # per axis: [(tiles, size), ...]
    for n, t, o, m in zip(shape, tile, overlap, multiple, strict=True):
        n, m = int(n), max(int(m), 1)
        low = min(int(t), n)
        o = min(int(o), max(low - 1, 0))
        axis = {}
        for k in range(1, len(tile_starts(n, low, o)) + 1):
            size = max(low, min(n, padded(-(-(n + (k - 1) * o) // k), m)))
            while size < n and len(tile_starts(n, size, o)) > k:
                size = min(n, size + m)
            count = len(tile_starts(n, size, o))
            if count not in axis or size < axis[count]:
                axis[count] = size
        options.append(sorted(axis.items()))
    best = None
    for combo in itertools.product(*options):
        sizes = tuple(size for _, size in combo)
        voxels = math.prod(padded(s, m) for s, m in zip(sizes, multiple, strict=True))
        if voxels > max_voxels:
            continue
        count = math.prod(k for k, _ in combo)
        key = (count * voxels, count, tuple(-s for s in reversed(sizes)))
        if best is None or key < best[0]:
            best = (key, sizes)
    if best is None:  # even the configured tile is larger than the cap: keep to it
        return tuple(min(int(t), int(n)) for t, n in zip(tile, shape, strict=True))
    return best[1]
