"""The checks of docs/byo_unet.md as a table: small random networks of each supported family
imported, their skips found, segmentation against the network's own forward, ablation.

    SKIPSEG_HOME=/tmp/byo_check python benchmarks/check_byo_unet.py

Prints one Markdown row per network: skip levels found (and expected), scales, largest
difference between ``segment(..., output="probabilities")`` and the softmax of the module's
own forward, the share of pixels whose class changes with level 0 zeroed and the largest change
of a class probability, and the import time (tracing included).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    os.environ.setdefault("SKIPSEG_HOME", tempfile.mkdtemp(prefix="byo_check_"))
    sys.path.insert(0, str(ROOT / "tests" / "model"))
    import numpy as np
    import torch
    from test_foreign import CASES, _blobs

    import napari_skipseg as ss
    from napari_skipseg.features import ablate_skips, capture_features
    from napari_skipseg.inference.engine import run
    from napari_skipseg.inference.preprocess import normalize, percentile_range
    from napari_skipseg.model.foreign import build_network
    from napari_skipseg.model.store import load_model

    print("| network | skip levels found / expected | scales | max abs(segment - softmax(forward)) "
          "| level 0 zeroed: class changed, largest probability change | import s |")
    print("|---|---|---|---|---|---|")
    for key, (arch, args, n_skips, _, shape) in CASES.items():
        try:
            torch.manual_seed(0)
            net = build_network(arch, args).eval()
        except Exception as err:  # a package that is not installed
            print(f"| {key} | not run: {err} | | | | |")
            continue
        t0 = time.perf_counter()
        model = load_model(ss.import_model(net, name=key, arch=arch, arch_args=args, overwrite=True))
        seconds = time.perf_counter() - t0
        image = _blobs(shape)
        records = run(capture_features(model, image, block=shape)).records
        probs = ss.segment(image, model=model, output="probabilities")
        lo, hi = percentile_range(image, 1.0, 99.8)
        with torch.no_grad():
            own = torch.softmax(net(torch.from_numpy(normalize(image[None], lo, hi))[None]), 1)[0].numpy()
        ablation = run(ablate_skips(model, image, 0, block=shape))
        scales = ", ".join("x" + "x".join(map(str, r.scale)) for r in records)
        print(f"| {key} ({arch.rsplit('.', 1)[-1]}, {len(shape)}D {'x'.join(map(str, shape))}) | {len(records)} / "
              f"{n_skips} | {scales} | {np.abs(probs - own).max():.1e} | {100 * ablation.changed_fraction:.1f} %, "
              f"{np.abs(ablation.ablated_probabilities - ablation.original_probabilities).max():.3f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
