"""The skip study on a tiny synthetic task: it runs, the twins differ only where they should,
and the no-skip twin truly gets nothing across its skips."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_skipseg.study import (
    StudyError,
    StudyOptions,
    StudyResult,
    Variant,
    build_network,
    format_summary,
    gradient_paths,
    plot_study,
    run_study,
    skip_reach,
)
from tests.engine_toys import discs


def _disc_folder(root, n=6, size=32):
    """``n`` noisy images of 3 bright discs and their instance labels, as TIFF files."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        centres = [tuple(int(c) for c in rng.integers(6, size - 6, 2)) for _ in range(3)]
        labels = np.zeros((size, size), np.uint16)
        for k, c in enumerate(centres, start=1):
            labels[(discs((size, size), [c], 4) > 0) & (labels == 0)] = k
        image = (labels > 0) * 150 + rng.integers(0, 60, (size, size))
        tifffile.imwrite(root / "images" / f"img{i:02d}.tif", image.astype(np.uint8))
        tifffile.imwrite(root / "masks" / f"img{i:02d}.tif", labels)
    return root


def _drive(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return stop.value, events


@pytest.mark.parametrize("block", ["plain", "residual"])
def test_no_skip_twin_gets_nothing_across_the_skips(block):
    with_skips = build_network(Variant(block, 3, True), base_channels=2, seed=5)
    without = build_network(Variant(block, 3, False), base_channels=2, seed=5)
    # structurally: cut the path down through the next encoder stage and the stage's output
    # no longer reaches the logits at all in the twin; in the UNet it still does (the skip)
    assert skip_reach(with_skips) == [True, True, True]
    assert skip_reach(without) == [False, False, False]
    # the decoder stages take one input: the upsampled map, as wide as the concatenation was
    for k, stage in enumerate(without.decoder.stages):
        assert stage.up.out_channels == stage.block.conv1.in_channels == 2 * with_skips.config.channels(k)
    # twins: same encoder weights at the start (same seed), different decoders
    enc_a, enc_b = with_skips.encoder.state_dict(), without.encoder.state_dict()
    assert enc_a.keys() == enc_b.keys()
    assert all(torch.equal(enc_a[k], enc_b[k]) for k in enc_a)
    # odd sizes are padded and cropped back like SkipUNet's
    assert without(torch.randn(1, 1, 19, 27)).shape == (1, 3, 19, 27)


def test_no_norm_variant_has_no_batch_norm():
    net = build_network(Variant("residual", 2, False, "none"), base_channels=2)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
               for m in build_network(Variant("residual", 2, False), base_channels=2).modules())


def test_gradient_paths_match_the_explorer_and_add_up():
    from napari_skipseg.features.capture import gradient_flow
    from napari_skipseg.inference.engine import run

    net = build_network(Variant("residual", 2, True), base_channels=4, seed=1)
    rng = np.random.default_rng(1)
    image = rng.random((32, 32), dtype=np.float32)
    # a few training steps so batch norm's statistics are not the identity any more
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    for _ in range(3):
        x = torch.from_numpy(rng.random((2, 1, 32, 32), dtype=np.float32))
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    paths = gradient_paths(net, torch.from_numpy(image)[None, None], class_index=1)
    flow = run(gradient_flow(net, image, class_index=1, device="cpu"))
    np.testing.assert_allclose(paths["on"], flow.norms_on, rtol=1e-4)
    np.testing.assert_allclose(paths["off"], flow.norms_off, rtol=1e-4)
    assert len(paths["skip"]) == len(paths["below"]) == len(paths["cosine"]) == 3
    for k in range(2):  # |a + b|^2 = |a|^2 + |b|^2 + 2 cos |a| |b|
        a, b, c = paths["skip"][k], paths["below"][k], paths["cosine"][k]
        assert paths["on"][k] ** 2 == pytest.approx(a * a + b * b + 2 * c * a * b, rel=1e-3)
        assert a > 0 and b > 0


