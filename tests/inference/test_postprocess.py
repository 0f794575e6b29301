"""From probabilities to labels: seeded watershed, small-object removal, relabelling."""

import numpy as np
import pytest

from napari_skipseg.inference.postprocess import _keep_sizes, instance_labels, semantic_labels


def two_touching_discs(shape=(40, 60), r=12):
    """Probabilities (background, interior, boundary) of two discs that touch at x=30."""
    yy, xx = np.indices(shape, dtype=float)
    c1, c2 = (20, 18), (20, 42)
    d1 = np.hypot(yy - c1[0], xx - c1[1])
    d2 = np.hypot(yy - c2[0], xx - c2[1])
    fg = (d1 <= r + 0.5) | (d2 <= r + 0.5)
    # interior: high in each centre, falling to 0 at the rim and at the dividing line x=30
    interior = np.clip(1 - np.minimum(d1, d2) / r, 0, 1) * np.clip(np.abs(xx - 30) / 4, 0, 1)
    interior = np.where(fg, 0.05 + 0.9 * interior, 0.0)
    boundary = np.where(fg, 1 - interior, 0.0)
    background = 1 - interior - boundary
    probs = np.stack([background, interior, boundary]).astype(np.float32)
    return probs, d1 <= r + 0.5, d2 <= r + 0.5, fg


def test_touching_discs_split_into_two():
    probs, disc1, disc2, fg = two_touching_discs()
    assert (disc1 & disc2).any() or fg[20, 30]  # they do touch
    labels = instance_labels(probs, {"min_size": 8})
    assert labels.dtype == np.uint32
    assert sorted(np.unique(labels)) == [0, 1, 2]
    left, right = labels[20, 18], labels[20, 42]
    assert {left, right} == {1, 2}
    assert (labels[:, :28][labels[:, :28] > 0] == left).all()
    assert (labels[:, 33:][labels[:, 33:] > 0] == right).all()
    np.testing.assert_array_equal(labels > 0, fg)  # every foreground pixel is given to one


def test_without_boundary_the_discs_merge():
    """The same discs with a flat interior and no boundary form one object: the split
    above comes from the probabilities, not from the geometry alone."""
    _, _, _, fg = two_touching_discs()
    probs = np.stack([~fg, fg, np.zeros_like(fg)]).astype(np.float32)
    labels = instance_labels(probs)
    assert labels.max() == 1


def test_seed_and_mask_thresholds():
    probs, disc1, disc2, fg = two_touching_discs()
    assert instance_labels(probs, {"seed": 0.99}).max() == 0  # no seeds, no objects
    # make the outer rim less certain: foreground 0.7 there
    yy, xx = np.indices(fg.shape)
    rim = fg & ((np.hypot(yy - 20, xx - 18) > 9) & (np.hypot(yy - 20, xx - 42) > 9))
    probs[1:, rim] *= 0.7
    probs[0, rim] = 0.3
    loose = instance_labels(probs, {"mask": 0.5}) > 0
    tight = instance_labels(probs, {"mask": 0.8}) > 0
    np.testing.assert_array_equal(loose, fg)
    np.testing.assert_array_equal(tight, fg & ~rim)


def test_small_objects_dropped():
    probs = np.zeros((3, 20, 20), np.float32)
    probs[0] = 1
    probs[:, 2:4, 2:4] = [[[0]], [[1]], [[0]]]  # 4 pixels
    probs[:, 10:16, 10:16] = [[[0]], [[1]], [[0]]]  # 36 pixels
    labels = instance_labels(probs, {"min_size": 8, "min_seed_size": 1})
    assert labels.max() == 1
    assert labels[12, 12] == 1 and labels[3, 3] == 0
    labels = instance_labels(probs, {"min_size": 1, "min_seed_size": 1})
    assert labels.max() == 2


def test_semantic_labels():
    probs = np.array([[[0.7, 0.2]], [[0.2, 0.3]], [[0.1, 0.5]]], np.float32)  # 3 classes, 1x2
    np.testing.assert_array_equal(semantic_labels(probs), [[0, 2]])
    # for an instance model: foreground = interior + boundary > background
    probs = np.array([[[0.6, 0.4]], [[0.3, 0.3]], [[0.1, 0.3]]], np.float32)
    np.testing.assert_array_equal(semantic_labels(probs, "instances"), [[0, 1]])


