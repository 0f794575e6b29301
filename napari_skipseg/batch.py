"""Segmenting files: one input file (or DICOM/zarr folder) to one output, in any format.

Shared by ``skipseg segment`` and :mod:`napari_skipseg.distributed`. No Qt, napari or torch
import at module level.

Output formats, chosen by the output's suffix:

- ``.zarr``: OME-Zarr, **streamed**: each finished slice or block is written to disk at once,
  so memory stays bounded by the block, tile and batch sizes whatever the stack's size;
- the input OME-Zarr itself: the labels are written next to the image, as
  ``labels/<name>`` (OME-NGFF labels), streamed too;
- ``.nii``/``.nii.gz``: NIfTI with the input's affine (NIfTI or DICOM inputs), written slice by
  slice from a temporary zarr store when the result is large;
- ``.tif``/``.tiff``: OME-TIFF (the result is held in memory).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

#: Results larger than this many bytes are predicted into a temporary zarr store first
#: when the output is NIfTI, and then copied slice by slice.
STREAM_BYTES = 512 * 2**20
OUTPUT_SUFFIXES = (".tif", ".tiff", ".nii", ".nii.gz", ".zarr")


class BatchError(ValueError):
    """A file cannot be segmented as asked; the message names the file."""


def _real(path: str | os.PathLike) -> str:
    """The absolute path with every symlink followed (for a path that does not exist yet,
    those of its existing parents), normalised for comparison."""
    return os.path.normcase(os.path.realpath(os.path.abspath(os.fspath(path))))


def _inside(path: str, folder: str) -> bool:
    """Whether real path `path` lies strictly inside real path `folder`."""
    return path != folder and path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output(dst: str | os.PathLike, inputs: Sequence[str | os.PathLike], *,
                 may_be_inside: str | os.PathLike | None = None) -> None:
    """Refuse an output that would write over, replace or land inside an input.

    Every command that writes calls this before anything is written. Paths are compared
    as real paths (symlinks followed, also of parents), so a link to an input is the input.

    Parameters
    ----------
    dst : path-like
        What will be written or replaced: a file, or a folder (a zarr store, an OME-Zarr
        ``labels/<name>`` group) that is replaced whole.
    inputs : sequence of path-like
        Everything read: files, image folders (zarr stores, DICOM series) and folders of
        images named on the command line.
    may_be_inside : path-like, optional
        One input that `dst` may lie inside: the OME-Zarr image whose ``labels/<name>`` is
        written next to it.

    Raises
    ------
    BatchError
        If `dst` is an input, holds an input (a folder or store replaced with its
        contents), or lies inside an input folder or store; the message names both.
    """
    out = _real(dst)
    allowed = None if may_be_inside is None else _real(may_be_inside)
    for src in inputs:
        real = _real(src)
        if out == real:
            raise BatchError(f"{dst}: the output is the input {src}; choose another output")
        if _inside(real, out):
            raise BatchError(f"{dst}: the output holds the input {src} and would replace it; "
                             "choose another output")
        if _inside(out, real) and real != allowed:
            raise BatchError(f"{dst}: the output lies inside the input {src}; choose an output outside it")


@dataclass
class FileJob:
    """One input and where its result goes.

    ``labels_name`` set means: write the result into the input OME-Zarr as
    ``labels/<labels_name>`` (``dst`` is then the input itself).
    """

    src: Path
    dst: Path
    labels_name: str | None = None

    @property
    def written(self) -> Path:
        """What the job writes or replaces: ``dst``, or the input's ``labels/<labels_name>``."""
        return Path(self.src) / "labels" / self.labels_name if self.labels_name else Path(self.dst)

    def check(self, inputs: Sequence[str | os.PathLike] = ()) -> None:
        """Refuse the job when what it writes is, holds or lies inside its input or one of
        `inputs` (:func:`check_output`); labels may go inside their own input OME-Zarr."""
        check_output(self.written, [self.src, *inputs],
                     may_be_inside=self.src if self.labels_name else None)