def test_study_runs_and_records_gradients_per_level(tmp_path):
    data = _disc_folder(tmp_path / "discs")
    opts = StudyOptions(data=str(data), train_images=4, val_images=2, crop=32, steps=4, batch_size=2, patch=16,
                        base_channels=2, depths=[1, 2], blocks=["plain"], norms=["batch", "none"], seeds=2)
    explorer = build_network(Variant("plain", 2, True), base_channels=2)
    result, events = _drive(run_study(opts, explorer_model=explorer))
    assert events[-1].done == events[-1].total == 8 * 2 * 4  # variants x seeds x steps
    assert len(result.runs) == 16
    assert {(r.depth, r.skips, r.norm, r.seed) for r in result.runs} == {
        (d, s, n, seed) for d in (1, 2) for s in (True, False) for n in ("batch", "none") for seed in (0, 1)}
    assert set(result.data["train"]).isdisjoint(result.data["val"])
    for r in result.runs:
        stages = r.depth + 1
        assert len(r.loss) == len(r.weight_grad) == len(r.output_grad) == 4
        assert all(len(g) == stages for g in r.weight_grad + r.output_grad)
        assert len(r.weight_count) == len(r.output_size) == len(r.init_train) == len(r.init_eval) == stages
        assert np.all(np.isfinite(r.weight_grad)) and np.all(np.asarray(r.weight_grad) > 0)
        assert np.all(np.asarray(r.init_train) > 0) and np.all(np.asarray(r.init_eval) > 0)
        assert 0.0 <= r.score <= 1.0 and not r.diverged
        assert set(r.flow) == ({"init", "trained"} if r.skips else set())
        if r.norm == "none":  # nothing to switch: both measurements are the same network
            np.testing.assert_allclose(r.init_train, r.init_eval, rtol=1e-5)
    assert set(result.explorer) >= {"on", "off", "skip", "below", "cosine", "model", "image"}
    # parts run apart (one per seed) merge into the whole; the same run twice, or another budget, is refused
    parts = [StudyResult(result.options, result.data, [r for r in result.runs if r.seed == s], 1.0)
             for s in (0, 1)]
    merged = StudyResult.merge(parts)
    assert len(merged.runs) == 16 and merged.options["seeds"] == 2
    with pytest.raises(StudyError, match="in two studies"):
        StudyResult.merge([parts[0], parts[0]])
    with pytest.raises(StudyError, match="differ in steps"):
        StudyResult.merge([parts[0], StudyResult({**result.options, "steps": 5}, result.data, parts[1].runs, 1.0)])
    # round trip and figures
    result.to_json(tmp_path / "study.json")
    again = StudyResult.from_json(tmp_path / "study.json")
    assert format_summary(again) == format_summary(result)
    assert len(again.summary()) == 8
    paths = plot_study(again, tmp_path / "fig")
    assert [p.name for p in paths] == [f"skip_study_{n}.png" for n in
                                       ("init_gradients", "early_gradients", "loss", "score", "explorer", "flow")]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


@pytest.mark.parametrize(("change", "match"), [
    ({"depths": [3], "patch": 20}, "multiple of 8"),
    ({"blocks": ["dense"]}, "blocks must be among"),
    ({"norms": ["group"]}, "norms must be among"),
    ({"seeds": 0}, "seeds must be a whole number"),
    ({"patch": 64, "crop": 32}, "larger than crop"),
    ({"lr": 0.0}, "lr must be above 0"),
])
def test_bad_options_name_the_problem(tmp_path, change, match):
    opts = StudyOptions(data=str(tmp_path), crop=32, patch=16, depths=[2])
    opts.validate()
    for key, value in change.items():
        setattr(opts, key, value)
    with pytest.raises(StudyError, match=match):
        opts.validate()


def test_data_folder_checked(tmp_path):
    opts = StudyOptions(data=str(tmp_path), crop=32, patch=16, depths=[2])
    with pytest.raises(StudyError, match="needs 'images' and 'masks'"):
        _drive(run_study(opts))


def test_textbook_effect_at_initialisation_and_batch_norm_removes_it():
    """Without normalisation the gradient reaching the full-resolution stage of a deep plain
    UNet without skips vanishes (about 10x per level), with skips it does not; with batch
    statistics it does not vanish either way."""
    from napari_skipseg.study import rms, stage_output_gradients

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 64, 64, generator=gen)
    y = torch.randint(0, 3, (2, 64, 64), generator=gen)

    def ratio(skips: bool, training: bool) -> float:
        net = build_network(Variant("plain", 4, skips), base_channels=4, seed=0)
        sizes = [2 * net.config.channels(k) * (64 >> k) ** 2 for k in range(5)]
        v = rms(stage_output_gradients(net, x, y, training=training), sizes)
        return float(v[0] / v[-1])

    assert ratio(skips=False, training=False) < 1e-2
    assert ratio(skips=True, training=False) > 1.0
    assert 0.1 < ratio(skips=False, training=True) < 10
