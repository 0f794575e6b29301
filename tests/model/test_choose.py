"""choose_model: the default model follows what the image is (axes, voxel size and unit,
file kind), and says why in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_skipseg import default_model_for
from napari_skipseg.io import ImageMeta
from napari_skipseg.model.choose import choose_model, facts_from_meta, model_kind, model_pixel_mm
from napari_skipseg.model.config import ModelConfig
from napari_skipseg.model.store import ModelEntry, list_models


def _entry(name, dims, task, source="bundled", **cfg):
    return ModelEntry(name, Path("/nowhere") / name, source,
                      ModelConfig(name=name, spatial_dims=dims, card={"task": task}, **cfg))


@pytest.fixture
def store():
    """Four models shaped like the bundled ones (cards as they are, no training_scale)."""
    return [
        _entry("em2d", 2, "Serial-section electron microscopy of neural tissue in 2D: cell interior"),
        _entry("hippocampus3d", 3, "Hippocampus in 3D MRI (T1, 1 mm voxels, cropped): anterior and posterior"),
        _entry("nuclei2d", 2, "Fluorescence nuclei in 2D (grey or RGB, dark background): instance labels"),
        _entry("nuclei3d", 3, "Nuclei in 3D fluorescence stacks (voxels about 0.28 x 0.127 x 0.127 um, ZYX)"),
    ]


def test_nifti_mri_volume_gets_the_brain_model(store):
    meta = ImageMeta("ZYX", (1.0, 1.0, 1.0), "millimeter", path="/data/brain.nii.gz", extra={"nifti": {}})
    name, why = choose_model(meta, store, shape=(40, 56, 40))
    assert name == "hippocampus3d"
    assert why == "model hippocampus3d: NIfTI volume with 1 mm voxels, like its training data"


def test_dicom_series_in_mm_is_medical_too(store):
    meta = ImageMeta("ZYX", (2.5, 0.9, 0.9), "millimeter", path="/data/series", extra={"dicom": {}})
    assert choose_model(meta, store, shape=(30, 64, 64))[0] == "hippocampus3d"


def test_microscopy_volume_in_um_gets_nuclei3d(store):
    meta = ImageMeta("ZYX", (0.3, 0.13, 0.13), "micrometer", path="/data/stack.tif")
    name, why = choose_model(meta, store, shape=(40, 128, 128))
    assert name == "nuclei3d"
    assert why.startswith("model nuclei3d: microscopy 3D stack with 0.3 x 0.13 x 0.13 um voxels")
    assert "like its training data" in why


def test_volume_without_units_gets_nuclei3d_and_a_plane_nuclei2d(store):
    assert choose_model(ImageMeta("ZYX"), store, shape=(8, 64, 64))[0] == "nuclei3d"
    assert choose_model(ImageMeta("YX"), store, shape=(64, 64))[0] == "nuclei2d"
    name, why = choose_model(ImageMeta("YXS"), store, shape=(64, 64, 3))
    assert name == "nuclei2d" and "RGB 2D image" in why


def test_time_and_channels_are_not_depth(store):
    # TYX and CYX have two spatial axes: never a 3D model
    assert choose_model(ImageMeta("TYX"), store, shape=(5, 64, 64))[0] == "nuclei2d"
    assert choose_model(ImageMeta("CYX"), store, shape=(3, 64, 64))[0] == "nuclei2d"
    # a 3D model is never offered for an image without Z, even a medical one
    meta = ImageMeta("YX", (1.0, 1.0), "millimeter", path="/x/slice.nii", extra={"nifti": {}})
    assert choose_model(meta, store, shape=(64, 64))[0] in ("nuclei2d", "em2d")
    # a single slice on a Z axis is not a volume
    assert choose_model(ImageMeta("ZYX"), store, shape=(1, 64, 64))[0] == "nuclei2d"


def test_training_scale_beats_the_card_text():
    mri = _entry("mri", 3, "a model", training_scale={"pixel_size": [1.0, 1.0, 1.0], "unit": "mm"})
    cells = _entry("cells", 3, "a model", training_scale={"pixel_size": [0.5, 0.2, 0.2], "unit": "um"})
    assert model_pixel_mm(mri.config) == (1.0, 1.0, 1.0) and model_kind(mri.config) == "medical"
    assert model_kind(cells.config) == "microscopy"
    um = ImageMeta("ZYX", (0.5, 0.2, 0.2), "micrometer")
    mm = ImageMeta("ZYX", (1.2, 0.9, 0.9), "millimeter")
    assert choose_model(um, [mri, cells], shape=(10, 64, 64))[0] == "cells"
    assert choose_model(mm, [cells, mri], shape=(10, 64, 64))[0] == "mri"


def test_models_taking_other_channel_counts_are_skipped():
    two = _entry("two", 2, "two-channel cells", in_channels=2)
    one = _entry("one", 2, "cells", source="user")
    assert choose_model(ImageMeta("YX"), [two, one], shape=(32, 32))[0] == "one"
    assert choose_model(ImageMeta("CYX"), [two, one], shape=(2, 32, 32))[0] == "two"


def test_layer_metadata_dicts_work_too(store):
    stored = {"axes": "ZYX", "spacing": (1.0, 1.0, 1.0), "unit": "millimeter", "path": "/a/b.nii.gz",
              "extra": {"nifti": {}}}
    facts = facts_from_meta(stored, (20, 20, 20))
    assert facts.kind == "medical" and facts.fmt == "NIfTI" and facts.volume
    assert choose_model(facts, store)[0] == "hippocampus3d"


def test_bundled_models_and_default_model_for():
    names = {e.name for e in list_models()}
    if not {"nuclei2d", "nuclei3d", "hippocampus3d"} <= names:
        pytest.skip("the bundled models are not installed")
    mri = ImageMeta("ZYX", (1.0, 1.0, 1.0), "millimeter", path="/x/brain.nii.gz", extra={"nifti": {}})
    assert default_model_for(mri, shape=(40, 40, 40)) == "hippocampus3d"
    assert default_model_for(3) == "nuclei3d"
    assert default_model_for(2) == "nuclei2d"
    assert default_model_for(ImageMeta("TYX")) == "nuclei2d"
    # two 3D nuclei models: the one trained at the image's voxel size
    embryo = ImageMeta("ZYX", (1.75, 0.8, 0.8), "micrometer", path="/x/Emb12_t301.tif")
    plant = ImageMeta("ZYX", (0.28, 0.127, 0.127), "micrometer", path="/x/root.tif")
    assert choose_model(embryo, shape=(51, 128, 128)) == (
        "nuclei3d", "model nuclei3d: microscopy 3D stack with 1.75 x 0.8 x 0.8 um voxels, like its training data")
    assert choose_model(plant, shape=(100, 100, 100))[0] == "nuclei3d_plant"


def test_no_models_is_a_lookup_error():
    with pytest.raises(LookupError):
        choose_model(ImageMeta("YX"), [])
