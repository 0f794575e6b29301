"""The correction tools of napari_skipseg.annotate, 2D and 3D, on small synthetic images with
exact expected labels."""

from __future__ import annotations

import numpy as np
import pytest

from napari_skipseg import annotate as ann
from napari_skipseg.inference.postprocess import instance_labels

PARAMS = {"seed": 0.5, "mask": 0.5, "min_size": 1, "min_seed_size": 1}


def probs_from(interior: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """(background, interior, boundary) probabilities with the given interior and foreground."""
    interior = interior.astype(np.float32)
    fg = np.maximum(foreground.astype(np.float32), interior)
    return np.stack([1 - fg, interior, fg - interior]).astype(np.float32)


def grid(ndim: int, n: int = 16) -> tuple[int, ...]:
    return (n,) * ndim


def box(ndim: int, lo, hi) -> tuple[slice, ...]:
    """Slices lo..hi inclusive on the last two axes and on the first axis of a 3D array
    (z from 2 to 5)."""
    yx = (slice(lo[0], hi[0] + 1), slice(lo[1], hi[1] + 1))
    return yx if ndim == 2 else (slice(2, 6), *yx)


def pt(ndim: int, y: int, x: int) -> tuple[int, ...]:
    return (y, x) if ndim == 2 else (3, y, x)


# -- delete / merge -----------------------------------------------------------------------------
@pytest.mark.parametrize("ndim", [2, 3])
def test_delete_object(ndim):
    labels = np.zeros(grid(ndim), np.uint32)
    labels[box(ndim, (1, 1), (4, 4))] = 1
    labels[box(ndim, (8, 8), (10, 12))] = 2
    expected = labels.copy()
    expected[expected == 2] = 0
    assert ann.delete_object(labels, pt(ndim, 9, 9)) == 2
    np.testing.assert_array_equal(labels, expected)
    assert ann.delete_object(labels, pt(ndim, 14, 14)) == 0  # background: nothing changes
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("ndim", [2, 3])
def test_merge_objects(ndim):
    labels = np.zeros(grid(ndim), np.uint16)
    labels[box(ndim, (1, 1), (4, 4))] = 3
    labels[box(ndim, (5, 1), (7, 4))] = 7
    labels[box(ndim, (10, 10), (12, 12))] = 9
    expected = labels.copy()
    expected[expected == 7] = 3
    assert ann.merge_objects(labels, pt(ndim, 2, 2), pt(ndim, 6, 2)) == 3
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.uint16
    assert ann.merge_objects(labels, pt(ndim, 2, 2), pt(ndim, 14, 1)) == 0  # one click on background
    np.testing.assert_array_equal(labels, expected)


# -- split ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("ndim", [2, 3])
def test_split_object_with_probabilities(ndim):
    """Two squares merged into one object, the model's interior low where they touch: the
    watershed from the two clicks cuts along the valley (col 6 | col 7)."""
    labels = np.zeros(grid(ndim), np.uint32)
    labels[box(ndim, (2, 2), (6, 11))] = 4
    labels[box(ndim, (12, 12), (13, 13))] = 5
    interior = np.zeros(grid(ndim), np.float32)
    interior[box(ndim, (2, 2), (6, 5))] = 1.0  # A's core; A's edge (col 6) stays 0
    interior[box(ndim, (2, 8), (6, 11))] = 1.0  # B's core
    interior[box(ndim, (2, 7), (6, 7))] = 0.05  # B's edge
    probs = probs_from(interior, labels > 0)
    expected = labels.copy()
    expected[box(ndim, (2, 7), (6, 11))] = 6
    assert ann.split_object(labels, probs, pt(ndim, 4, 4), pt(ndim, 4, 9)) == 6
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("ndim", [2, 3])
def test_split_object_without_probabilities(ndim):
    """Two discs joined by a thin neck, no probabilities: the distance to the edge decides."""
    labels = np.zeros(grid(ndim, 20), np.uint32)
    labels[box(ndim, (4, 1), (8, 5))] = 1
    labels[box(ndim, (4, 13), (8, 17))] = 1
    labels[box(ndim, (6, 6), (6, 12))] = 1  # neck, one pixel thick
    ann.split_object(labels, None, pt(ndim, 6, 3), pt(ndim, 6, 15))
    assert set(np.unique(labels)) == {0, 1, 2}
    assert (labels[box(ndim, (4, 1), (8, 5))] == 1).all()
    assert (labels[box(ndim, (4, 13), (8, 17))] == 2).all()
    neck = labels[box(ndim, (6, 6), (6, 12))]
    assert ((neck == 1) | (neck == 2)).all()
    assert (labels > 0).sum() == 2 * np.prod(labels[box(ndim, (4, 1), (8, 5))].shape) + neck.size


def test_split_refuses_points_on_two_objects():
    labels = np.zeros((10, 10), np.uint32)
    labels[1:4, 1:4] = 1
    labels[6:9, 6:9] = 2
    before = labels.copy()
    with pytest.raises(ann.AnnotateError, match="same object"):
        ann.split_object(labels, None, (2, 2), (7, 7))
    np.testing.assert_array_equal(labels, before)


# -- add --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ndim", [2, 3])
def test_add_object_from_probabilities(ndim):
    """Two touching unlabelled objects A (cols 2-6) and B (cols 7-11), an existing object on
    A's top row: a click in A takes A's free pixels only, not B's, not the old object's."""
    labels = np.zeros(grid(ndim), np.uint32)
    labels[box(ndim, (2, 2), (2, 6))] = 1  # an existing object over A's top row
    fg = np.zeros(grid(ndim), bool)
    fg[box(ndim, (2, 2), (6, 11))] = True
    interior = np.zeros(grid(ndim), np.float32)
    interior[box(ndim, (2, 2), (6, 5))] = 1.0  # A's core; A's edge (col 6) stays 0
    interior[box(ndim, (2, 8), (6, 11))] = 1.0  # B's core
    interior[box(ndim, (2, 7), (6, 7))] = 0.05  # B's edge
    probs = probs_from(interior, fg)
    expected = labels.copy()
    expected[box(ndim, (3, 2), (6, 6))] = 2
    assert ann.add_object(labels, probs, pt(ndim, 4, 4), params=PARAMS, diameter=10) == 2
    np.testing.assert_array_equal(labels, expected)
    # a second click on the new object changes nothing and names it
    assert ann.add_object(labels, probs, pt(ndim, 4, 4), params=PARAMS) == 2
    np.testing.assert_array_equal(labels, expected)


def test_add_object_in_a_blob_of_several_takes_one_object():
    """Two discs (radius 5) merged in one foreground blob with one flat seed: a click on the
    left disc takes about the left half, cut where the blob's distance peaks meet."""
    yy, xx = np.mgrid[:21, :27]
    left, right = np.hypot(yy - 10, xx - 8) <= 5, np.hypot(yy - 10, xx - 18) <= 5
    blob = left | right
    probs = probs_from(blob.astype(np.float32), blob)
    labels = np.zeros(blob.shape, np.uint32)
    assert ann.add_object(labels, probs, (10, 8), params=PARAMS, diameter=10) == 1
    got = labels == 1
    assert got[left & (xx <= 11)].all() and not got[right & (xx >= 15)].any()
    assert not got[~blob].any()
    # without the size hint of other objects it is one object (the blob is its own size)
    labels2 = np.zeros(blob.shape, np.uint32)
    labels2[0, 0] = 5  # a one-pixel object: typical size too small to say anything
    ann.add_object(labels2, probs, (10, 8), params=PARAMS, diameter=30)
    assert (labels2 == 6).sum() == blob.sum()


@pytest.mark.parametrize("ndim", [2, 3])
def test_add_object_where_the_model_was_unsure(ndim):
    """Foreground 0.3 (below the mask threshold 0.5) at the click: half of it bounds the object."""
    labels = np.zeros(grid(ndim), np.uint32)
    fg = np.zeros(grid(ndim), np.float32)
    fg[box(ndim, (5, 5), (9, 9))] = 0.3
    fg[box(ndim, (5, 10), (9, 12))] = 0.1  # below 0.15: not taken
    probs = probs_from(np.zeros(grid(ndim), np.float32), fg)
    expected = np.zeros_like(labels)
    expected[box(ndim, (5, 5), (9, 9))] = 1
    assert ann.add_object(labels, probs, pt(ndim, 7, 7), params=PARAMS) == 1
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("ndim", [2, 3])
def test_add_object_grows_from_the_image_without_probabilities(ndim):
    labels = np.zeros(grid(ndim, 24), np.uint32)
    labels[box(ndim, (1, 1), (3, 3))] = 1
    image = np.full(grid(ndim, 24), 10.0, np.float32)
    image[box(ndim, (10, 10), (14, 15))] = 100.0  # bright object
    image[box(ndim, (10, 16), (14, 18))] = 40.0  # dimmer than the midpoint (55): not taken
    expected = labels.copy()
    expected[box(ndim, (10, 10), (14, 15))] = 2
    assert ann.add_object(labels, None, pt(ndim, 12, 12), image=image, diameter=8) == 2
    np.testing.assert_array_equal(labels, expected)


def test_add_object_in_a_stack_of_2d_slices_stays_in_its_slice():
    labels = np.zeros((3, 16, 16), np.uint32)
    fg = np.zeros((3, 16, 16), np.float32)
    fg[:, 4:9, 4:9] = 1.0
    probs = probs_from(fg, fg)
    expected = np.zeros_like(labels)
    expected[1, 4:9, 4:9] = 1
    assert ann.add_object(labels, probs, (1, 6, 6), params=PARAMS, spatial_dims=2) == 1
    np.testing.assert_array_equal(labels, expected)


def test_points_are_checked():
    labels = np.zeros((8, 8), np.uint32)
    with pytest.raises(ann.AnnotateError, match="outside"):
        ann.delete_object(labels, (8, 1))
    with pytest.raises(ann.AnnotateError, match="coordinates"):
        ann.delete_object(labels, (1, 1, 1))
    with pytest.raises(ann.AnnotateError, match="do not fit"):
        ann.add_object(labels, np.zeros((3, 4, 4), np.float32), (1, 1))


# -- box ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ndim", [2, 3])
def test_box_resegments_inside_the_box_only(ndim):
    """Inside the box: a junk object goes, a missed object comes (new id), the part of an
    object that goes on outside the box keeps its id; outside nothing changes."""
    shape = grid(ndim, 20)
    labels = np.zeros(shape, np.uint32)
    labels[box(ndim, (2, 2), (5, 17))] = 5  # crosses the box's edge (box: cols 0-9)
    labels[box(ndim, (0, 0), (1, 1))] = 7  # junk, inside the box
    labels[box(ndim, (15, 15), (17, 17))] = 3  # outside
    fg = np.zeros(shape, bool)
    interior = np.zeros(shape, np.float32)
    fg[box(ndim, (2, 2), (5, 17))] = True
    interior[box(ndim, (3, 3), (4, 16))] = 1.0
    fg[box(ndim, (7, 2), (9, 5))] = True  # missed
    interior[box(ndim, (8, 3), (8, 4))] = 1.0
    probs = probs_from(interior, fg)
    expected = labels.copy()
    expected[box(ndim, (0, 0), (1, 1))] = 0
    expected[box(ndim, (7, 2), (9, 5))] = 8
    if ndim == 2:
        a, b = (0, 0), (9, 9)
    else:
        a, b = (2, 0, 0), (5, 9, 9)
    before = labels.copy()
    changed = ann.box_segment(labels, probs, a, b, params=PARAMS)
    np.testing.assert_array_equal(labels, expected)
    assert changed == int((expected != before).sum())


def test_box_needs_probabilities():
    labels = np.zeros((8, 8), np.uint32)
    with pytest.raises(ann.AnnotateError, match="run Segment first"):
        ann.box_segment(labels, None, (0, 0), (4, 4))


def test_box_in_a_stack_of_2d_slices_uses_the_slices_as_units():
    labels = np.zeros((2, 12, 12), np.uint32)
    fg = np.zeros((2, 12, 12), bool)
    fg[:, 2:6, 2:6] = True
    probs = probs_from(fg.astype(np.float32), fg)
    ann.box_segment(labels, probs, (0, 0, 0), (1, 11, 11), params=PARAMS, spatial_dims=2)
    expected = np.zeros_like(labels)
    expected[0, 2:6, 2:6] = 1
    expected[1, 2:6, 2:6] = 2
    np.testing.assert_array_equal(labels, expected)


# -- live thresholds -----------------------------------------------------------------------------------
def test_relabel_follows_the_seed_threshold():
    """Two cores (interior 0.9) joined by a bridge of 0.7: seed 0.8 gives two objects,
    seed 0.6 one; the same as the engine's post-processing."""
    interior = np.zeros((10, 20), np.float32)
    interior[3:7, 2:8] = 0.9
    interior[3:7, 12:18] = 0.9
    interior[4:6, 8:12] = 0.7
    probs = probs_from(interior, interior > 0)
    two = ann.relabel(probs, {**PARAMS, "seed": 0.8})
    one = ann.relabel(probs, {**PARAMS, "seed": 0.6})
    assert int(two.max()) == 2 and int(one.max()) == 1
    np.testing.assert_array_equal(two > 0, interior > 0)
    np.testing.assert_array_equal(one, (interior > 0).astype(np.uint32))
    np.testing.assert_array_equal(two, instance_labels(probs, {**PARAMS, "seed": 0.8}))
    # the minimum size: each of the two holds 28 px (a core of 24 and half the bridge), the one 56
    assert not ann.relabel(probs, {**PARAMS, "seed": 0.8, "min_size": 30}).any()
    np.testing.assert_array_equal(ann.relabel(probs, {**PARAMS, "seed": 0.6, "min_size": 30}), one)


def test_relabel_stack_keeps_ids_apart():
    fg = np.zeros((3, 8, 8), np.float32)
    fg[:, 2:5, 2:5] = 1.0
    out = ann.relabel(probs_from(fg, fg), PARAMS, spatial_dims=2)
    assert [int(out[i, 3, 3]) for i in range(3)] == [1, 2, 3]


# -- review ------------------------------------------------------------------------------------------------
def test_uncertainty_and_regions():
    probs = np.zeros((3, 2, 8, 8), np.float32)
    probs[0] = 1.0
    probs[:, 1, 4:, 4:] = 1 / 3  # slice 1, bottom-right tile: every class equally likely
    unc = ann.uncertainty(probs)
    assert unc.shape == (2, 8, 8)
    np.testing.assert_allclose(unc[1, 4:, 4:], 1.0, atol=1e-5)
    assert unc[0].max() < 1e-4
    regions = ann.uncertain_regions(unc, tile=4)
    assert len(regions) == 8
    first = regions[0]
    assert first.lead == (1,) and (first.window[0].start, first.window[1].start) == (4, 4)
    assert first.centre == (1.0, 5.5, 5.5)
    rest = ann.uncertain_regions(unc, tile=4, skip=[first.key])
    assert first.key not in [r.key for r in rest] and len(rest) == 7
    assert all(r.lead != (1,) for r in ann.uncertain_regions(unc, tile=4, skip_lead=[1]))


def test_object_table():
    labels = np.zeros((6, 6), np.uint32)
    labels[0:2, 0:2] = 2
    labels[3:6, 3:6] = 5
    image = np.arange(36, dtype=np.float32).reshape(6, 6)
    unc = np.zeros((6, 6), np.float32)
    unc[3:6, 3:6] = 0.5
    t = ann.object_table(labels, image, unc)
    np.testing.assert_array_equal(t["label"], [2, 5])
    np.testing.assert_array_equal(t["area"], [4, 9])
    np.testing.assert_allclose(t["mean_intensity"], [(0 + 1 + 6 + 7) / 4, 28.0])
    np.testing.assert_allclose(t["certainty"], [1.0, 0.5])
    np.testing.assert_allclose(t["centroid"], [[0.5, 0.5], [4.0, 4.0]])
    assert np.isnan(ann.object_table(labels)["mean_intensity"]).all()


def test_plans_do_not_change_the_labels():
    labels = np.zeros((10, 10), np.uint32)
    labels[2:5, 2:5] = 1
    before = labels.copy()
    edit = ann.plan_delete(labels, (3, 3))
    np.testing.assert_array_equal(labels, before)
    assert edit.indices[0].size == 9 and (edit.values == 0).all()
    edit.apply(labels)
    assert not labels.any()


# -- image contrast, boundaries and spacing -------------------------------------------------------
def _scene_with_a_faint_spot(ndim: int, dark: bool):
    """An object the model found (labelled, foreground 1) and a small spot it missed
    (foreground 0): bright spots on a dark background, or dark on bright."""
    shape = grid(ndim, 24)
    labels = np.zeros(shape, np.uint32)
    fg = np.zeros(shape, np.float32)
    found = box(ndim, (2, 2), (7, 7))
    labels[found] = 1
    fg[found] = 1.0
    image = np.full(shape, 10.0, np.float32)
    image[found] = 200.0
    image[box(ndim, (14, 14), (16, 17))] = 40.0  # the faint spot: 30 over the background
    if dark:
        image = 255.0 - image
    return labels, probs_from(np.zeros(shape, np.float32), fg), image


@pytest.mark.parametrize("dark", [False, True])
@pytest.mark.parametrize("ndim,spacing", [(2, None), (3, None), (3, (2.0, 0.5, 0.5))])
def test_add_object_where_the_model_saw_nothing_takes_the_spot_the_image_shows(ndim, spacing, dark):
    """Foreground 0 at the click: the object is the spot above half its height over the
    background, bright or dark as the model's objects are, not a disc of the usual size
    (also with voxels 2 x 0.5 x 0.5)."""
    labels, probs, image = _scene_with_a_faint_spot(ndim, dark)
    expected = labels.copy()
    expected[box(ndim, (14, 14), (16, 17))] = 2
    assert ann.add_object(labels, probs, pt(ndim, 15, 15), image=image, params=PARAMS, spacing=spacing) == 2
    np.testing.assert_array_equal(labels, expected)


def test_add_object_from_the_image_leaves_the_model_objects_ground():
    """A faint spot touching a bright object the model saw (foreground >= mask, unlabelled):
    the new object stops where the model's foreground begins."""
    labels, probs, image = _scene_with_a_faint_spot(2, False)
    image[14:17, 18:21] = 200.0  # an object the model saw but nobody labelled
    probs = probs.copy()
    probs[0, 14:17, 18:21], probs[2, 14:17, 18:21] = 0.0, 1.0
    expected = labels.copy()
    expected[14:17, 14:18] = 2
    assert ann.add_object(labels, probs, (15, 15), image=image, params=PARAMS) == 2
    np.testing.assert_array_equal(labels, expected)


def test_add_object_without_contrast_draws_a_disc():
    """No contrast at the click (a flat image): a disc of the typical diameter."""
    labels = np.zeros((24, 24), np.uint32)
    image = np.full((24, 24), 7.0, np.float32)
    yy, xx = np.mgrid[:24, :24]
    expected = ((yy - 12) ** 2 + (xx - 12) ** 2 <= 9).astype(np.uint32)
    assert ann.add_object(labels, None, (12, 12), image=image, diameter=6) == 1
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("ndim", [2, 3])
def test_split_where_a_click_lies_on_the_models_boundary_cuts_by_distance(ndim):
    """The model's interior is 0 around the first click (it saw a boundary there) and 1
    all around: the watershed would flood everything from the second click and leave the
    first only its own pixels; the parts are the nearer halves instead."""
    labels = np.zeros(grid(ndim), np.uint32)
    labels[box(ndim, (2, 2), (6, 13))] = 4
    interior = np.where(labels > 0, 1.0, 0.0).astype(np.float32)
    interior[box(ndim, (3, 3), (5, 5))] = 0.0  # a dip at the first click
    probs = probs_from(interior, labels > 0)
    expected = labels.copy()
    expected[box(ndim, (2, 8), (6, 13))] = 5  # x >= 8 is nearer (4, 11) than (4, 4)
    assert ann.split_object(labels, probs, pt(ndim, 4, 4), pt(ndim, 4, 11), diameter=100) == 5
    np.testing.assert_array_equal(labels, expected)


def _nearer(shape, a, b, spacing):
    """True where the point is nearer ``b`` than ``a`` (physical distance)."""
    grids = np.indices(shape).astype(float)
    sp = np.asarray(spacing, float).reshape((-1,) + (1,) * len(shape))
    da = (((grids - np.reshape(a, sp.shape)) * sp) ** 2).sum(0)
    db = (((grids - np.reshape(b, sp.shape)) * sp) ** 2).sum(0)
    assert not np.isclose(da, db).any()  # no ties: one answer
    return db < da


@pytest.mark.parametrize("spacing", [None, (3.0, 1.0, 1.0)])
def test_split_in_3d_measures_in_the_voxels_spacing(spacing):
    """A block split from two clicks without probabilities: each voxel goes to the nearer
    click in micrometres (voxels 3 x 1 x 1), not in voxel steps."""
    shape = (7, 12, 12)
    labels = np.ones(shape, np.uint32)
    a, b = (1, 2, 2), (4, 9, 7)  # no voxel is as near one as the other
    expected = np.where(_nearer(shape, a, b, spacing or (1, 1, 1)), 2, 1).astype(np.uint32)
    assert ann.split_object(labels, None, a, b, diameter=100, spacing=spacing) == 2
    np.testing.assert_array_equal(labels, expected)
    if spacing is not None:  # the voxel answer differs
        assert (expected != np.where(_nearer(shape, a, b, (1, 1, 1)), 2, 1)).any()


def test_split_in_2d_with_anisotropic_pixels():
    shape = (12, 16)
    labels = np.full(shape, 3, np.uint16)
    a, b = (2, 3), (9, 10)
    expected = np.where(_nearer(shape, a, b, (2.0, 1.0)), 4, 3).astype(np.uint16)
    assert ann.split_object(labels, None, a, b, diameter=100, spacing=(2.0, 1.0)) == 4
    np.testing.assert_array_equal(labels, expected)


def test_add_object_disc_is_round_in_micrometres():
    """Nothing to go on (no probabilities, no image): a ball of the typical diameter in
    physical units, so 2 voxels deep where z voxels are twice as thick."""
    labels = np.zeros((9, 15, 15), np.uint32)
    zz, yy, xx = np.indices(labels.shape)
    expected = (((zz - 4) * 2.0) ** 2 + (yy - 7) ** 2 + (xx - 7) ** 2 <= 16).astype(np.uint32)
    assert ann.add_object(labels, None, (4, 7, 7), diameter=8, spacing=(2.0, 1.0, 1.0)) == 1
    np.testing.assert_array_equal(labels, expected)
    assert (labels[:, 7, 7] > 0).sum() == 5 and (labels[4, 7, :] > 0).sum() == 9


def test_typical_diameter_in_physical_units():
    labels = np.zeros((10, 20, 20), np.uint32)
    labels[0:2, 0:4, 0:4] = 1  # 32 voxels of 2 x 1 x 1 = 64 um^3
    labels[5:7, 10:14, 10:14] = 2
    assert ann.typical_diameter(labels, 3) == pytest.approx((6 * 32 / np.pi) ** (1 / 3))
    assert ann.typical_diameter(labels, 3, (2.0, 1.0, 1.0)) == pytest.approx((6 * 64 / np.pi) ** (1 / 3))


def test_spacing_is_checked():
    labels = np.zeros((4, 8, 8), np.uint32)
    labels[1:3, 2:6, 2:6] = 1
    for bad in [(1.0, 1.0), (0.0, 1.0, 1.0), (-1.0, 1.0, 1.0)]:
        with pytest.raises(ann.AnnotateError, match="spacing"):
            ann.split_object(labels, None, (1, 2, 2), (2, 5, 5), spacing=bad)
    np.testing.assert_array_equal(labels[1:3, 2:6, 2:6], 1)
