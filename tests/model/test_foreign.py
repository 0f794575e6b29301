"""Networks trained elsewhere: imported, their skips found by tracing, used like a SkipUNet.

Small random networks of each supported family (MONAI BasicUNet, UNet, DynUNet in 2D and 3D;
pytorch-3dunet UNet2D/UNet3D): the skip levels found equal the network's, every level's maps
lie at its scale over the image, segmentation equals the softmax of the network's own
forward, and switching a skip off changes the output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_skipseg.inference.engine import run  # noqa: E402
from napari_skipseg.inference.preprocess import normalize, percentile_range  # noqa: E402
from napari_skipseg.model.store import ModelLoadError, load_model  # noqa: E402

BASIC = "monai.networks.nets.BasicUNet"
UNET = "monai.networks.nets.UNet"
DYN = "monai.networks.nets.DynUNet"
P3D2, P3D3 = "pytorch3dunet.unet3d.model.UNet2D", "pytorch3dunet.unet3d.model.UNet3D"

# (arch, args, number of skips, scale of level 0, image shape (a multiple of the network's size))
CASES = {
    "basicunet2d": (BASIC, dict(spatial_dims=2, in_channels=1, out_channels=3, features=[4, 4, 8, 8, 16, 4]), 4, 1, (48, 64)),
    "basicunet3d": (BASIC, dict(spatial_dims=3, in_channels=1, out_channels=2, features=[2, 2, 2, 4, 4, 2]), 4, 1, (16, 32, 16)),
    "unet2d": (UNET, dict(spatial_dims=2, in_channels=1, out_channels=2, channels=[4, 8, 16, 16], strides=[2, 2, 2],
                          num_res_units=1), 3, 2, (48, 64)),
    "unet3d": (UNET, dict(spatial_dims=3, in_channels=1, out_channels=2, channels=[2, 4, 4], strides=[2, 2]), 2, 2,
               (16, 24, 16)),
    "dynunet2d": (DYN, dict(spatial_dims=2, in_channels=1, out_channels=2, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, 2],
                            upsample_kernel_size=[2, 2, 2], filters=[4, 8, 8, 16]), 3, 1, (48, 64)),
    "dynunet3d": (DYN, dict(spatial_dims=3, in_channels=1, out_channels=2, kernel_size=[3, 3, 3], strides=[1, 2, 2],
                            upsample_kernel_size=[2, 2], filters=[2, 4, 8]), 2, 1, (16, 24, 16)),
    # additive skips (x = up(x) + skip)
    "segresnet2d": ("monai.networks.nets.SegResNet", dict(spatial_dims=2, in_channels=1, out_channels=2, init_filters=8,
                                                          blocks_down=[1, 1, 1], blocks_up=[1, 1]), 2, 1, (48, 64)),
    # the skip gated by attention before the concatenation (the gate's own sum is not a skip)
    "attentionunet2d": ("monai.networks.nets.AttentionUnet", dict(spatial_dims=2, in_channels=1, out_channels=2,
                                                                  channels=[4, 8, 16], strides=[2, 2]), 2, 1, (48, 64)),
    "p3d_unet2d": (P3D2, dict(in_channels=1, out_channels=2, f_maps=4, num_groups=2, num_levels=3,
                              is_segmentation=False), 2, 1, (48, 64)),
    "p3d_unet3d": (P3D3, dict(in_channels=1, out_channels=2, f_maps=4, num_groups=2, num_levels=3,
                              is_segmentation=False), 2, 1, (16, 24, 16)),
}


def _needs(arch: str):
    package = arch.split(".")[0]
    return pytest.importorskip(package, reason=f"{package} is not installed (pip install napari-skipseg[byo])")


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPSEG_HOME", str(tmp_path / "home"))
    return tmp_path


def _blobs(shape, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    img = np.zeros(shape, np.float32)
    for _ in range(6):
        c = [rng.uniform(0, s) for s in shape]
        img += np.exp(-sum((g - ci) ** 2 for g, ci in zip(grid, c, strict=True)) / 20.0)
    return img + 0.05 * rng.random(shape, dtype=np.float32)


@pytest.mark.parametrize("key", list(CASES))
def test_imported_network_skips_segmentation_ablation(key, store):
    import napari_skipseg as ss
    from napari_skipseg.features import ablate_skips, capture_features
    from napari_skipseg.model.foreign import build_network

    arch, args, n_skips, scale0, shape = CASES[key]
    _needs(arch)
    torch.manual_seed(0)
    net = build_network(arch, args).eval()
    folder = ss.import_model(net, name=key, arch=arch, arch_args=args)
    model = load_model(folder)
    cfg = model.config
    levels = cfg.arch["skips"]["levels"]
    assert len(levels) == n_skips == cfg.depth

    image = _blobs(shape)
    capture = run(capture_features(model, image, block=shape))
    assert [r.level for r in capture.records] == list(range(n_skips))
    for rec in capture.records:
        # level k lies at scale 2^k (MONAI UNet: its first skip is after a strided convolution)
        assert rec.scale == (scale0 * 2**rec.level,) * len(shape)
        expect = tuple(math.ceil(s / f) for s, f in zip(shape, rec.scale, strict=True))
        for kind in ("encoder", "decoder", "fused"):
            assert rec.maps(kind).shape[1:] == expect, (kind, rec.level)
        assert np.isfinite(rec.encoder).all()

    probs = ss.segment(image, model=model, output="probabilities")
    lo, hi = percentile_range(image, 1.0, 99.8)
    x = torch.from_numpy(normalize(image[None], lo, hi))[None]
    with torch.no_grad():
        own = torch.softmax(net(x) if not isinstance(net(x), (tuple, list)) else net(x)[0], dim=1)[0].numpy()
    assert probs.shape == own.shape
    assert np.abs(probs - own).max() < 1e-4

    if arch == UNET:  # the bottleneck is the bottom layer, not the innermost skip around it
        assert cfg.arch["skips"]["bottleneck"].endswith(".submodule")
    for how in ("zero", "mean"):
        ablated = run(ablate_skips(model, image, 0, how, block=shape))
        assert float(np.abs(ablated.ablated_probabilities - ablated.original_probabilities).max()) > 1e-4
    # the hooks went away with the pass: the network is left as it was
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.net.modules())


def test_gradient_flow_and_finetune_on_imported_network(store):
    import napari_skipseg as ss
    from napari_skipseg.features import gradient_flow
    from napari_skipseg.model.foreign import build_network

    arch, args, n_skips, _, shape = CASES["basicunet2d"]
    _needs(arch)
    torch.manual_seed(1)
    net = build_network(arch, args)
    ss.import_model(net, name="bu", arch=arch, arch_args=args, classes=["background", "a", "b"])
    model = load_model("bu")
    image = _blobs(shape, seed=2)
    flow = run(gradient_flow(model, image))
    assert flow.stages == ["conv_0", "down_1", "down_2", "down_3", "down_4"]
    assert (flow.norms_on > 0).all()
    assert flow.norms_off[0] != pytest.approx(flow.norms_on[0])

    labels = (image > np.percentile(image, 70)).astype(np.uint8)
    # no held-out part: the trained weights are what is saved (with one, weights that do not beat
    # the starting ones are not kept, see training/finetune.py)
    result = ss.finetune(model, image, labels, steps=3, save=True, train="decoder", patch=[32, 32], batch_size=1,
                         device="cpu", val_fraction=0)
    tuned = load_model(result.path)
    assert type(tuned).__name__ == "ImportedNet" and tuned.config.arch["class"] == arch
    before = model.net.state_dict()
    after = tuned.net.state_dict()
    assert torch.equal(before["conv_0.conv_0.conv.weight"], after["conv_0.conv_0.conv.weight"])  # encoder frozen
    assert not torch.equal(before["final_conv.weight"], after["final_conv.weight"])


def test_weights_files_programs_and_refusals(store, tmp_path):
    from safetensors.torch import save_file

    import napari_skipseg as ss
    from napari_skipseg.model.foreign import build_network

    arch, args, n_skips, _, shape = CASES["basicunet2d"]
    _needs(arch)
    torch.manual_seed(3)
    net = build_network(arch, args).eval()
    image = _blobs(shape, seed=4)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "w.safetensors")
    ref = ss.segment(image, model=load_model(ss.import_model(tmp_path / "w.pt", name="a", arch=arch, arch_args=args)),
                     output="probabilities")
    other = ss.segment(image, model=load_model(ss.import_model(tmp_path / "w.safetensors", name="b", arch=arch,
                                                                arch_args=args)), output="probabilities")
    assert np.array_equal(ref, other)

    ep = torch.export.export(net, (torch.zeros(1, 1, *shape),))
    torch.export.save(ep, tmp_path / "net.pt2")
    exported = load_model(ss.import_model(tmp_path / "net.pt2", name="ep"))
    assert len(exported.config.arch["skips"]["levels"]) == n_skips
    assert np.abs(ss.segment(image, model=exported, output="probabilities") - ref).max() < 1e-4
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 1, *shape)), tmp_path / "net.ts")
    scripted = load_model(ss.import_model(tmp_path / "net.ts", name="ts"))
    assert np.abs(ss.segment(image, model=scripted, output="probabilities") - ref).max() < 1e-4

    with pytest.raises(ModelLoadError, match="imported from monai"):
        ss.import_model(tmp_path / "w.pt", name="c", arch="os.path.join", arch_args={})
    with pytest.raises(ModelLoadError, match="do not fit"):
        ss.import_model(tmp_path / "w.pt", name="c", arch=arch, arch_args={**args, "features": [4, 4, 8, 8, 16, 8]})
    torch.save({"state_dict": net.state_dict(), "where": __import__("pathlib").PurePosixPath("/x")}, tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError, match="refused"):
        ss.import_model(tmp_path / "bad.pt", name="c", arch=arch, arch_args=args)
    with pytest.raises(ModelLoadError, match="arch_args"):
        ss.import_model(net, name="c")


def test_user_skip_map_for_a_network_that_does_not_trace():
    """A network whose forward branches on tensor values cannot be exported; a map naming its
    modules taps it all the same, and the traced map of a traceable twin agrees with it."""
    from skip_toys import toy_unet

    from napari_skipseg.features import ablate_skips, skip_features
    from napari_skipseg.features.discover import (
        MappedFeatures,
        SkipDiscoveryError,
        SkipMap,
        discover_skips,
    )

    net = toy_unet(seed=0)
    traced = discover_skips(net, 2, 1).skip_map
    assert [(lv.encoder, lv.fused, lv.scale) for lv in traced.levels] == [("enc1", "dec1", [1, 1]),
                                                                         ("enc2", "dec2", [2, 2])]
    assert traced.bottleneck == "bottom"
    forward = net.forward

    def branching(x):
        return x[:, :1].repeat(1, 3, 1, 1) if bool(x.max() > 1e9) else forward(x)

    net.forward = branching
    with pytest.raises(SkipDiscoveryError, match="skip map"):
        discover_skips(net, 2, 1)
    skip_map = SkipMap.from_user(net, {"encoder": ["enc1", "enc2"], "fused": ["dec1", "dec2"],
                                       "bottleneck": "bottom"}, 2, 1)
    assert [(lv.offset, lv.channels, lv.join_channels) for lv in skip_map.levels] == [(0, 2, 4), (0, 4, 8)]
    taps = MappedFeatures(net, skip_map, spatial_dims=2, in_channels=1)
    image = np.random.default_rng(0).random((32, 32), dtype=np.float32)  # (smooth blobs leave its ReLUs dead)
    records = skip_features(taps, image)
    assert [r.scale for r in records] == [(1, 1), (2, 2)]
    assert run(ablate_skips(taps, image, 0)).difference.max() > 0
    with pytest.raises(SkipDiscoveryError, match="no submodule"):
        SkipMap.from_user(net, {"encoder": ["enc1"], "fused": ["nope"]}, 2, 1)


def test_segmentation_models_pytorch_where_it_imports(store):
    try:
        import segmentation_models_pytorch  # noqa: F401
    except Exception as err:  # needs a torchvision built for this torch; PyPI's links CUDA torch
        pytest.skip(f"segmentation_models_pytorch does not import here ({type(err).__name__}: {str(err)[:80]})")
    import napari_skipseg as ss
    from napari_skipseg.model.foreign import build_network

    arch = "segmentation_models_pytorch.Unet"
    args = dict(encoder_name="resnet18", encoder_weights=None, in_channels=1, classes=2, encoder_depth=3,
                decoder_channels=[16, 8, 4])
    net = build_network(arch, args).eval()
    model = load_model(ss.import_model(net, name="smp", arch=arch, arch_args=args))
    assert len(model.config.arch["skips"]["levels"]) >= 2


def test_cli_import_model_arch(store, tmp_path, capsys):
    """``skipseg import-model WEIGHTS --arch --arch-args -o NAME``: the card records what the
    network expects; bad input is one line and exit code 2."""
    import json

    from napari_skipseg.cli import main
    from napari_skipseg.model.foreign import build_network

    arch, args, n_skips, _, shape = CASES["dynunet2d"]
    _needs(arch)
    torch.manual_seed(6)
    torch.save(build_network(arch, args).state_dict(), tmp_path / "dyn.pth")
    argv = ["import-model", str(tmp_path / "dyn.pth"), "--arch", arch, "--arch-args", json.dumps(args),
            "-o", "dyn", "--normalization", "none", "--axes", "yx", "--classes", "background", "cells"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"{n_skips} skip connection(s) found, at scales x1x1, x2x2, x4x4" in out
    cfg = load_model("dyn").config
    assert cfg.normalization == {"kind": "none"} and cfg.class_names == ["background", "cells"]
    assert cfg.card["axes"] == "yx" and cfg.arch["class"] == arch and cfg.arch["args"] == args
    assert "DynUNet" in (store / "home" / "models" / "dyn" / "card.md").read_text()

    def fails(extra, expect):
        assert main(["import-model", str(tmp_path / "dyn.pth"), "-o", "other", "-q", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expect in err[0], err

    fails(["--arch", "subprocess.Popen", "--arch-args", "{}"], "imported from monai")
    fails(["--arch", arch, "--arch-args", "{not json"], "--arch-args")
    fails(["--arch", arch, "--arch-args", json.dumps({**args, "filters": [4, 8, 8, 8]})], "do not fit")
    fails(["--arch", arch, "--arch-args", json.dumps(args), "--axes", "zyx"], "axes")
    fails(["--arch", arch, "--arch-args", json.dumps(args), "--classes", "a", "b", "c"], "3 class names")
    fails([], "--arch")


def test_a_config_naming_another_package_is_refused(store):
    """A stored config cannot make the loader import a class outside the allowlist."""
    import json

    import napari_skipseg as ss
    from napari_skipseg.features import MappedFeatures, SkipMap, discover_skips  # noqa: F401 (exported)
    from napari_skipseg.model.foreign import build_network

    arch, args, _, _, _ = CASES["unet2d"]
    _needs(arch)
    folder = ss.import_model(build_network(arch, args), name="u", arch=arch, arch_args=args)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["arch"]["class"] = "subprocess.Popen"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="not from an allowed package"):
        load_model(folder)
    cfg["arch"]["class"] = "monai.networks.nets.UNet"
    cfg["arch"]["skips"]["levels"][0]["offset"] = 10**5
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="outside"):
        load_model(folder)
