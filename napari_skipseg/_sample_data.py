"""Sample data for File > Open Sample: synthetic fluorescence nuclei, made on the spot.

Generated (not downloaded) so that it works offline; the same seed gives the same image.
"""

from __future__ import annotations

import numpy as np


def synthetic_nuclei(
    shape: tuple[int, ...] = (512, 512), n: int | None = None, radius: float = 11.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A uint16 image of blurred, noisy, partly touching ellipsoidal nuclei and its labels."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    ndim = len(shape)
    if n is None:
        n = int(0.35 * np.prod(shape) / (np.pi * radius**2 * (1.3 * radius if ndim == 3 else 1)))
    labels = np.zeros(shape, np.uint16)
    brightness = np.zeros(shape, np.float32)
    grid = np.indices(shape, dtype=np.float32)
    placed = 0
    for _ in range(n * 4):
        if placed >= n:
            break
        centre = [rng.uniform(0, s) for s in shape]
        radii = rng.uniform(0.65, 1.35, ndim) * radius
        angle = rng.uniform(0, np.pi)
        box = tuple(
            slice(max(int(c - 1.6 * radius), 0), min(int(c + 1.6 * radius) + 1, s))
            for c, s in zip(centre, shape, strict=True)
        )
        d = [grid[(i, *box)] - c for i, c in enumerate(centre)]
        if ndim >= 2:  # rotate in the YX plane
            y, x = d[-2], d[-1]
            d[-2], d[-1] = y * np.cos(angle) - x * np.sin(angle), y * np.sin(angle) + x * np.cos(angle)
        inside = sum((di / r) ** 2 for di, r in zip(d, radii, strict=True)) <= 1.0
        region = labels[box]
        if (region[inside] > 0).mean() > 0.03 if inside.any() else True:
            continue  # overlaps an existing nucleus too much
        placed += 1
        free = inside & (region == 0)
        region[free] = placed
        texture = 1.0 + 0.25 * rng.standard_normal(free.sum())
        brightness[box][free] = rng.uniform(0.45, 1.0) * texture
    image = ndi.gaussian_filter(brightness, 1.2)
    image += ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 8) * 0.03 + 0.06
    image = rng.poisson(np.clip(image, 0, None) * 400).astype(np.float32) + rng.normal(100, 6, shape)
    return np.clip(image, 0, 65535).astype(np.uint16), labels


def nuclei2d():
    """napari sample: a 512x512 synthetic nuclei image."""
    image, _ = synthetic_nuclei((512, 512), seed=1)
    return [(image, {"name": "synthetic nuclei 2D", "scale": (0.5, 0.5),
                     "metadata": {"skipseg": {"axes": "YX", "spacing": [0.5, 0.5], "unit": "micrometer"}}},
             "image")]


def nuclei3d():
    """napari sample: a 32x256x256 synthetic nuclei stack, anisotropic voxels."""
    image, _ = synthetic_nuclei((32, 256, 256), radius=9.0, seed=2)
    return [(image, {"name": "synthetic nuclei 3D", "scale": (1.0, 0.5, 0.5),
                     "metadata": {"skipseg": {"axes": "ZYX", "spacing": [1.0, 0.5, 0.5], "unit": "micrometer"}}},
             "image")]
