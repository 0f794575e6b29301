"""Mapping, caching and lazy showing of units for progressive runs and live mode (no Qt)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from napari_skipseg.inference.engine import unit_list
from napari_skipseg.interactive import (
    CachedLabels,
    UnitCache,
    UnitSink,
    intersects,
    result_point,
    to_engine_point,
    to_file_where,
    units_at,
)


def test_engine_and_file_order_round_trip():
    # file axes "ZTYX" -> engine "TZYX": engine axis i is file axis order[i]
    order = (1, 0, 2, 3)
    where = (3, 5, slice(0, 8), slice(2, 6))  # engine: t=3, z=5
    assert to_file_where(order, where) == (5, 3, slice(0, 8), slice(2, 6))
    assert to_engine_point(order, (5, 3, 7, 1)) == (3, 5, 7, 1)
    assert to_file_where(None, where) == where and to_engine_point(None, (1, 2)) == (1, 2)
    a = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # engine order
    file = np.transpose(a, np.argsort(order))
    assert file[to_file_where(order, (1, 2, slice(None), slice(None)))].tolist() == a[1, 2].tolist()


def test_result_point_drops_channels_and_clips():
    assert result_point("ZCYX", (4.4, 1.0, 9.6, -3.0), (10, 8, 8)) == (4, 7, 0)
    assert result_point("YXS", (2.0, 3.0), (5, 5)) == (2, 3)
    assert intersects((4, slice(0, 8), slice(0, 8)), (4, 7, 0), displayed=(1, 2))
    assert not intersects((3, slice(0, 8), slice(0, 8)), (4, 7, 0), displayed=(1, 2))
    assert intersects((slice(0, 5), slice(0, 8), slice(0, 8)), (4, 7, 0), displayed=(1, 2))
    assert not intersects((slice(0, 4), slice(0, 8), slice(0, 8)), (4, 7, 0), displayed=(1, 2))


def test_units_at_slices_and_blocks():
    units2d = unit_list((3, 4), (16, 16), (8, 16))  # T=3, Z=4, two Y blocks per slice
    got = units_at(units2d, (1, 2, 0, 0), spatial_dims=2)
    assert [units2d[i][0] for i in got] == [(1, 2), (1, 2)] and len(got) == 2
    units3d = unit_list((2,), (20, 16, 16), (8, 16, 16))  # Z blocks 0-8, 8-16, 16-20
    got = units_at(units3d, (1, 9, 3, 3), spatial_dims=3)
    assert len(got) == 1 and units3d[got[0]][0] == (1,) and units3d[got[0]][1][0] == slice(8, 16)


def test_unit_cache_drops_least_recently_used_and_empties_on_a_new_key():
    cache = UnitCache(max_units=2)
    assert cache.use("a") and not cache.use("a")
    for i in range(3):
        cache.put(i, (i, slice(0, 2)), np.full((1, 2), i))
    assert list(cache.entries) == [1, 2]
    cache.touch([1])
    cache.put(3, (3, slice(0, 2)), np.zeros((1, 2)))
    assert list(cache.entries) == [1, 3] and cache.has([1, 3]) and not cache.has([2])
    assert cache.use("b") and len(cache) == 0


def test_cached_labels_reads_like_the_dense_array():
    rng = np.random.default_rng(0)
    shape = (4, 6, 10, 12)
    dense = np.zeros(shape, np.uint32)
    cache = UnitCache(16)
    cache.use("k")
    # units: (t, z) slices with two Y blocks each, some of them cached
    for i, (t, z, y0) in enumerate([(0, 1, 0), (0, 1, 5), (2, 5, 5), (3, 0, 0)]):
        labels = rng.integers(1, 50, (1, 1, 5, 12)).astype(np.uint32)
        where = (t, z, slice(y0, y0 + 5), slice(0, 12))
        cache.put(i, where, labels)
        dense[where] = labels[0, 0]
    arr = CachedLabels(cache, shape, np.uint32)
    assert arr.shape == shape and arr.ndim == 4 and arr.dtype == np.uint32
    keys = [(0, 1, slice(None), slice(None)), (2, 5, slice(3, 9), slice(None, None, 2)), (0, 1, 7, 3),
            (-1, 0), Ellipsis, (slice(None), 1, Ellipsis), (1, 1, slice(None), slice(None))]
    for key in keys:
        np.testing.assert_array_equal(arr[key], dense[key], err_msg=str(key))
    np.testing.assert_array_equal(np.asarray(arr), dense)
    for t, z in itertools.product(range(4), range(6)):
        np.testing.assert_array_equal(arr[t, z], dense[t, z])
    with pytest.raises(IndexError):
        arr[4, 0]


def test_unit_sink_keeps_what_is_written():
    sink = UnitSink((3, 8, 8), np.uint8)
    sink[(1, slice(0, 8), slice(0, 8))] = np.ones((8, 8), np.uint8)
    assert sink.shape == (3, 8, 8) and len(sink.blocks) == 1 and sink.blocks[0][0][0] == 1


def test_choice_memo_is_per_array_object():
    from napari_skipseg.interactive import ChoiceMemo

    memo = ChoiceMemo(size=2)
    calls = []
    a, b = np.zeros(3), np.zeros(3)  # equal arrays, different objects
    assert memo.get(a, "k", lambda: calls.append("a") or 1) == 1
    assert memo.get(a, "k", lambda: calls.append("a2") or 2) == 1  # remembered
    assert memo.get(b, "k", lambda: calls.append("b") or 3) == 3  # not taken for a's
    assert memo.get(a, "other", lambda: calls.append("a3") or 4) == 4  # other settings
    assert calls == ["a", "b", "a3"] and len(memo.entries) == 2
    assert memo.get([1, 2], "k", lambda: 5) == 5 and len(memo.entries) == 2  # a list: not remembered
