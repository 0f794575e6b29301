"""Which stored model suits an image: compare what the image is with what each model was
trained on.

:func:`choose_model` looks at the image's axes (a Z axis or not; T and C are never depth),
its voxel size and unit, the kind of file (NIfTI and DICOM are medical scans, TIFF/zarr in
micrometres are microscopy) and its channels, and at each model's config: ``spatial_dims``,
``in_channels``, ``training_scale`` (``pixel_size``, ``unit``) and the card's task text. It
returns the best model's name and one line saying why. No Qt, napari or torch here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

#: Length units -> millimetres.
_MM = {"nanometer": 1e-6, "nm": 1e-6, "micrometer": 1e-3, "micron": 1e-3, "um": 1e-3, "µm": 1e-3,
       "μm": 1e-3, "millimeter": 1.0, "mm": 1.0, "centimeter": 10.0, "cm": 10.0, "meter": 1e3, "m": 1e3}
_SHORT = {"nanometer": "nm", "micrometer": "um", "millimeter": "mm", "centimeter": "cm", "meter": "m"}
#: Below this voxel size (mm) an image is microscopy, above it a medical scan.
_MICROSCOPY_MM = 0.05
_MEDICAL_WORDS = ("mri", "ct ", " ct", "medical", "scan", "radiolog", "t1", "t2", "hippocamp", "brain", "organ")
_MICROSCOPY_WORDS = ("microscop", "fluoresc", "nuclei", "nucleus", "cell", "electron", "em ", "histolog",
                     "stain", "tissue")


@dataclass
class ImageFacts:
    """What :func:`choose_model` needs to know about an image.

    ``axes``: its axis letters (TCZYXS); ``shape``; ``spacing`` per axis and ``unit``;
    ``kind``: ``"medical"`` (NIfTI, DICOM), ``"microscopy"`` or ``""`` (unknown); ``fmt``:
    a word for the file kind ("NIfTI", "DICOM", "TIFF", ...).
    """

    axes: str
    shape: tuple[int, ...] = ()
    spacing: tuple[float, ...] = ()
    unit: str = "pixel"
    kind: str = ""
    fmt: str = ""

    @property
    def spatial(self) -> str:
        return "".join(a for a in self.axes if a in "ZYX")

    @property
    def volume(self) -> bool:
        """A Z axis with more than one slice."""
        if "Z" not in self.axes:
            return False
        return not self.shape or self.shape[self.axes.index("Z")] > 1

    @property
    def channels(self) -> int:
        if "C" in self.axes and self.shape:
            return int(self.shape[self.axes.index("C")])
        if "S" in self.axes:
            return 3
        return 1

    def spatial_mm(self) -> tuple[float, ...] | None:
        """Voxel size along Z/Y/X in millimetres, or None when the unit is not a length."""
        factor = _MM.get(self.unit.lower()) if self.unit else None
        if factor is None or len(self.spacing) != len(self.axes):
            return None
        return tuple(s * factor for a, s in zip(self.axes, self.spacing, strict=True) if a in "ZYX")


def facts_from_meta(meta, shape: Sequence[int] | None = None) -> ImageFacts:
    """:class:`ImageFacts` of an image read with :func:`napari_skipseg.io.read_image` (its
    ``ImageMeta``), or of a napari layer's ``metadata["skipseg"]`` dict."""
    get = meta.get if isinstance(meta, dict) else lambda k, d=None: getattr(meta, k, d)
    axes = get("axes") or ""
    extra = get("extra") or {}
    path = str(get("path") or "").lower().rstrip("/\\")
    fmt, kind = "", ""
    if "nifti" in extra or path.endswith((".nii", ".nii.gz")):
        fmt, kind = "NIfTI", "medical"
    elif "dicom" in extra or path.endswith(".dcm"):
        fmt, kind = "DICOM", "medical"
    elif "ome_zarr" in extra or path.endswith(".zarr"):
        fmt = "OME-Zarr"
    elif path.endswith((".tif", ".tiff")):
        fmt = "TIFF"
    facts = ImageFacts(axes, tuple(int(s) for s in shape) if shape is not None else (),
                       tuple(float(s) for s in (get("spacing") or ())), str(get("unit") or "pixel"), kind, fmt)
    if not facts.kind:
        mm = facts.spatial_mm()
        if mm:
            facts.kind = "microscopy" if max(mm) < _MICROSCOPY_MM else "medical"
    return facts


def model_pixel_mm(config) -> tuple[float, ...] | None:
    """The pixel size a model was trained at, in mm per spatial axis: from
    ``training_scale`` (``pixel_size`` + ``unit``), else read from its card's task text
    (``"1 mm voxels"``, ``"0.28 x 0.127 x 0.127 um"``)."""
    ts = getattr(config, "training_scale", None) or {}
    if ts.get("pixel_size") and ts.get("unit") and ts["unit"].lower() in _MM:
        f = _MM[ts["unit"].lower()]
        return tuple(float(v) * f for v in ts["pixel_size"])
    text = str((config.card or {}).get("task", ""))
    m = re.search(r"(\d+(?:\.\d+)?(?:\s*x\s*\d+(?:\.\d+)?)*)\s*(nm|um|µm|μm|mm|cm)\b", text)
    if not m:
        return None
    values = [float(v) for v in re.split(r"\s*x\s*", m.group(1))]
    if len(values) == 1:
        values = values * config.spatial_dims
    if len(values) != config.spatial_dims:
        return None
    return tuple(v * _MM[m.group(2)] for v in values)