def output_suffix(path: str | os.PathLike) -> str:
    name = os.fspath(path).rstrip("/\\").lower()
    return next((s for s in sorted(OUTPUT_SUFFIXES, key=len, reverse=True) if name.endswith(s)), "")


def open_source(src: str | os.PathLike, channel: int | None = None, config: Any = None,
                mode: str = "auto") -> tuple[Any, Any, int | None]:
    """Open `src` lazily for segmentation: ``(image, meta, channel_axis)``, the image in the
    engine's axis order (see :func:`arrange_source`; ``meta`` describes that order)."""
    a = arrange_source(src, channel, config, mode)
    return a.image, a.meta, a.channel_axis


def arrange_source(src: str | os.PathLike, channel: int | None = None, config: Any = None,
                   mode: str = "auto"):
    """Open `src` lazily and bring it into the engine's axis order for a model of `config`
    (:func:`napari_skipseg.inference.axes.arrange`): T before Z, channels last.

    With `channel`, that channel of a multi-channel image is taken (lazily). With `config`,
    a 3D model on an image without Z, and several channels for a single-channel model without
    `channel`, are refused (:class:`BatchError` naming the file); without it, channels are
    kept as they are.
    """
    from .inference.axes import AxesError, arrange
    from .io import read_image

    image, meta = read_image(src, lazy=True)
    if config is None:
        c = meta.channel_axis
        dims, in_channels, name = None, (image.shape[c] if c is not None else 1), ""
    else:
        dims = config.spatial_dims if mode in (None, "auto") else int(mode[0])
        in_channels, name = config.in_channels, config.name
    try:
        return arrange(image, meta, spatial_dims=dims, in_channels=in_channels, channel=channel, model_name=name)
    except AxesError as err:
        message = str(err).replace("channel ", "--channel ", 1) if channel is not None else str(err)
        raise BatchError(f"{src}: {message}") from err


def result_meta(meta: Any, output: str) -> Any:
    """Metadata of the result: the input's without channels; probabilities get a C axis."""
    out = meta.without_channels()
    if output == "probabilities":
        out = replace(out, axes="C" + out.axes, spacing=(1.0, *out.spacing))
    return out


def create_target(job: FileJob, shape: tuple[int, ...], dtype: Any, meta: Any, chunks: tuple[int, ...],
                  overwrite: bool, label: bool, class_names=None):
    """A :class:`~napari_skipseg.io.zarr_io.ZarrTarget` for a zarr output (or labels next to
    the input image); ``class_names``: semantic labels' classes (NGFF label properties)."""
    from .io.zarr_io import create_labels, create_ome_zarr

    try:
        if job.labels_name:
            return create_labels(job.src, job.labels_name, shape, dtype, meta, chunks=chunks, overwrite=overwrite,
                                 class_names=class_names)
        return create_ome_zarr(job.dst, shape, dtype, meta, chunks=chunks, overwrite=overwrite, label=label,
                               class_names=class_names)
    except FileExistsError as err:
        raise BatchError(f"{err}".replace("overwrite=True", "--overwrite")) from err


