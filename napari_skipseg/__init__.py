"""napari-skipseg: UNet segmentation of image stacks in napari, with every skip connection visible.

The public API is imported lazily, so ``import napari_skipseg`` does not import torch::

    import napari_skipseg as ss
    model = ss.load_model("nuclei2d")
    labels = ss.segment(image, model=model, output="instances")
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["default_model_for", "finetune", "import_model", "list_models", "load_model", "segment",
           "skip_features"]


def load_model(name_or_path="nuclei2d", device: str = "cpu"):
    """The torch module of a bundled or stored model (by name or folder), in eval mode."""
    from .model.store import load_model as _load

    return _load(name_or_path, device=device)


def import_model(module, name: str, **kwargs):
    """Store a network trained elsewhere as a model; returns its folder.

    ``module``: a network instance (``arch_args=`` the keyword arguments it was built with),
    a weights file (``arch=`` its class, e.g. ``"monai.networks.nets.BasicUNet"``, and
    ``arch_args=``), or a TorchScript / torch.export program file. Its skip connections are
    found by tracing (or named with ``skips=``). Other keyword arguments: ``normalization``
    (``"percentile"``/``"none"``), ``axes`` (``"yx"``/``"zyx"``), ``classes``, ``overwrite``;
    see :func:`napari_skipseg.model.foreign.import_model`.
    """
    from .model.foreign import import_model as _import

    return _import(module, name=name, **kwargs)


def list_models():
    """Models that can be used: bundled ones and the user's."""
    from .model.store import list_models as _list

    return _list()


def segment(image, model="nuclei2d", output: str | None = None, channel_axis=None, *, axes: str | None = None,
            channel: int | None = None, link: bool = False, **kwargs):
    """Segment ``image`` (numpy/dask/zarr) and return a numpy array.

    ``output`` is ``"instances"``, ``"semantic"`` (label images shaped like the image without
    its channel axis) or ``"probabilities"`` (``(classes, *shape)`` float32); default: what
    the model predicts. ``axes`` names the image's axes (``"TZYX"``, ``"CYX"``, ...; letters
    TCZYXS): T is then segmented frame by frame (never as depth), ``channel`` picks one
    channel of a C axis (required when there are several and the model takes one), ``link``
    gives objects the same id in consecutive frames, and the result keeps the image's axis
    order. Without ``axes`` the leading axes before the model's spatial ones are slices and
    ``channel_axis`` marks channels, as for :func:`napari_skipseg.inference.engine.predict`.
    Other keyword arguments go to ``predict`` (``mode``, ``tile``, ``overlap``,
    ``batch_size``, ``device``, ``flips`` ...).
    """
    from .inference.engine import predict, run

    if isinstance(model, str) or hasattr(model, "__fspath__"):
        model = load_model(model)
    cfg = model.config
    output = output or ("instances" if cfg.output == "instances" else "semantic")
    if axes is None:
        if channel is not None or link:
            raise ValueError("channel= and link= need the image's axes (axes='TCZYX' letters)")
        result = run(predict(model, image, output=output, channel_axis=channel_axis, **kwargs))
        return result.probabilities if output == "probabilities" else result.labels
    from .inference.axes import arrange, link_frames, parse_axes
    from .io import ImageMeta

    if channel_axis is not None:
        raise ValueError("give either axes= or channel_axis=, not both")
    meta = ImageMeta(parse_axes(axes, image.shape))
    mode = kwargs.get("mode", "auto")
    a = arrange(image, meta, spatial_dims=cfg.spatial_dims if mode == "auto" else int(mode[0]),
                in_channels=cfg.in_channels, channel=channel, model_name=cfg.name)
    result = run(predict(model, a.image, output=output, channel_axis=a.channel_axis, **kwargs))
    if output == "probabilities":
        return a.to_file_order(result.probabilities, leading=1)
    if link and "T" in a.lead_axes:
        link_frames(result.labels, a.axes.index("T"))
    return a.to_file_order(result.labels)


def skip_features(model, image, channel_axis=None, **kwargs):
    """What crosses every skip connection of ``model`` for ``image``: one record per level.

    ``model`` is a SkipUNet, a model name or folder, or a
    :class:`~napari_skipseg.features.HookedFeatures` wrapping any UNet-shaped torch module.
    Each :class:`~napari_skipseg.features.SkipRecord` has ``level``, ``scale`` (input pixels
    per feature pixel), and float32 ``encoder``, ``decoder`` and ``fused`` arrays shaped
    ``(channels, *spatial)``. A 2D model runs on one slice (``index=`` picks it, default the
    middle), a 3D model on a block (``center=``, ``block=``); other keyword arguments go to
    :func:`napari_skipseg.features.capture_features` (``device``, ``ablate``).
    """
    from .features import skip_features as _skip_features

    return _skip_features(model, image, channel_axis=channel_axis, **kwargs)


def finetune(model, images, labels, reviewed=None, *, save: bool = True, rgb: bool = False,
             device: str = "auto", **options):
    """Fine-tune ``model`` on corrected ``labels`` of ``images`` and (``save``) store the result
    as a new version ``<model>-ft-<N>``; returns a
    :class:`~napari_skipseg.training.finetune.FinetuneResult` (``.path``, ``.accepted``,
    ``.before``, ``.after``).

    ``images``/``labels``: one array each, or lists of them. ``reviewed``: the reviewed slice
    indices of a stack (None: all), or a list of those per image. ``options`` are
    :class:`~napari_skipseg.training.finetune.FinetuneOptions` fields (``steps``,
    ``time_budget``, ``lr``, ``train``, ``augment``, ``num_classes`` ...). The version becomes
    the active model when it beats the starting one on held-out reviewed data.
    """
    from .training.finetune import Annotated, FinetuneOptions, run_finetune, save_version

    if not isinstance(images, (list, tuple)):
        images, labels, reviewed = [images], [labels], [reviewed]
    elif reviewed is None:
        reviewed = [None] * len(images)
    data = [Annotated(im, lab, rev, name=f"image {i}", rgb=rgb)
            for i, (im, lab, rev) in enumerate(zip(images, labels, reviewed, strict=True))]
    result = run_finetune(model, data, FinetuneOptions(**options), device=device)
    if save:
        save_version(result, data)
    return result


def default_model_for(meta_or_ndim, shape=None) -> str:
    """Name of the stored model that suits an image best (see
    :func:`napari_skipseg.model.choose.choose_model`, which also says why).

    ``meta_or_ndim``: the image's ``ImageMeta`` (axes, spacing, unit, file kind), a napari
    layer's ``metadata["skipseg"]`` dict, or a number of spatial axes (2 or 3).
    """
    from .model.choose import choose_model

    try:
        return choose_model(meta_or_ndim, shape=shape)[0]
    except LookupError:
        return "nuclei2d"
