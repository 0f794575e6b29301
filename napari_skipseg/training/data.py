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


#: Micrometres per unit of the readers' unit names (spacing is compared in micrometres).
UM_PER_UNIT = {"micrometer": 1.0, "um": 1.0, "nanometer": 1e-3, "nm": 1e-3, "millimeter": 1e3, "mm": 1e3,
               "centimeter": 1e4, "cm": 1e4, "meter": 1e6, "m": 1e6}


def check_spacing(spacing, dims: int, what: str = "spacing") -> tuple[float, ...]:
    """``spacing`` as ``dims`` positive finite numbers; ``ValueError`` naming ``what`` otherwise."""
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must list {dims} numbers (um per voxel, one per spatial axis), got {spacing!r}") from None
    if len(values) != dims or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{what} must list {dims} positive numbers (um per voxel, one per spatial axis), got {spacing!r}")
    return values


def file_spacing(meta, dims: int) -> tuple[float, ...] | None:
    """The voxel size (micrometres) of a file's last ``dims`` spatial axes from its metadata,
    or None when the file does not know it (unit ``pixel`` or an unknown unit)."""
    factor = UM_PER_UNIT.get(str(getattr(meta, "unit", "pixel")).lower())
    axes = str(getattr(meta, "axes", ""))
    spacing = list(getattr(meta, "spacing", ()) or ())
    if factor is None or len(spacing) != len(axes):
        return None
    spatial = [sp for ax, sp in zip(axes, spacing, strict=True) if ax in "ZYX"]
    if len(spatial) < dims:
        return None
    return tuple(float(v) * factor for v in spatial[-dims:])


def resample_to_spacing(array: np.ndarray, spacing, target, order: int) -> np.ndarray:
    """Resample the leading ``len(spacing)`` axes of ``array`` from voxel size ``spacing`` to
    ``target`` (``scipy.ndimage.zoom`` with aligned pixel areas; order 1 linear for images,
    0 nearest for labels). Trailing axes (colour) are kept. Returned unchanged when the
    spacings agree."""
    from scipy import ndimage as ndi

    factors = [s / t for s, t in zip(spacing, target, strict=True)]
    if all(abs(f - 1.0) < 1e-6 for f in factors):
        return array
    factors += [1.0] * (array.ndim - len(factors))
    if order:
        array = np.asarray(array, dtype=np.float32)
    return ndi.zoom(np.asarray(array), factors, order=order, mode="nearest", grid_mode=True)


def load_pairs(folder: str | Path, cfg, names: list[str] | None = None, *, spacing=None,
               target_spacing=None) -> list[Sample]:
    """Read ``folder/images/*`` and ``folder/masks/*`` (same file names).

    With ``target_spacing`` (micrometres per voxel, one per spatial axis), each image and
    mask is resampled from its own voxel size to it before anything else (image linearly,
    mask by nearest neighbour): ``spacing`` when given (for files that do not record one),
    else the image file's metadata.

    Raises ``FileNotFoundError``/``ValueError`` naming the file at fault: a missing mask, an
    unreadable (empty, truncated, corrupt) file, an image and mask of different shapes, a
    mask that does not hold whole-number labels, or (with ``target_spacing``) an image
    whose voxel size is unknown.
    """
    from ..io import read_image

    folder = Path(folder)
    img_dir, mask_dir = folder / "images", folder / "masks"
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise FileNotFoundError(f"{folder}: needs 'images' and 'masks' subfolders")
    dims = cfg.spatial_dims
    if target_spacing is not None:
        target_spacing = check_spacing(target_spacing, dims, "target_spacing")
    if spacing is not None:
        spacing = check_spacing(spacing, dims, f"{folder.name}: spacing")
    names = names if names is not None else sorted(p.name for p in img_dir.iterdir() if p.is_file())
    samples = []
    for name in names:
        mask_path = mask_dir / name
        if not mask_path.exists():
            raise FileNotFoundError(f"{mask_path}: no mask for image {name}")
        raw, meta = read_image(img_dir / name)
        own = None
        if target_spacing is not None:
            own = spacing or file_spacing(meta, dims)
            if own is None:
                raise ValueError(f"{img_dir / name}: the file records no voxel size; give the folder "
                                 f"{folder.name!r} a spacing in the recipe's 'folders'")
            raw = np.asarray(raw)
            raw_shape = raw.shape[:dims]
            raw = resample_to_spacing(raw, own, target_spacing, order=1)
        try:
            image = prepare_image(raw, cfg.in_channels, cfg.spatial_dims, cfg.normalization)
        except ValueError as err:
            raise ValueError(f"{img_dir / name}: {err}") from err
        mask = check_mask(read_image(mask_path)[0], str(mask_path))
        if own is not None:
            if mask.shape != raw_shape:
                raise ValueError(f"{name}: image {raw_shape} and mask {mask.shape} differ in shape "
                                 "(the mask must label every pixel of the image)")
            mask = resample_to_spacing(mask, own, target_spacing, order=0)
        if mask.shape != image.shape[1:]:
            raise ValueError(
                f"{name}: image {image.shape[1:]} and mask {mask.shape} differ in shape "
                "(the mask must label every pixel of the image)"
            )
        target = make_target(mask, cfg.output, cfg.num_classes)
        instances = mask if cfg.output == "instances" else None
        samples.append(Sample(name, image, target, instances))
    return samples