def segment_file(job: FileJob, model: Any, options: dict, *, overwrite: bool = False, drive=None) -> dict:
    """Segment one file and write the result; returns a summary dict.

    Parameters
    ----------
    job : FileJob
    model : SkipUNet
        A loaded model.
    options : dict
        ``predict`` options (``mode``, ``output``, ``tile``, ``overlap``, ``batch_size``,
        ``device``, ``block``) and ``channel``.
    drive : callable, optional
        ``drive(generator) -> result`` (a progress bar); default
        :func:`napari_skipseg.inference.engine.run`.
    """
    from .inference.axes import link_frames, size_options
    from .inference.engine import SegmentationError, plan, predict, run
    from .io import write_image

    drive = drive or run
    job.check()
    opts = dict(options)
    channel = opts.pop("channel", None)
    link = opts.pop("link", False)
    cfg = model.config
    arranged = arrange_source(job.src, channel, cfg, opts.get("mode", "auto"))
    image, meta, channel_axis = arranged.image, arranged.meta, arranged.channel_axis
    spacing = opts.pop("spacing", None)
    opts.update(size_options(predict, diameter=opts.pop("diameter", None),
                             spacing=tuple(spacing) if spacing is not None else arranged.spatial_spacing,
                             unit=meta.unit))
    output = opts.get("output", "instances")
    geo = plan(cfg, tuple(image.shape), channel_axis=channel_axis, mode=opts.get("mode", "auto"),
               tile=opts.get("tile"), block=opts.get("block"), overlap=opts.get("overlap", 0.125))
    out_meta = result_meta(meta, output)
    classes = cfg.num_classes
    if output == "probabilities":
        shape, dtype, chunks = (classes, *geo["shape"]), np.float32, (1, *geo["chunks"])
    else:
        shape, dtype, chunks = geo["shape"], np.uint32 if output == "instances" else np.uint8, geo["chunks"]
    suffix = ".zarr" if job.labels_name else output_suffix(job.dst)
    big = int(np.prod(shape)) * np.dtype(dtype).itemsize > STREAM_BYTES
    target = tmp_dir = None
    if suffix == ".zarr":
        target = create_target(job, shape, dtype, out_meta, chunks, overwrite, label=output != "probabilities",
                               class_names=list(cfg.class_names or []) if output == "semantic" else None)
    elif suffix in (".nii", ".nii.gz") and big:
        from .io.zarr_io import clean_stale_temporaries, create_ome_zarr, temporary_name

        clean_stale_temporaries(os.path.dirname(os.path.abspath(job.dst)))
        tmp_dir = temporary_name(job.dst)
        os.makedirs(tmp_dir)
        target = create_ome_zarr(os.path.join(tmp_dir, "result.zarr"), shape, dtype, out_meta, chunks=chunks)
    kwargs: dict[str, Any] = {}
    if target is not None:
        kwargs["probabilities_out" if output == "probabilities" else "labels_out"] = target.array
    try:
        try:
            result = drive(predict(model, image, channel_axis=channel_axis, **opts, **kwargs))
        except SegmentationError as err:
            raise BatchError(f"{job.src}: {err}") from err
        except (OSError, RuntimeError, ValueError) as err:  # e.g. a damaged chunk met while reading
            if str(job.src) in str(err):
                raise
            raise BatchError(f"{job.src}: cannot be segmented ({type(err).__name__}: {err})") from err
        data = result.probabilities if output == "probabilities" else result.labels
        linked = None
        if link and output != "probabilities" and "T" in arranged.lead_axes:
            linked = link_frames(data, arranged.axes.index("T"))  # frame by frame, in place
        if target is not None and tmp_dir is None:
            written = target.commit()
        else:
            Path(job.dst).parent.mkdir(parents=True, exist_ok=True)
            if not arranged.identity:  # back into the file's own axis order
                data = arranged.to_file_order(data, leading=1 if output == "probabilities" else 0)
                out_meta = result_meta(_file_order_meta(meta, arranged), output)
            written = write_image(job.dst, data, out_meta)
    except BaseException:
        if target is not None:
            target.abort()
        raise
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return {"src": str(job.src), "dst": str(written), "model": cfg.name, "device": result.device,
            "seconds": result.seconds, "objects": result.info.get("objects") if linked is None else linked,
            "shape": tuple(shape), "axes": arranged.describe(), "scale_message": result.info.get("scale_message")}


def _file_order_meta(meta: Any, arranged: Any) -> Any:
    """``meta`` (engine order, channels last) without channels, in the source's axis order."""
    plain = meta.without_channels()
    back = [arranged.order.index(i) for i in range(len(arranged.order))]
    return replace(plain, axes="".join(plain.axes[i] for i in back), spacing=tuple(plain.spacing[i] for i in back))
