"""Our small-object removal and relabelling against scikit-image's, on watershed-like labels.

    python benchmarks/bench_postprocess_libs.py

Labels: discs of radius 3-9 on a 2048 x 2048 plane (about 9000 objects) and a 96 x 256 x 256
volume, ids shuffled (as a watershed leaves them); median of 5 runs each, one thread.
"""

from __future__ import annotations

import statistics
import time

import numpy as np


def make_labels(shape, n, seed=0):
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int32)
    idx = tuple(rng.integers(0, s, n) for s in shape)
    seeds[idx] = rng.permutation(np.arange(1, n + 1)) * 3  # gaps in the ids
    grown = ndi.grey_dilation(seeds, size=(5,) * len(shape))
    return grown


def ours_remove_small(labels, min_size):
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if not small.any():
        return labels
    out = labels.copy()
    out[small[labels]] = 0
    return out


def ours_relabel(labels):
    ids, inverse = np.unique(labels, return_inverse=True)
    out = inverse if ids.size and ids[0] == 0 else inverse + 1
    return out.reshape(labels.shape).astype(np.uint32)


def sk_remove_small(labels, min_size):
    from skimage.morphology import remove_small_objects

    return remove_small_objects(labels, max_size=min_size - 1)


def sk_relabel(labels):
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels)[0].astype(np.uint32, copy=False)


def timeit(fn, *args, repeat=5):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    for shape, n in (((2048, 2048), 9000), ((96, 256, 256), 6000)):
        labels = make_labels(shape, n)
        min_size = 30 if len(shape) == 2 else 80
        t_or, a = timeit(ours_remove_small, labels, min_size)
        t_sr, b = timeit(sk_remove_small, labels, min_size)
        assert np.array_equal(a, b)
        t_ol, c = timeit(ours_relabel, a)
        t_sl, d = timeit(sk_relabel, b)
        assert np.array_equal(c, d) and c.dtype == d.dtype
        # what the watershed's output goes through: both steps in one lookup-table pass
        from napari_skipseg.inference.postprocess import _keep_sizes

        t_one, e = timeit(_keep_sizes, labels, min_size, True)
        assert np.array_equal(e, d)
        print(f"{shape}: remove_small ours {t_or * 1e3:.0f} ms, skimage {t_sr * 1e3:.0f} ms; "
              f"relabel ours {t_ol * 1e3:.0f} ms, skimage {t_sl * 1e3:.0f} ms; "
              f"both in one pass (postprocess._keep_sizes) {t_one * 1e3:.0f} ms vs skimage "
              f"{(t_sr + t_sl) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