def model_kind(config) -> str:
    """``"medical"``, ``"microscopy"`` or ``""``: from the training pixel size, else the card."""
    mm = model_pixel_mm(config)
    if mm:
        return "microscopy" if max(mm) < _MICROSCOPY_MM else "medical"
    text = " " + str((config.card or {}).get("task", "")).lower() + " "
    if any(w in text for w in _MEDICAL_WORDS):
        return "medical"
    if any(w in text for w in _MICROSCOPY_WORDS):
        return "microscopy"
    return ""


def choose_model(image, models=None, shape: Sequence[int] | None = None) -> tuple[str, str]:
    """The model that suits ``image`` best, and why, in one line.

    Parameters
    ----------
    image : ImageFacts, ImageMeta, dict or int
        What is known of the image; an int is a number of spatial axes (2 or 3).
    models : sequence of ModelEntry, optional
        The candidates (default: :func:`napari_skipseg.model.store.list_models`).
    shape : sequence of int, optional
        The image's shape (with an ``ImageMeta`` or dict).

    Returns
    -------
    (str, str)
        The model's name and the reason, e.g. ``("hippocampus3d", "model hippocampus3d:
        NIfTI volume with 1 mm voxels, like its training data")``.

    Raises
    ------
    LookupError
        If there is no model to choose from.
    """
    if models is None:
        from .store import list_models

        models = list_models()
    models = list(models)
    if not models:
        raise LookupError("no models are installed")
    if isinstance(image, int):
        facts = ImageFacts("ZYX" if image >= 3 else "YX")
    elif isinstance(image, ImageFacts):
        facts = image
    else:
        facts = facts_from_meta(image, shape)
    scored = [(_score(facts, e), i, e) for i, e in enumerate(models)]
    scored.sort(key=lambda t: (-t[0][0], t[1]))
    (_, why), _, best = scored[0]
    return best.name, f"model {best.name}: {why}"


def _score(facts: ImageFacts, entry) -> tuple[float, str]:
    cfg = entry.config
    score = 0.0
    if cfg.spatial_dims == 3 and "Z" not in facts.axes:
        return -100.0, "the image has no Z axis"
    if cfg.in_channels > 1 and cfg.in_channels != facts.channels:
        return -50.0, f"it takes {cfg.in_channels} channels"
    if facts.volume:
        score += 4 if cfg.spatial_dims == 3 else 1
    else:
        score += 4 if cfg.spatial_dims == 2 else 0
    mkind = model_kind(cfg)
    if facts.kind and mkind:
        score += 3 if facts.kind == mkind else -3
    size_word = ""
    mm, model_mm = facts.spatial_mm(), model_pixel_mm(cfg)
    if mm and model_mm:
        img = mm[-cfg.spatial_dims:] if len(mm) >= cfg.spatial_dims else None
        if img is not None:
            ratio = max(abs(math.log(a / b)) for a, b in zip(img, model_mm, strict=True))
            if ratio <= math.log(2.0):
                score += 2
                size_word = "like its training data"
            elif ratio > math.log(20.0):
                score -= 2
    if entry.source == "bundled":
        score += 0.5  # a bundled model before the user's copies of it, when they tie
    if entry.name in ("nuclei2d", "nuclei3d"):
        score += 0.25  # the general-purpose defaults, when nothing else decides
    return score, _reason(facts, cfg, size_word)


def _reason(facts: ImageFacts, cfg, size_word: str) -> str:
    what = f"{facts.fmt} " if facts.fmt in ("NIfTI", "DICOM") else ""
    if facts.volume:
        what += "3D time-lapse" if "T" in facts.axes else ("volume" if facts.kind == "medical" or what else "3D stack")
    else:
        what += ("RGB " if "S" in facts.axes else "") + ("2D image" if "T" not in facts.axes else "2D time-lapse")
    if facts.kind == "microscopy" and not facts.fmt.startswith(("NIfTI", "DICOM")):
        what = "microscopy " + what
    mm = facts.spatial_mm()
    if mm:
        unit = _SHORT.get(facts.unit.lower(), facts.unit)
        sizes = [s for a, s in zip(facts.axes, facts.spacing, strict=True) if a in "ZYX"]
        size = f"{sizes[0]:g}" if len(set(sizes)) == 1 else " x ".join(f"{s:.3g}" for s in sizes)
        what += f" with {size} {unit} {'voxels' if facts.volume else 'pixels'}"
    if size_word:
        return f"{what}, {size_word}"
    task = str(cfg.card.get("task", "")).split(":")[0].split(". ")[0].strip()
    task = task[:1].lower() + task[1:] if task else f"a {cfg.spatial_dims}D {cfg.output} model"
    if facts.volume and cfg.spatial_dims == 2:
        return f"{what}; trained on {task}, run on each slice"
    return f"{what}; trained on {task}"
