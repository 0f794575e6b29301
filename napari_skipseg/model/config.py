"""Model configuration: everything needed to rebuild a network, plus what it expects and means.

A model on disk is a folder with ``config.json`` (this dataclass), ``model.safetensors``
(weights) and ``card.md`` (a human-readable card rendered from ``config.card``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCKS = ("plain", "residual")
OUTPUTS = ("semantic", "instances")


class ModelConfigError(ValueError):
    """A model configuration is malformed or inconsistent."""


@dataclass
class ModelConfig:
    """Architecture, input handling and output meaning of a :class:`SkipUNet`.

    Parameters
    ----------
    name : str
        Short name of the model (``nuclei2d``).
    spatial_dims : int
        2 for a 2D network (applied slice by slice to stacks) or 3 for a 3D network.
    in_channels : int
        Number of input channels the network takes.
    num_classes : int
        Number of output channels (softmax classes).
    base_channels : int
        Width of the first encoder stage; stage ``i`` has ``base_channels * 2**i`` channels.
    depth : int
        Number of downsamplings; the encoder has ``depth + 1`` stages and there are ``depth``
        skip connections.
    block : str
        ``"plain"`` (conv-norm-relu twice) or ``"residual"`` (the same plus an identity
        shortcut, ``F(x) = H(x) + x``).
    pool : list of list of int, optional
        Downsampling factor per level and axis (for anisotropic 3D data, e.g.
        ``[[1, 2, 2], [2, 2, 2]]``). Default: 2 along every axis at every level.
    output : str
        ``"semantic"``: the argmax class is the label. ``"instances"``: classes are
        background, interior, boundary; objects are split by seeded watershed.
    class_names : list of str
        One name per output class.
    normalization : dict
        How an image is scaled before entering the network, e.g.
        ``{"kind": "percentile", "low": 1.0, "high": 99.8}``.
    tile : list of int
        Default tile shape (spatial) for inference.
    postprocess : dict
        Thresholds for instance extraction (``seed``, ``mask``, ``min_size``).
    inference : dict
        Inference defaults: ``flips`` (bool), test-time flips (see
        :func:`napari_skipseg.inference.engine.predict`).
    training_scale : dict
        The scale the network was trained at: ``object_diameter`` (median equivalent
        diameter of its training objects, in pixels/voxels per spatial axis), and where the
        data had one ``pixel_size`` (per spatial axis) with its ``unit`` (e.g. ``"um"``,
        ``"mm"``). Inference resamples an image to it (see
        :mod:`napari_skipseg.inference.scale`). Empty: unknown, images are not resampled.
    card : dict
        Free-form model card: task, data, split, training, metrics, licence.
    """

    name: str = "unnamed"
    spatial_dims: int = 2
    in_channels: int = 1
    num_classes: int = 2
    base_channels: int = 16
    depth: int = 4
    block: str = "residual"
    pool: list[list[int]] | None = None
    output: str = "semantic"
    class_names: list[str] = field(default_factory=list)
    normalization: dict[str, Any] = field(
        default_factory=lambda: {"kind": "percentile", "low": 1.0, "high": 99.8}
    )
    tile: list[int] = field(default_factory=list)
    postprocess: dict[str, Any] = field(default_factory=dict)
    inference: dict[str, Any] = field(default_factory=dict)
    training_scale: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # -- checks -----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ModelConfigError` naming the first problem found."""
        if self.spatial_dims not in (2, 3):
            raise ModelConfigError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        for key in ("in_channels", "num_classes", "base_channels"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ModelConfigError(f"{key} must be a positive integer, got {value!r}")
        if not isinstance(self.depth, int) or not 1 <= self.depth <= 6:
            raise ModelConfigError(f"depth must be an integer from 1 to 6, got {self.depth!r}")
        if self.block not in BLOCKS:
            raise ModelConfigError(f"block must be one of {BLOCKS}, got {self.block!r}")
        if self.output not in OUTPUTS:
            raise ModelConfigError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.output == "instances" and self.num_classes != 3:
            raise ModelConfigError(
                "an 'instances' model predicts background, interior and boundary: "
                f"num_classes must be 3, got {self.num_classes}"
            )
        if self.pool is not None:
            try:
                bad = len(self.pool) != self.depth or any(
                    len(p) != self.spatial_dims or any(int(f) not in (1, 2) for f in p)
                    for p in self.pool
                )
            except (TypeError, ValueError):
                bad = True
            if bad:
                raise ModelConfigError(
                    f"pool must list {self.depth} factors of length {self.spatial_dims}, "
                    f"each 1 or 2; got {self.pool!r}"
                )
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ModelConfigError(
                f"class_names has {len(self.class_names)} names for {self.num_classes} classes"
            )
        if not isinstance(self.inference, dict) or set(self.inference) - {"flips"}:
            raise ModelConfigError(f"inference takes only the key 'flips'; got {self.inference!r}")
        if not isinstance(self.inference.get("flips", False), bool):
            raise ModelConfigError(f"inference flips must be true or false, got {self.inference['flips']!r}")
        if self.tile and len(self.tile) != self.spatial_dims:
            raise ModelConfigError(f"tile must have {self.spatial_dims} sizes, got {self.tile!r}")
        self._validate_training_scale()

    def _validate_training_scale(self) -> None:
        ts = self.training_scale
        if not isinstance(ts, dict) or set(ts) - {"object_diameter", "pixel_size", "unit"}:
            raise ModelConfigError("training_scale takes only the keys object_diameter, pixel_size "
                                   f"and unit; got {ts!r}")
        for key in ("object_diameter", "pixel_size"):
            if key not in ts:
                continue
            v = ts[key]
            ok = (isinstance(v, list) and len(v) == self.spatial_dims
                  and all(isinstance(x, int | float) and not isinstance(x, bool)
                          and math.isfinite(x) and x > 0 for x in v))
            if not ok:
                raise ModelConfigError(f"training_scale {key} must list {self.spatial_dims} positive "
                                       f"numbers (one per spatial axis), got {v!r}")
        if "unit" in ts and not (isinstance(ts["unit"], str) and 0 < len(ts["unit"]) <= 16):
            raise ModelConfigError(f"training_scale unit must be a short string, got {ts['unit']!r}")

    # -- derived ----------------------------------------------------------------------------
    def pool_factors(self) -> list[tuple[int, ...]]:
        """Downsampling factor per level (``depth`` entries, one factor per spatial axis)."""
        if self.pool is None:
            return [(2,) * self.spatial_dims for _ in range(self.depth)]
        return [tuple(int(f) for f in p) for p in self.pool]

    def level_scale(self, level: int) -> tuple[int, ...]:
        """Size, in input pixels along each axis, of one feature pixel at ``level``."""
        scale = [1] * self.spatial_dims
        for factors in self.pool_factors()[:level]:
            scale = [s * f for s, f in zip(scale, factors, strict=True)]
        return tuple(scale)

    def size_multiple(self) -> tuple[int, ...]:
        """Input sizes must be multiples of this (the network pads to it internally)."""
        return self.level_scale(self.depth)

    def channels(self, level: int) -> int:
        return self.base_channels * 2**level

    def default_tile(self) -> list[int]:
        if self.tile:
            return list(self.tile)
        return [256, 256] if self.spatial_dims == 2 else [64, 128, 128]

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if not isinstance(data, dict):
            raise ModelConfigError(f"a model config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelConfigError(f"unknown keys in model config: {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as err:  # wrong types for the dataclass
            raise ModelConfigError(str(err)) from err

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ModelConfigError(f"{path}: not valid JSON ({err})") from err
        try:
            return cls.from_dict(data)
        except ModelConfigError as err:
            raise ModelConfigError(f"{path}: {err}") from err
