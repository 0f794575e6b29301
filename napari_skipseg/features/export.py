"""Writing captured skip features to disk: one OME-TIFF per level and kind, plus index.json."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from .capture import KINDS, FeatureCapture
from .placement import feature_placement

INDEX_FILE = "index.json"


def feature_file_name(level: int, kind: str) -> str:
    return f"L{level}_{kind}.ome.tif"


def write_features(
    capture: FeatureCapture,
    folder: str | os.PathLike,
    *,
    spacing: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    unit: str = "pixel",
    kinds: Sequence[str] = KINDS,
    source: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Write every level's maps as OME-TIFF (axes ``C[Z]YX``) and an ``index.json``.

    Each file's physical pixel size is the image spacing times the level's scale, so the
    maps open at their true size in other tools. ``index.json`` lists, per map, level,
    kind, file, shape, scale (pixel size) and translate (position of the first pixel's
    centre, in the image's physical coordinates, image origin = ``translate``).

    Parameters
    ----------
    spacing, translate : sequence of float, optional
        Pixel size and origin of the image along the model's spatial axes (default 1, 0).
    unit : str
        Unit of ``spacing`` (as in :class:`~napari_skipseg.io.ImageMeta`).
    kinds : sequence of str
        Which of ``encoder``, ``decoder``, ``fused`` to write.
    source : str, optional
        Name or path of the image, recorded in the index.
    overwrite : bool
        Replace existing files; otherwise raise ``FileExistsError``.

    Returns
    -------
    dict
        The index that was written.
    """
    from ..io import ImageMeta, write_image

    folder = Path(folder)
    prepared = capture.input
    d = len(prepared.shape)
    spacing = tuple(float(s) for s in (spacing or (1.0,) * d))
    translate = tuple(float(t) for t in (translate or (0.0,) * d))
    if len(spacing) != d or len(translate) != d:
        raise ValueError(f"spacing {spacing} and translate {translate} need {d} values (the model's spatial axes)")
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown kind(s) {bad}; choose from {KINDS}")
    axes = "C" + "ZYX"[-d:]
    planned = [(rec, kind, folder / feature_file_name(rec.level, kind)) for rec in capture.records for kind in kinds]
    if not overwrite:
        clash = [p for *_, p in planned if p.exists()] + ([folder / INDEX_FILE] if (folder / INDEX_FILE).exists() else [])
        if clash:
            raise FileExistsError(f"{clash[0]}: exists; pass overwrite=True (--overwrite) to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for rec, kind, path in planned:
        scale, offset = feature_placement(rec.scale, spacing, translate, prepared.origin)
        data = rec.maps(kind)
        meta = ImageMeta(axes, (1.0, *scale), unit, name=f"L{rec.level} {kind}")
        write_image(path, data, meta)
        entries.append({
            "level": rec.level, "kind": kind, "file": path.name, "axes": axes,
            "shape": list(data.shape), "dtype": str(data.dtype),
            "level_scale": list(rec.scale), "scale": list(scale), "translate": list(offset),
        })
    index = {
        "format": "napari-skipseg features 1",
        "model": capture.model_name,
        "source": source,
        "unit": unit,
        "image_spacing": list(spacing),
        "image_translate": list(translate),
        "index": list(prepared.index),
        "origin": list(prepared.origin),
        "shape": list(prepared.shape),
        "class_names": list(capture.class_names),
        "maps": entries,
    }
    tmp = folder / f".{INDEX_FILE}.tmp"
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp, folder / INDEX_FILE)
    return index