def split_groups(names: list[str], val_fraction: float = 0.15, pattern: str | None = None,
                 seed: str = "skipseg") -> tuple[list[str], list[str], dict[str, str]]:
    """Split by group: files whose names share a group (the first capture group of the
    regular expression ``pattern``, searched in the name, or its whole match) land on the
    same side; the groups are split by :func:`split_names`. A name the pattern does not
    match is a group of its own. ``pattern`` None: every file its own group (the plain
    :func:`split_names`). Returns ``(train, validation, group of each name)``."""
    import re

    if pattern is None:
        groups = {n: n for n in names}
    else:
        try:
            rx = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"split_group {pattern!r} is not a regular expression ({err})") from None
        groups = {}
        for n in names:
            m = rx.search(n)
            groups[n] = n if m is None else (m.group(1) if rx.groups and m.group(1) is not None else m.group(0))
    train_g, val_g = split_names(sorted(set(groups.values())), val_fraction, seed)
    val_set = set(val_g)
    val = sorted(n for n in names if groups[n] in val_set)
    train = sorted(n for n in names if groups[n] not in val_set)
    return train, val, groups


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

    ``zoom`` (with ``augment``): ``(low, high)`` range of a random scale change drawn
    log-uniformly for each patch, independently per axis (one factor for all axes with
    ``zoom_isotropic``). A crop of ``patch / zoom`` pixels is resampled to the patch (image
    linearly, target by nearest neighbour, IGNORE kept), so a zoom of 2 shows objects twice
    as large. ``None``: no scale change, and the random draws are those without it.
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
        zoom: tuple[float, float] | None = None,
        zoom_isotropic: bool = False,
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
        self.zoom = check_zoom(zoom)
        self.zoom_isotropic = bool(zoom_isotropic)
        weights = np.array([max(s.target.size, 1) for s in samples], dtype=float) ** 0.5
        self.weights = weights / weights.sum()
        self._fg = [np.flatnonzero(s.target.ravel() > 0) for s in samples]

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        i = rng.choice(len(self.samples), p=self.weights)
        s = self.samples[i]
        spatial = s.target.shape
        crop = self.patch
        if self.augment and self.zoom is not None:
            crop = zoom_crop(self.patch, self._draw_zoom())
        if self._fg[i].size and rng.random() < self.fg_bias:
            centre = np.unravel_index(self._fg[i][rng.integers(self._fg[i].size)], spatial)
            start = [int(c) - p // 2 for c, p in zip(centre, crop, strict=True)]
        else:
            start = [int(rng.integers(0, max(n - p, 0) + 1)) for n, p in zip(spatial, crop, strict=True)]
        start = [min(max(st, 0), max(n - p, 0)) for st, n, p in zip(start, spatial, crop, strict=True)]
        sl = tuple(slice(st, st + p) for st, p in zip(start, crop, strict=True))
        img = s.image[(slice(None), *sl)]
        tgt = s.target[sl]
        if img.shape[1:] != crop:
            pad = [(0, p - n) for n, p in zip(tgt.shape, crop, strict=True)]
            img = np.pad(img, [(0, 0), *pad])
            tgt = np.pad(tgt, pad, constant_values=IGNORE)
        if crop != self.patch:
            img, tgt = resample_patch(img, tgt, self.patch)
        if self.augment:
            img, tgt = self._augment(img, tgt)
        return np.ascontiguousarray(img, dtype=np.float32), np.ascontiguousarray(tgt)

    def _draw_zoom(self) -> tuple[float, ...]:
        """Zoom factors per spatial axis, log-uniform in ``self.zoom``."""
        lo, hi = np.log(self.zoom[0]), np.log(self.zoom[1])
        if self.zoom_isotropic:
            return (float(np.exp(self.rng.uniform(lo, hi))),) * len(self.patch)
        return tuple(float(np.exp(v)) for v in self.rng.uniform(lo, hi, len(self.patch)))

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


def check_zoom(zoom) -> tuple[float, float] | None:
    """``zoom`` as ``(low, high)`` with ``0 < low <= high`` (or None); ``ValueError`` otherwise."""
    if zoom is None:
        return None
    try:
        lo, hi = (float(z) for z in zoom)
    except (TypeError, ValueError):
        raise ValueError(f"zoom must be null or [low, high] (for example [0.5, 2.0]), got {zoom!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi):
        raise ValueError(f"zoom must be [low, high] with 0 < low <= high, got {zoom!r}")
    return lo, hi


def zoom_crop(patch: tuple[int, ...], zoom: tuple[float, ...]) -> tuple[int, ...]:
    """The crop size that, resampled to ``patch``, scales its content by about ``zoom``."""
    return tuple(max(1, int(round(p / z))) for p, z in zip(patch, zoom, strict=True))


def resample_patch(img: np.ndarray, tgt: np.ndarray, patch: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Resample a ``(C, *crop)`` image linearly and its ``crop`` target by nearest neighbour
    to ``patch`` (pixel areas aligned: ``scipy.ndimage.zoom`` with ``grid_mode``). Target
    values come only from the input's (IGNORE included)."""
    from scipy import ndimage as ndi

    factors = [p / n for p, n in zip(patch, tgt.shape, strict=True)]
    img = np.stack([ndi.zoom(np.asarray(ch, dtype=np.float32), factors, order=1, mode="nearest", grid_mode=True)
                    for ch in img])
    tgt = ndi.zoom(np.asarray(tgt), factors, order=0, mode="nearest", grid_mode=True)
    if img.shape[1:] != tuple(patch) or tgt.shape != tuple(patch):  # rounding in ndi.zoom's output shape
        raise AssertionError(f"resampled patch {tgt.shape} is not {tuple(patch)}")
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