@pytest.mark.parametrize("dims", [2, 3])
def test_instance_labels_any_dimension(dims):
    shape = (16,) * dims
    probs = np.zeros((3, *shape), np.float32)
    probs[0] = 1
    inner = tuple(slice(4, 12) for _ in range(dims))
    probs[(slice(None), *inner)] = np.reshape([0, 1, 0], (3,) + (1,) * dims)
    labels = instance_labels(probs)
    assert labels.shape == shape and labels.max() == 1
    assert (labels[inner] == 1).all()


def test_one_pass_equals_scikit_image():
    """_keep_sizes (our one lookup-table pass, kept for speed) gives what scikit-image's
    remove_small_objects + relabel_sequential give."""
    import warnings

    from skimage.morphology import remove_small_objects
    from skimage.segmentation import relabel_sequential

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 40, (30, 40)) * (rng.random((30, 40)) < 0.5) * 7
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = relabel_sequential(remove_small_objects(labels, max_size=5))[0]
    out = _keep_sizes(labels, 6, renumber=True)
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, ref)
    kept = _keep_sizes(labels, 6, renumber=False)  # ids kept, small ones gone
    np.testing.assert_array_equal(kept > 0, ref > 0)
    assert set(np.unique(kept)) <= set(np.unique(labels))
    one = np.zeros((8, 8), np.int32)
    one[2:5, 2:5] = 4
    assert _keep_sizes(one, 9, renumber=True).max() == 1 and _keep_sizes(one, 10, renumber=True).max() == 0
    np.testing.assert_array_equal(_keep_sizes(one, 1, renumber=False), one)


def _blobs(shape, n, seed):
    """Probabilities of ``n`` random overlapping blobs: clumps of touching objects, lone ones,
    and an interior map with plateaus (ties) and dips, as networks give."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    centres = np.zeros(shape, np.float32)
    centres[tuple(rng.integers(0, s, n) for s in shape)] = 1
    field = ndi.gaussian_filter(centres, 3.0 if len(shape) == 2 else 2.0)
    interior = field / field.max()
    boundary = np.clip(ndi.gaussian_filter(interior, 1.5) - interior + 0.3 * rng.random(shape), 0, 1) * (interior > 0.05)
    total = np.maximum(interior + boundary, 1)
    return np.stack([1 - (interior + boundary) / total, interior / total, boundary / total]).astype(np.float32)


@pytest.mark.parametrize("shape,n", [((160, 200), 60), ((24, 48, 56), 70)])
def test_seeded_watershed_equals_scikit_image(shape, n):
    """Flooding only the regions with several seeds gives what scikit-image's watershed over
    the whole image gives after small seeds and objects are dropped and the rest renumbered:
    the same foreground and objects, every pixel the same but for ties (a pixel two floods
    reach at the same value, which then lies between those two objects), at every threshold
    pair (seeds inside and outside the mask, a seed threshold below the mask's), both ways of
    flooding (per region, all at once)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    from napari_skipseg.inference.postprocess import seeded_watershed

    probs = _blobs(shape, n, seed=len(shape))
    interior, foreground = probs[1], probs[1] + probs[2]
    several = differ = 0
    for seed_t, mask_t, min_seed, min_size in [(0.5, 0.5, 1, 1), (0.3, 0.6, 4, 8), (0.2, 0.15, 1, 30), (0.7, 0.1, 6, 1),
                                               (0.9, 0.95, 1, 1), (1.1, 0.5, 1, 1), (0.6, 0.4, 40, 60)]:
        seeds = ndi.label(interior > seed_t)[0]
        mask = foreground > mask_t
        markers = _keep_sizes(seeds, min_seed, renumber=False)
        ref = _keep_sizes(watershed(-interior, markers=markers, mask=mask), min_size, renumber=True)
        for crops in (0, 256):
            out = seeded_watershed(interior, seeds, mask, min_seed_size=min_seed, min_size=min_size, crops=crops)
            assert out.dtype == np.uint32 and out.shape == mask.shape
            np.testing.assert_array_equal(out > 0, ref > 0)
            np.testing.assert_array_equal(np.unique(out), np.unique(ref))
            for at in zip(*np.nonzero(out != ref), strict=True):  # a tie: the pixel touches the object it went to
                near = tuple(slice(max(i - 1, 0), i + 2) for i in at)
                assert out[at] in ref[near]
                differ += 1
        regions, k = ndi.label(mask)
        several += sum(len(np.unique(markers[regions == i])) > 2 for i in range(1, k + 1))
    assert several > 5  # clumps of touching objects were there to split
    assert differ <= 0.001 * foreground.size * 14
    empty = np.zeros(shape, bool)
    assert not seeded_watershed(interior, np.zeros(shape, np.int32), mask).any()  # no seeds, no objects
    assert not seeded_watershed(interior, seeds, empty).any()  # no foreground
