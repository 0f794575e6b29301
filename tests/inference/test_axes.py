"""inference.axes: named axes into the engine's order and back; linking ids over time."""

from __future__ import annotations

import numpy as np
import pytest

from napari_skipseg.inference.axes import (
    AxesError,
    ChannelChoiceNeeded,
    arrange,
    guess_axes,
    link_frames,
    parse_axes,
    size_options,
)
from napari_skipseg.io import ImageMeta


def _img(shape):
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)


def test_tzyx_3d_keeps_t_in_front_and_2d_runs_slices():
    img = _img((3, 4, 5, 6))
    a = arrange(img, ImageMeta("TZYX", (1, 2.0, 0.5, 0.25), "micrometer"), spatial_dims=3)
    assert a.axes == "TZYX" and a.lead_axes == "T" and a.identity and a.image is not None
    assert a.spatial_spacing == (2.0, 0.5, 0.25) and a.spatial_shape == (4, 5, 6)
    assert a.describe() == "frame by frame over T (3 frames)"
    b = arrange(img, ImageMeta("TZYX"), spatial_dims=2)
    assert b.lead_axes == "TZ" and b.spatial_shape == (5, 6)


def test_z_before_t_is_moved_and_moved_back():
    img = _img((4, 3, 5, 6))  # ZTYX
    a = arrange(img, ImageMeta("ZTYX", (2.0, 1.0, 0.5, 0.5)), spatial_dims=3)
    assert a.axes == "TZYX" and not a.identity
    np.testing.assert_array_equal(a.image, img.transpose(1, 0, 2, 3))
    assert a.meta.axes == "TZYX" and a.meta.spacing == (1.0, 2.0, 0.5, 0.5)
    np.testing.assert_array_equal(a.to_file_order(a.image), img)
    probs = np.stack([a.image, a.image + 1])
    np.testing.assert_array_equal(a.to_file_order(probs, leading=1), np.stack([img, img + 1]))


def test_3d_model_without_z_is_refused():
    with pytest.raises(AxesError, match="T is time, not depth"):
        arrange(_img((3, 5, 6)), ImageMeta("TYX"), spatial_dims=3)
    with pytest.raises(AxesError, match="needs a Z axis; the image has axes YX"):
        arrange(_img((5, 6)), ImageMeta("YX"), spatial_dims=3)


def test_channels_are_picked_never_averaged():
    img = _img((2, 3, 4, 5, 6))  # TZCYX, 4 channels
    with pytest.raises(ChannelChoiceNeeded) as info:
        arrange(img, ImageMeta("TZCYX"), spatial_dims=3, in_channels=1)
    assert info.value.n_channels == 4 and info.value.axes == "TZCYX"
    a = arrange(img, ImageMeta("TZCYX"), spatial_dims=3, channel=2)
    assert a.channel_axis is None and a.axes == "TZYX" and a.describe().endswith("channel 2")
    np.testing.assert_array_equal(a.image, img[:, :, 2])
    with pytest.raises(AxesError, match="out of range"):
        arrange(img, ImageMeta("TZCYX"), spatial_dims=3, channel=4)
    with pytest.raises(AxesError, match="no channel axis"):
        arrange(_img((5, 6)), ImageMeta("YX"), spatial_dims=2, channel=0)
    # a multi-channel model gets its channels last
    m = arrange(img, ImageMeta("TZCYX"), spatial_dims=3, in_channels=4)
    assert m.channel_axis == -1 and m.image.shape == (2, 3, 5, 6, 4)
    with pytest.raises(AxesError, match="takes 3 channels; the image has 4"):
        arrange(img, ImageMeta("TZCYX"), spatial_dims=3, in_channels=3)
    # one channel is no choice; RGB samples stay for the engine's grey conversion
    assert arrange(_img((1, 5, 6)), ImageMeta("CYX"), spatial_dims=2).image.shape == (5, 6)
    rgb = arrange(_img((5, 6, 3)), ImageMeta("YXS"), spatial_dims=2)
    assert rgb.channel_axis == -1 and rgb.axes == "YX"
    planar = arrange(_img((3, 5, 6)), ImageMeta("CYX", extra={"rgb_planar": True}), spatial_dims=2)
    assert planar.channel_axis == -1 and planar.image.shape == (5, 6, 3)


