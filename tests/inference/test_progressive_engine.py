"""The engine's support for showing results as they come: units near a point first, and
progress events naming the units finished."""

from __future__ import annotations

import numpy as np
import pytest
from engine_toys import BlobModel, discs

from napari_skipseg.inference.engine import (
    SegmentationError,
    order_units,
    plan,
    predict,
    run,
    tile_voxels,
    unit_list,
)
from napari_skipseg.interactive import same_labels


def _stack(n=9, size=32):
    rng = np.random.default_rng(3)
    return np.stack([discs((size, size), rng.integers(4, size - 4, (3, 2)), 3) for _ in range(n)])


def test_order_units_nearest_first():
    units = unit_list((3, 5), (8, 8), (8, 8))  # T=3, Z=5: 15 slices
    order = order_units(units, range(len(units)), (1, 2))
    leads = [units[i][0] for i in order]
    assert leads[0] == (1, 2) and set(leads[1:5]) == {(0, 2), (2, 2), (1, 1), (1, 3)}
    assert sorted(order) == list(range(len(units)))
    blocks = unit_list((), (20, 8, 8), (5, 8, 8))  # 3D blocks along Z
    assert [blocks[i][1][0].start for i in order_units(blocks, range(4), (12, 0, 0))] == [10, 5, 15, 0]
    assert order_units(units, [4, 0], (0, 0)) == [0, 4]  # only the units asked for
    with pytest.raises(SegmentationError, match="at most 4"):
        order_units(units, range(3), (0, 0, 0, 0, 0))


def test_units_are_reported_as_they_finish_nearest_first():
    stack = _stack()
    events = []
    gen = predict(BlobModel(), stack, output="instances", device="cpu", batch_size=2, near=(6,),
                  keep_probabilities=True)
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    done = [w for e in events for w in e.info.get("units_done", [])]
    assert [w[0] for w in done][:3] == [6, 5, 7]  # the slice asked for, then outward
    assert sorted(w[0] for w in done) == list(range(len(stack)))  # each once
    assert "units_done" not in events[-1].info or len(events[-1].info["units_done"]) < len(stack)
    assert events[0].info["units"] == len(stack)
    first = next(i for i, e in enumerate(events) if "units_done" in e.info)
    assert first < len(events) - 1  # some are shown before the run ends
    plain = run(predict(BlobModel(), stack, output="instances", device="cpu", keep_probabilities=True))
    np.testing.assert_array_equal(result.probabilities, plain.probabilities)
    for z in range(len(stack)):
        assert same_labels(result.labels[z], plain.labels[z])
        assert result.labels[z].max() > 0


def test_a_run_of_some_units_gives_what_the_whole_run_gives_for_them():
    stack = _stack(5, 48)
    whole = run(predict(BlobModel(), stack, output="semantic", device="cpu", tile=32))
    part = run(predict(BlobModel(), stack, output="semantic", device="cpu", tile=32, units=[3]))
    np.testing.assert_array_equal(part.labels[3], whole.labels[3])
    assert not part.labels[[0, 1, 2, 4]].any()


def test_tile_voxels_counts_the_tiles_of_the_whole_run():
    cfg = BlobModel().config
    geo = plan(cfg, (4, 40, 40), tile=32, overlap=0.25)
    assert tile_voxels(cfg, (4, 40, 40), tile=32, overlap=0.25) == 4 * 4 * 32 * 32  # 2 x 2 tiles per slice
    assert len(geo["units"]) == 4


def test_same_labels():
    a = np.array([[0, 1, 1], [2, 2, 0]])
    assert same_labels(a, np.where(a == 1, 7, np.where(a == 2, 3, 0)))
    assert not same_labels(a, np.where(a > 0, 1, 0))  # two objects merged
    assert not same_labels(a, np.array([[1, 1, 1], [2, 2, 0]]))  # background differs
