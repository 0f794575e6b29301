"""Skip-connection explorer core: capture, placement, summaries, ablation, gradient flow, hooks."""

from __future__ import annotations

import numpy as np
import pytest
from skip_toys import hooked_toy, local_skipunet, toy_unet, trained_tiny

import napari_skipseg
from napari_skipseg.features import (
    FeatureError,
    HookedFeatures,
    ablate_skips,
    block_around,
    capture_features,
    channel_norm,
    feature_placement,
    gradient_flow,
    layer_placement,
    pca_rgb,
    prepare_input,
    region_mask,
    skip_features,
    summarise,
    top_channels,
)
from napari_skipseg.features.taps import as_taps
from napari_skipseg.inference.engine import run


@pytest.fixture(scope="module")
def trained():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return trained_tiny()
    finally:
        torch.set_num_threads(before)


# -- placement -------------------------------------------------------------------------------
def test_feature_placement_formula():
    scale, translate = feature_placement((4, 4), (0.5, 0.25), (10.0, -4.0))
    assert scale == (2.0, 1.0)
    assert translate == pytest.approx((10.0 + 1.5 * 0.5, -4.0 + 1.5 * 0.25))
    # level 0 sits exactly on the image; an origin shifts by whole image pixels
    assert feature_placement((1, 1), (0.5, 0.25), (10.0, -4.0)) == ((0.5, 0.25), (10.0, -4.0))
    _, t = feature_placement((2, 2, 2), (2.0, 1.0, 1.0), None, origin=(3, 5, 0))
    assert t == pytest.approx((6.0 + 1.0, 5.0 + 0.5, 0.5))
    # feature pixel i covers input pixels [i*s, (i+1)*s - 1]: its centre is their mean
    s, a, t0 = 8, 0.3, 2.0
    (sc,), (tr,) = feature_placement((s,), (a,), (t0,))
    for i in range(4):
        covered = t0 + a * np.arange(i * s, (i + 1) * s)
        assert tr + i * sc == pytest.approx(covered.mean())
    with pytest.raises(ValueError, match="one value per spatial axis"):
        feature_placement((2, 2), (1.0,), None)


def test_layer_placement_with_leading_and_channel_axes():
    scale, translate = layer_placement((2, 2), (3.0, 0.5, 0.5), (1.0, 0.0, 0.0), index=(4,), leading=1)
    assert scale == (1.0, 3.0, 1.0, 1.0)
    assert translate == pytest.approx((0.0, 1.0 + 4 * 3.0, 0.25, 0.25))
    with pytest.raises(ValueError):
        layer_placement((2, 2), (1.0, 1.0), (0.0, 0.0), index=(1,))


def test_block_around_stays_inside():
    assert block_around((5, 50), (16, 32), (40, 60)) == ((0, 28), (16, 32))
    assert block_around((20, 10), (16, 100), (40, 60)) == ((12, 0), (16, 60))


# -- alignment: a single bright pixel lights up over itself at every level --------------------
def _world_boxes(rec_feature: np.ndarray, scale, translate):
    """World-coordinate boxes (lo, hi) of the brightest feature pixels."""
    lit = np.argwhere(rec_feature >= rec_feature.max() * 0.999)
    centre = np.asarray(translate) + lit * np.asarray(scale)
    return centre - np.asarray(scale) / 2, centre + np.asarray(scale) / 2, len(lit)