def test_lazy_inputs_stay_lazy():
    import zarr

    z = zarr.zeros((4, 3, 2, 8, 8), chunks=(1, 1, 1, 8, 8), dtype="f4")
    z[:] = _img((4, 3, 2, 8, 8))
    a = arrange(z, ImageMeta("ZTCYX"), spatial_dims=3, channel=1)
    assert hasattr(a.image, "compute") and a.image.shape == (3, 4, 8, 8)
    np.testing.assert_array_equal(np.asarray(a.image), _img((4, 3, 2, 8, 8))[:, :, 1].transpose(1, 0, 2, 3))


def test_guess_and_parse_axes():
    assert guess_axes((5, 6)) == ("YX", False)
    assert guess_axes((3, 5, 6)) == ("ZYX", True)
    assert guess_axes((2, 3, 5, 6)) == ("TZYX", True)
    assert guess_axes((5, 6, 3), rgb=True) == ("YXS", False)
    with pytest.raises(AxesError):
        guess_axes((1,) * 7)
    assert parse_axes("t y x", (3, 5, 6)) == "TYX"
    assert parse_axes("tyx", (3, 5, 6, 3), rgb=True) == "TYXS"
    with pytest.raises(AxesError, match="axis letters"):
        parse_axes("ZYX", (2, 3, 5, 6))
    with pytest.raises(AxesError, match="Y and X must be the last"):
        parse_axes("YXT", (5, 6, 3))


def test_link_frames_follows_objects_and_keeps_ids_unique():
    lab = np.zeros((3, 12, 12), np.uint32)
    lab[0, 1:4, 1:4], lab[0, 6:10, 6:10] = 1, 2
    lab[1, 2:5, 1:4], lab[1, 6:10, 7:11] = 3, 4  # both moved a little
    lab[1, 0:2, 10:12] = 5  # new
    lab[2, 7:11, 7:11] = 6  # the second object again; the first is gone
    n = link_frames(lab)
    assert (lab[1][2:5, 1:4] == lab[0][2, 2]).all() and (lab[1][6:10, 7:11] == lab[0][7, 7]).all()
    new = lab[1, 0, 10]
    assert new not in (lab[0, 2, 2], lab[0, 7, 7]) and new > 0
    assert lab[2, 8, 8] == lab[0, 7, 7]
    assert n == 3 and set(np.unique(lab)) == {0, 1, 2, 3}
    # below the overlap threshold: not linked
    far = np.zeros((2, 10, 10), np.uint16)
    far[0, 0:4, 0:4], far[1, 3:7, 3:7] = 1, 2
    link_frames(far, min_iou=0.25)
    assert far[1, 5, 5] != far[0, 1, 1]


def test_link_frames_on_zarr_along_another_axis():
    import zarr

    z = zarr.zeros((6, 2, 6), dtype="u4", chunks=(6, 1, 6))  # Y T X
    z[1:3, 0, 1:3] = 7
    z[1:3, 1, 1:3] = 9
    link_frames(z, t_axis=1)
    assert z[1, 0, 1] == z[1, 1, 1] > 0


def test_size_options_follow_the_engine():
    def old(model, image, *, mode="auto"):
        return None

    def new(model, image, *, diameter=None, spacing=None, unit=None):
        return None

    assert size_options(old, diameter="auto", spacing=(1.0, 1.0), unit="um") == {}
    with pytest.raises(AxesError, match="cannot resample"):
        size_options(old, diameter=(10.0, 10.0), explicit=True)
    assert size_options(new, diameter=None, spacing=(1.0, 1.0), unit="um") == {"spacing": (1.0, 1.0), "unit": "um"}
    assert size_options(new, diameter="auto")["diameter"] == "auto"
