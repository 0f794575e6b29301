"""Training data: image/mask pairs, targets for each output kind, patch sampling, augmentation."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..inference.preprocess import normalize, percentile_range

IGNORE = -1  # target value of pixels that carry no label (not taken as background)


@dataclass
class Sample:
    """One normalised image ``(C, *spatial)`` float32 and its target ``(*spatial)`` int64."""

    name: str
    image: np.ndarray
    target: np.ndarray
    instances: np.ndarray | None = None  # the instance labels, for instance models


def instance_target(labels: np.ndarray) -> np.ndarray:
    """Instance labels -> classes 0 background, 1 interior, 2 boundary (inner object edge)."""
    from skimage.segmentation import find_boundaries

    target = (labels > 0).astype(np.int64)
    edge = find_boundaries(labels, mode="inner") & (labels > 0)
    target[edge] = 2
    return target


def check_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """``mask`` as integer labels; ``ValueError`` naming the problem if it cannot be one.

    Labels must be whole numbers >= 0 (bool, integer, or float holding whole numbers).
    """
    mask = np.asarray(mask)
    if mask.dtype.kind == "b":
        return mask.astype(np.uint8)
    if mask.dtype.kind == "f":
        finite = np.isfinite(mask)
        if not finite.all() or not np.array_equal(mask, np.round(mask)):
            raise ValueError(f"{name}: labels must be whole numbers; this mask holds fractions, NaN or Inf")
        mask = mask.astype(np.int64)
    elif mask.dtype.kind not in "iu":
        raise ValueError(f"{name}: labels must be integers, got pixels of type {mask.dtype}")
    if mask.size and mask.min() < 0:
        raise ValueError(f"{name}: labels must be >= 0 (0 is background), found {int(mask.min())}")
    return mask


def make_target(mask: np.ndarray, output: str, num_classes: int) -> np.ndarray:
    if output == "instances":
        return instance_target(mask)
    target = mask.astype(np.int64)
    if target.max() >= num_classes:
        raise ValueError(f"mask has class {target.max()} but the model has {num_classes} classes")
    return target


def prepare_image(image: np.ndarray, in_channels: int, spatial_dims: int, norm: dict) -> np.ndarray:
    """Raw image -> ``(C, *spatial)`` float32 normalised as the engine does it."""
    from ..inference.preprocess import InputTransform, wants_input_transform

    image = np.asarray(image)
    if in_channels == 1 and wants_input_transform(norm):  # stain / inverted contrast, as the engine
        rgb = image.ndim == spatial_dims + 1 and image.shape[-1] in (3, 4)
        if image.ndim != spatial_dims + rgb:
            raise ValueError(f"expected a {spatial_dims}D image, got shape {image.shape}")
        return InputTransform(image, image.shape[-1] if rgb else 0, norm)(image)
    if image.ndim == spatial_dims + 1 and image.shape[-1] in (3, 4) and in_channels == 1:
        image = image[..., :3].astype(np.float32).mean(axis=-1)
    if image.ndim != spatial_dims:
        raise ValueError(f"expected a {spatial_dims}D image, got shape {image.shape}")
    lo, hi = percentile_range(image, norm.get("low", 1.0), norm.get("high", 99.8))
    return normalize(image, lo, hi)[None]


def load_pairs(folder: str | Path, cfg, names: list[str] | None = None) -> list[Sample]:
    """Read ``folder/images/*`` and ``folder/masks/*`` (same file names).

    Raises ``FileNotFoundError``/``ValueError`` naming the file at fault: a missing mask, an
    unreadable (empty, truncated, corrupt) file, an image and mask of different shapes, or
    a mask that does not hold whole-number labels.
    """
    from ..io import read_image

    folder = Path(folder)
    img_dir, mask_dir = folder / "images", folder / "masks"
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise FileNotFoundError(f"{folder}: needs 'images' and 'masks' subfolders")
    names = names if names is not None else sorted(p.name for p in img_dir.iterdir() if p.is_file())
    samples = []
    for name in names:
        mask_path = mask_dir / name
        if not mask_path.exists():
            raise FileNotFoundError(f"{mask_path}: no mask for image {name}")
        raw, _ = read_image(img_dir / name)
        try:
            image = prepare_image(raw, cfg.in_channels, cfg.spatial_dims, cfg.normalization)
        except ValueError as err:
            raise ValueError(f"{img_dir / name}: {err}") from err
        mask = check_mask(read_image(mask_path)[0], str(mask_path))
        if mask.shape != image.shape[1:]:
            raise ValueError(
                f"{name}: image {image.shape[1:]} and mask {mask.shape} differ in shape "
                "(the mask must label every pixel of the image)"
            )
        target = make_target(mask, cfg.output, cfg.num_classes)
        instances = mask if cfg.output == "instances" else None
        samples.append(Sample(name, image, target, instances))
    return samples


def split_names(names: list[str], val_fraction: float = 0.15, seed: str = "skipseg") -> tuple[list[str], list[str]]:
    """Deterministic split by a hash of each file name: the same names always give the same split."""
    def h(name: str) -> float:
        return int(hashlib.sha1(f"{seed}:{name}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    val = sorted(n for n in names if h(n) < val_fraction)
    train = sorted(n for n in names if h(n) >= val_fraction)
    if not val and len(names) > 1:
        val, train = train[-1:], train[:-1]
    return train, val


def _check_sample(s: Sample, dims: int) -> None:
    """``ValueError`` naming the sample if its image and labels cannot be trained on."""
    image, target = np.asarray(s.image), np.asarray(s.target)
    if target.ndim != dims or image.ndim != dims + 1:
        raise ValueError(
            f"{s.name}: expected a (C, {', '.join('ZYX'[-dims:])}) image and "
            f"{dims}D labels for {dims}D patches; got image {image.shape} and labels {target.shape}"
        )
    if image.shape[1:] != target.shape:
        raise ValueError(
            f"{s.name}: image {image.shape[1:]} and labels {target.shape} differ in shape "
            "(the labels must cover every pixel of the image)"
        )
    if target.size == 0:
        raise ValueError(f"{s.name}: the image is empty (shape {image.shape})")
    if target.dtype.kind not in "iu":
        raise ValueError(f"{s.name}: labels must be integers, got {target.dtype}")
    if target.min() < IGNORE:
        raise ValueError(f"{s.name}: labels must be >= 0 (or {IGNORE} for unlabelled), found {int(target.min())}")
    if image.dtype.kind not in "biuf":
        raise ValueError(f"{s.name}: image pixels of type {image.dtype} are not real numbers")
    if not np.isfinite(image).all():
        raise ValueError(f"{s.name}: the normalised image holds NaN or Inf (normalise it with prepare_image)")


class PatchSampler:
    """Random patches with augmentation, drawn from in-memory samples.

    Patches smaller than the patch size are padded (image with 0, target with IGNORE).
    ``foreground_bias`` of the patches are centred on a labelled foreground pixel.
    """

    def __init__(
        self,
        samples: list[Sample],
        patch: tuple[int, ...],
        rng: np.random.Generator,
        augment: bool = True,
        foreground_bias: float = 0.5,
        anisotropic: bool = False,
        elastic: float = 0.0,
    ) -> None:
        if not samples:
            raise ValueError("no training samples")
        self.patch = tuple(int(p) for p in patch)
        for s in samples:
            _check_sample(s, len(self.patch))
        if all(not (s.target > 0).any() for s in samples):
            labelled = any((s.target != IGNORE).any() for s in samples)
            raise ValueError(
                "the labels are empty: "
                + ("every pixel is background" if labelled else "no pixel is labelled")
                + f" in all {len(samples)} sample(s); label or correct some objects first"
            )
        self.samples = samples
        self.rng = rng
        self.augment = augment
        self.fg_bias = foreground_bias
        self.anisotropic = anisotropic
        if not 0.0 <= elastic <= 1.0:
            raise ValueError(f"elastic is the share of patches deformed (0 to 1), got {elastic}")
        self.elastic = elastic
        weights = np.array([max(s.target.size, 1) for s in samples], dtype=float) ** 0.5
        self.weights = weights / weights.sum()
        self._fg = [np.flatnonzero(s.target.ravel() > 0) for s in samples]

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        i = rng.choice(len(self.samples), p=self.weights)
        s = self.samples[i]
        spatial = s.target.shape
        if self._fg[i].size and rng.random() < self.fg_bias:
            centre = np.unravel_index(self._fg[i][rng.integers(self._fg[i].size)], spatial)
            start = [int(c) - p // 2 for c, p in zip(centre, self.patch, strict=True)]
        else:
            start = [int(rng.integers(0, max(n - p, 0) + 1)) for n, p in zip(spatial, self.patch, strict=True)]
        start = [min(max(st, 0), max(n - p, 0)) for st, n, p in zip(start, spatial, self.patch, strict=True)]
        sl = tuple(slice(st, st + p) for st, p in zip(start, self.patch, strict=True))
        img = s.image[(slice(None), *sl)]
        tgt = s.target[sl]
        if img.shape[1:] != self.patch:
            pad = [(0, p - n) for n, p in zip(tgt.shape, self.patch, strict=True)]
            img = np.pad(img, [(0, 0), *pad])
            tgt = np.pad(tgt, pad, constant_values=IGNORE)
        if self.augment:
            img, tgt = self._augment(img, tgt)
        return np.ascontiguousarray(img, dtype=np.float32), np.ascontiguousarray(tgt)

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = [self.draw() for _ in range(n)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def _augment(self, img: np.ndarray, tgt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        nd = tgt.ndim
        if self.elastic and rng.random() < self.elastic:
            img, tgt = self._deform(img, tgt)
        # flips along every axis, and 90 degree turns in the YX plane when it is square
        for ax in range(nd):
            if rng.random() < 0.5:
                img, tgt = np.flip(img, ax + 1), np.flip(tgt, ax)
        if tgt.shape[-1] == tgt.shape[-2]:
            k = int(rng.integers(4))
            img, tgt = np.rot90(img, k, axes=(-2, -1)), np.rot90(tgt, k, axes=(-2, -1))
        # intensity: contrast, brightness, gamma, noise
        img = img * rng.uniform(0.7, 1.4) + rng.uniform(-0.15, 0.15)
        if rng.random() < 0.3:
            img = np.clip(img, 0, None) ** rng.uniform(0.7, 1.5)
        if rng.random() < 0.3:
            img = img + rng.normal(0, rng.uniform(0.01, 0.08), img.shape).astype(np.float32)
        return img, tgt

    def _deform(self, img: np.ndarray, tgt: np.ndarray, spacing: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Smooth elastic deformation (as in the original U-Net): random displacements at
        control points every ``spacing`` pixels, spread smoothly to every pixel (Gaussian
        basis, separable), up to a few pixels; the image is resampled linearly, the target by
        nearest neighbour (IGNORE stays IGNORE)."""
        from scipy import ndimage as ndi

        rng = self.rng
        shape = tgt.shape
        strength = rng.uniform(1.5, 4.0)
        coords = list(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
        bases = [_smooth_basis(n, spacing) for n in shape]
        letters = "abc"[: len(shape)]
        spec = ",".join(f"{x}{x.upper()}" for x in letters) + "," + letters.upper() + "->" + letters
        for axis in range(len(shape)):
            if self.anisotropic and axis == 0:
                continue  # few, thick planes: deform within them only
            coarse = rng.normal(0.0, strength, [b.shape[1] for b in bases]).astype(np.float32)
            coords[axis] += np.einsum(spec, *bases, coarse, optimize=True)
        img = np.stack([ndi.map_coordinates(ch, coords, order=1, mode="mirror") for ch in img]).astype(np.float32)
        tgt = ndi.map_coordinates(tgt, coords, order=0, mode="mirror")
        return img, tgt


@functools.lru_cache(maxsize=32)
def _smooth_basis(n: int, spacing: int) -> np.ndarray:
    """``(n, points)`` weights spreading values at control points every ``spacing`` pixels
    smoothly over ``n`` pixels (normalised Gaussians)."""
    points = max(2, n // spacing + 1)
    centres = np.linspace(0, n - 1, points)
    x = np.arange(n)[:, None]
    w = np.exp(-0.5 * ((x - centres[None]) / max((n - 1) / (points - 1), 1.0)) ** 2)
    w = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)
    w.setflags(write=False)
    return w