@pytest.mark.parametrize("net", ["skipunet", "hooked"])
def test_single_bright_pixel_lights_up_over_itself(net):
    pixel = (37, 21)
    image = np.zeros((64, 48), np.float32)
    image[pixel] = 1000.0
    img_scale, img_translate = (0.5, 0.25), (10.0, -4.0)
    world = np.asarray(img_translate) + np.asarray(pixel) * np.asarray(img_scale)
    model = local_skipunet(depth=3) if net == "skipunet" else hooked_toy(identity=True)
    records = skip_features(model, image, device="cpu")
    assert [r.level for r in records] == list(range(len(records)))
    for rec in records:
        scale, translate = rec.placement(img_scale, img_translate)
        assert scale == pytest.approx(tuple(a * s for a, s in zip(img_scale, rec.scale, strict=True)))
        for kind in ("encoder", "decoder", "fused"):
            norm = channel_norm(rec.maps(kind))
            lo, hi, n = _world_boxes(norm, scale, translate)
            assert norm.max() > 0, (rec.level, kind)
            inside = np.all((lo <= world) & (world <= hi), axis=1)
            assert inside.any(), f"level {rec.level} {kind}: bright at {lo}..{hi}, pixel at {world}"
            assert n <= 4  # the response stays local (a 2x2 block at most for upsampled maps)
        # the encoder's brightest pixel is exactly the one that summarises the input pixel
        lit = np.unravel_index(np.argmax(channel_norm(rec.encoder)), rec.encoder.shape[1:])
        assert lit == tuple(p // s for p, s in zip(pixel, rec.scale, strict=True))


# -- capture ------------------------------------------------------------------------------------
def test_capture_shapes_scales_and_dtypes(model_home):
    image = np.random.default_rng(0).random((3, 50, 70)).astype(np.float32)
    cap = run(capture_features("tiny", image, device="cpu"))
    assert cap.input.index == (1,) and cap.input.origin == (0, 0) and cap.input.shape == (50, 70)
    assert [(r.level, r.scale) for r in cap.records] == [(0, (1, 1)), (1, (2, 2))]
    assert cap.records[0].encoder.shape == (4, 50, 70)
    assert cap.records[1].encoder.shape == cap.records[1].decoder.shape == cap.records[1].fused.shape == (8, 25, 35)
    assert all(r.maps(k).dtype == np.float32 for r in cap.records for k in ("encoder", "decoder", "fused"))
    assert cap.probabilities.shape == (3, 50, 70) and cap.labels.shape == (50, 70)
    assert cap.class_names == ["background", "interior", "boundary"]
    # the public API gives the same records, and picks the slice asked for
    recs = napari_skipseg.skip_features("tiny", image, index=2, device="cpu")
    assert len(recs) == 2 and not np.allclose(recs[0].encoder, cap.records[0].encoder)
    assert "skip_features" in napari_skipseg.__all__


def test_capture_3d_block_around_center(model_home):
    image = np.random.default_rng(1).random((20, 40, 50)).astype(np.float32)
    cap = run(capture_features("tiny3d", image, center=(18, 0, 49), block=(8, 16, 16), device="cpu"))
    assert cap.input.origin == (12, 0, 34) and cap.input.shape == (8, 16, 16)
    assert cap.records[1].encoder.shape == (8, 4, 8, 8) and cap.records[1].scale == (2, 2, 2)
    _, translate = cap.records[1].placement((2.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    assert translate == pytest.approx((12 * 2.0 + 1.0, 0.5, 34 + 0.5))
    with pytest.raises(FeatureError, match="3 spatial axes"):
        run(capture_features("tiny3d", image[0], device="cpu"))


def test_capture_rgb_and_bad_inputs(model_home):
    rgb = (np.random.default_rng(2).random((40, 36, 3)) * 255).astype(np.uint8)
    recs = skip_features("tiny", rgb, channel_axis=-1, device="cpu")
    assert recs[0].encoder.shape == (4, 40, 36)
    with pytest.raises(FeatureError, match="outside"):
        skip_features("tiny", np.zeros((2, 16, 16)), index=5, device="cpu")
    with pytest.raises(FeatureError, match="takes 1 channel"):
        skip_features("tiny", np.zeros((16, 16, 5)), channel_axis=-1, device="cpu")


def test_capture_uses_the_model_normalisation(model_home):
    taps = as_taps("tiny")
    image = np.random.default_rng(3).normal(500, 50, (32, 32)).astype(np.float32)
    prep = prepare_input(taps, image)
    assert prep.data.dtype == np.float32 and prep.data.shape == (1, 32, 32)
    assert np.percentile(prep.data, 1) == pytest.approx(0, abs=1e-3)
    assert np.percentile(prep.data, 99.8) == pytest.approx(1, abs=1e-3)


def test_capture_can_be_cancelled_between_steps(model_home):
    gen = capture_features("tiny", np.zeros((32, 32), np.float32), device="cpu")
    events = [next(gen), next(gen)]
    gen.close()  # what worker.quit() does at the next yield
    assert events[0].total == events[1].total and events[1].done < events[1].total


# -- summaries ---------------------------------------------------------------------------------
def test_norm_pca_and_topk():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:50].astype(np.float32)
    p1, p2 = np.sin(xx / 5.0) * 3.0, np.cos(yy / 7.0) * 1.0  # p1 varies most
    mix = rng.normal(size=(6, 2))
    maps = (mix[:, :1, None] * p1 + mix[:, 1:, None] * p2 + rng.normal(0, 0.01, (6, 40, 50))).astype(np.float32)
    np.testing.assert_allclose(channel_norm(maps), np.linalg.norm(maps, axis=0), rtol=1e-5)

    rgb = pca_rgb(maps)
    assert rgb.shape == (40, 50, 3) and rgb.dtype == np.uint8
    r, g = rgb[..., 0].astype(float).ravel(), rgb[..., 1].astype(float).ravel()
    assert abs(np.corrcoef(r, p1.ravel())[0, 1]) > 0.95
    assert abs(np.corrcoef(g, p2.ravel())[0, 1]) > 0.9
    np.testing.assert_array_equal(pca_rgb(maps), rgb)  # signs fixed: reproducible colours
    two = pca_rgb(maps[:2])
    assert two.shape == (40, 50, 3) and two[..., 2].max() == 0  # missing component stays black

    stack = np.stack([np.full((8, 8), v, np.float32) for v in (0.1, 3.0, -1.0, 2.0, 0.5)])
    idx, top = top_channels(stack, 3)
    assert list(idx) == [1, 3, 4] and top.shape == (3, 8, 8) and top[0, 0, 0] == 3.0
    data, info = summarise(stack, "topk", 2)
    assert info["channels"] == [1, 3] and data.shape == (2, 8, 8)
    assert summarise(stack, "norm")[0].shape == (8, 8)
    assert summarise(stack, "pca")[0].dtype == np.uint8
    with pytest.raises(ValueError, match="view"):
        summarise(stack, "bogus")


# -- ablation ---------------------------------------------------------------------------------
def test_ablation_changes_nothing_without_ablation(trained):
    model, image, _ = trained
    res = run(ablate_skips(model, image, {}, device="cpu"))
    assert res.changed_fraction == 0.0 and not res.changed.any() and res.difference.max() == 0


def test_zeroing_the_level0_skip_changes_a_trained_model(trained):
    model, image, labels = trained
    res = run(ablate_skips(model, image, 0, "zero", device="cpu"))
    assert res.ablate == {0: "zero"}
    assert (res.original == (labels > 0)).mean() > 0.8  # the model did learn the task
    assert 0 < res.changed_fraction < 1
    assert res.changed.dtype == np.uint8 and res.changed.shape == image.shape
    assert res.difference.dtype == np.float32 and 0 <= res.difference.min() and res.difference.max() <= 1
    assert res.changed_fraction == pytest.approx(res.changed.mean())
    mean = run(ablate_skips(model, res.input, {1: "mean"}, device="cpu"))  # reuse the prepared input
    assert mean.ablate == {1: "mean"} and mean.original.shape == image.shape
    with pytest.raises(ValueError, match="ablate"):
        run(ablate_skips(model, image, {5: "zero"}, device="cpu"))


# -- gradient flow ----------------------------------------------------------------------------
def test_gradient_flow_skips_carry_gradient_to_shallow_stages(trained):
    import torch

    from napari_skipseg.model.config import ModelConfig
    from napari_skipseg.model.unet import SkipUNet

    _, image, _ = trained
    torch.manual_seed(0)
    model = SkipUNet(ModelConfig(name="fresh", num_classes=2, base_channels=4, depth=3,
                                 class_names=["background", "object"])).eval()
    region = (slice(16, 48), slice(16, 48))
    flow = run(gradient_flow(model, image, region=region, class_index=1, device="cpu"))
    assert flow.stages == [f"encoder.stages[{i}]" for i in range(4)]
    assert flow.region_pixels == 32 * 32 and flow.class_name == "object"
    assert np.all(flow.norms_on > 0) and np.all(flow.norms_off > 0)
    # with the skips on, far more gradient reaches the shallow stages than down and up
    # through the bottleneck alone
    assert flow.norms_on[0] > 10 * flow.norms_off[0]
    assert flow.norms_on[1] > flow.norms_off[1]
    # a region mask of the image's shape works too, and an empty one is refused
    mask = np.zeros(image.shape, bool)
    mask[20:30, 20:30] = True
    assert run(gradient_flow(model, image, region=mask, device="cpu")).region_pixels == 100
    with pytest.raises(FeatureError, match="no pixel"):
        run(gradient_flow(model, image, region=(slice(0, 0), slice(0, 5)), device="cpu"))
    with pytest.raises(FeatureError, match="out of range"):
        run(gradient_flow(model, image, class_index=7, device="cpu"))


def test_region_mask_in_image_coordinates(model_home):
    taps = as_taps("tiny3d")
    prep = prepare_input(taps, np.zeros((20, 40, 40), np.float32), center=(10, 10, 10), block=(8, 16, 16))
    assert prep.origin == (6, 2, 2)
    m = region_mask((slice(0, 8), slice(10, 12), slice(None)), prep)
    assert m.shape == (8, 16, 16) and m.sum() == 2 * 2 * 16  # z 6..7 inside the block, y 10..11
    full = np.zeros((20, 40, 40), bool)
    full[6, 2, 2] = True
    assert region_mask(full, prep)[0, 0, 0] and region_mask(full, prep).sum() == 1
    with pytest.raises(FeatureError):
        region_mask(np.zeros((3, 3, 3), bool), prep)


# -- any model: forward hooks on a hand-written UNet ------------------------------------------
def test_hooked_features_on_a_toy_unet():
    hooked = hooked_toy(seed=1)
    net = hooked.module
    image = np.random.default_rng(4).random((30, 42)).astype(np.float32)  # not a multiple of 4
    cap = run(capture_features(hooked, image, device="cpu"))
    assert [(r.level, r.scale) for r in cap.records] == [(0, (1, 1)), (1, (2, 2))]
    assert cap.records[0].encoder.shape == (2, 30, 42) and cap.records[0].decoder.shape == (2, 30, 42)
    assert cap.records[1].fused.shape == (4, 15, 21)
    assert cap.probabilities.shape == (3, 30, 42) and cap.class_names == ["bg", "a", "b"]
    # the hooks are gone after every run: the module is left as it was
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    # zeroing a skip through the hooks: the record shows zeros and the output changes
    abl = run(capture_features(hooked, image, ablate={0: "zero"}, device="cpu"))
    assert abl.records[0].encoder.max() == 0 and not np.allclose(abl.probabilities, cap.probabilities)
    res = run(ablate_skips(hooked, image, 1, "mean", device="cpu"))
    assert res.difference.max() > 0
    flow = run(gradient_flow(hooked, image, device="cpu"))
    assert flow.stages == ["enc1", "enc2", "bottom"] and flow.norms_on[0] > flow.norms_off[0]
    # the same numbers as running the module by hand
    import torch

    with torch.no_grad():
        x = torch.from_numpy(prepare_input(hooked, image).data[None])
        x = torch.nn.functional.pad(x, (0, 2, 0, 2), mode="reflect")
        ref = torch.softmax(net(x), 1)[0, :, :30, :42].numpy()
    np.testing.assert_allclose(cap.probabilities, ref, atol=1e-5)


def test_hooked_features_context_manager_and_errors():
    net = toy_unet()
    with HookedFeatures(net, encoder=["enc1", "enc2"], decoder=["up1", "up2"], fused=["dec1", "dec2"]) as hf:
        assert net.enc1._forward_hooks
        assert hf.spatial_dims == 2 and hf.in_channels == 1
    assert not net.enc1._forward_hooks
    with pytest.raises(ValueError, match="did you mean enc1"):
        HookedFeatures(net, encoder=["enc_1", "enc2"], decoder=["up1", "up2"], fused=["dec1", "dec2"])
    with pytest.raises(ValueError, match="one module per skip level"):
        HookedFeatures(net, encoder=["enc1"], decoder=["up1", "up2"], fused=["dec1", "dec2"])
    with pytest.raises(TypeError, match="HookedFeatures"):
        skip_features(net, np.zeros((16, 16), np.float32), device="cpu")
    # fused modules that do not take cat([skip, up]) are reported when a skip is ablated
    bad = HookedFeatures(net, encoder=["enc1", "enc2"], decoder=["up1", "up2"], fused=["head", "dec2"])
    with pytest.raises(RuntimeError, match="cat"):
        run(ablate_skips(bad, np.zeros((16, 16), np.float32), 0, device="cpu"))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
