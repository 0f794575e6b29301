"""SkipUNet and ModelConfig: one shared test base over 2D/3D, plain/residual blocks."""

import json
import math

import pytest
import torch

from napari_skipseg.model.config import ModelConfig, ModelConfigError
from napari_skipseg.model.unet import SkipTensors, SkipUNet

CASES = [
    pytest.param(2, "plain", id="2d-plain"),
    pytest.param(2, "residual", id="2d-residual"),
    pytest.param(3, "plain", id="3d-plain"),
    pytest.param(3, "residual", id="3d-residual"),
]


def tiny_config(dims=2, block="residual", **kwargs):
    return ModelConfig(
        name=f"tiny{dims}d", spatial_dims=dims, base_channels=4, depth=2, block=block, **kwargs
    )


def tiny_model(dims=2, block="residual", seed=0, **kwargs):
    torch.manual_seed(seed)
    return SkipUNet(tiny_config(dims, block, **kwargs))


def _input(dims, size=None, n=2, channels=1, seed=1):
    size = size or ((20, 24) if dims == 2 else (8, 12, 12))
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, *size, generator=g)


@pytest.mark.parametrize(("dims", "block"), CASES)
class TestSkipUNet:
    """Shared base: every case runs for 2D and 3D, plain and residual."""

    def test_forward_backward(self, dims, block):
        model = tiny_model(dims, block, num_classes=3).train()
        x = _input(dims)
        out = model(x)
        assert out.shape == (2, 3, *x.shape[2:])
        assert torch.isfinite(out).all()
        out.square().mean().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, f"{name} got no gradient"
        assert any(p.grad.abs().sum() > 0 for p in model.parameters())

    @pytest.mark.parametrize("which", ["odd", "one", "prime"])
    def test_odd_input_sizes(self, dims, block, which):
        sizes = {
            2: {"odd": (37, 50), "one": (1, 1), "prime": (13, 7)},
            3: {"odd": (13, 7, 9), "one": (1, 1, 1), "prime": (5, 3, 11)},
        }
        size = sizes[dims][which]
        model = tiny_model(dims, block).eval()
        with torch.no_grad():
            out = model(_input(dims, size, n=1))
        assert tuple(out.shape) == (1, 2, *size)
        assert torch.isfinite(out).all()

    def test_named_parts(self, dims, block):
        model = tiny_model(dims, block)
        names = dict(model.named_modules())
        cfg = model.config
        for i in range(cfg.depth + 1):
            assert f"encoder.stages.{i}" in names
        for i in range(cfg.depth):
            assert f"decoder.stages.{i}" in names
            assert model.decoder.stages[i] is names[f"decoder.stages.{i}"]
        assert "decoder.stages.2" not in names
        assert "head" in names
        conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
        assert isinstance(model.head, conv)
        assert model.head.out_channels == cfg.num_classes
        residual = block == "residual"
        assert model.encoder.stages[0].residual is residual

    def test_return_features(self, dims, block):
        size = (37, 50) if dims == 2 else (13, 7, 9)
        model = tiny_model(dims, block).eval()
        x = _input(dims, size, n=1)
        with torch.no_grad():
            plain = model(x)
            logits, feats = model(x, return_features=True)
        torch.testing.assert_close(logits, plain)
        assert [f.level for f in feats] == [0, 1]
        for f in feats:
            assert isinstance(f, SkipTensors)
            assert f.scale == (2**f.level,) * dims
            expected = tuple(math.ceil(s / sc) for s, sc in zip(size, f.scale, strict=True))
            ch = model.config.channels(f.level)
            for t in (f.encoder, f.decoder, f.fused):
                assert tuple(t.shape) == (1, ch, *expected)

    def test_ablate_changes_output(self, dims, block):
        model = tiny_model(dims, block).eval()
        x = _input(dims, n=1)
        with torch.no_grad():
            base = model(x)
            for level in (0, 1):
                for how in ("zero", "mean"):
                    ablated = model(x, ablate={level: how})
                    assert ablated.shape == base.shape
                    assert not torch.allclose(ablated, base), (level, how)
            # ablation is per-call: the next plain call is unchanged
            torch.testing.assert_close(model(x), base)

    def test_ablated_skip_is_reported(self, dims, block):
        model = tiny_model(dims, block).eval()
        with torch.no_grad():
            _, feats = model(_input(dims, n=1), return_features=True, ablate={0: "zero", 1: "mean"})
        assert feats[0].encoder.abs().max() == 0
        enc1 = feats[1].encoder
        spatial = tuple(range(2, enc1.ndim))
        assert torch.allclose(enc1, enc1.mean(dim=spatial, keepdim=True).expand_as(enc1))

    @pytest.mark.parametrize("bad", [{2: "zero"}, {-1: "zero"}, {0: "blur"}, {0: None}])
    def test_bad_ablate_raises(self, dims, block, bad):
        model = tiny_model(dims, block).eval()
        with pytest.raises(ValueError, match="ablate"):
            model(_input(dims, n=1), ablate=bad)

    def test_freeze_encoder(self, dims, block):
        model = tiny_model(dims, block)
        model.freeze_encoder()
        model.train()
        assert all(not p.requires_grad for p in model.encoder.parameters())
        assert all(p.requires_grad for p in model.decoder.parameters())
        enc_stats = {k: v.clone() for k, v in model.encoder.state_dict().items() if "running" in k}
        dec_stats = {k: v.clone() for k, v in model.decoder.state_dict().items() if "running" in k}
        x = _input(dims) * 3 + 1
        model(x).mean().backward()
        for p in model.encoder.parameters():
            assert p.grad is None
        assert all(p.grad is not None for p in model.decoder.parameters())
        after = model.encoder.state_dict()
        for k, v in enc_stats.items():
            torch.testing.assert_close(after[k], v, msg=f"{k} changed")
        # the decoder is still training: its statistics move
        dec_after = model.decoder.state_dict()
        assert any(not torch.equal(dec_after[k], v) for k, v in dec_stats.items())

    def test_freeze_first_stages_only(self, dims, block):
        model = tiny_model(dims, block)
        model.freeze_encoder(stages=1)
        model.train()
        assert all(not p.requires_grad for p in model.encoder.stages[0].parameters())
        assert all(p.requires_grad for p in model.encoder.stages[1].parameters())
        model.unfreeze()
        assert all(p.requires_grad for p in model.parameters())

    def test_wrong_input_raises(self, dims, block):
        model = tiny_model(dims, block)
        with pytest.raises(ValueError, match="channel"):
            model(_input(dims, channels=2))
        wrong_ndim = (1, 1, 8, 8, 8, 8) if dims == 3 else (1, 1, 8, 8, 8)
        with pytest.raises(ValueError, match="tensors"):
            model(torch.zeros(wrong_ndim))


def test_anisotropic_pool_3d():
    pool = [[1, 2, 2], [2, 2, 2]]
    model = tiny_model(3, pool=pool).eval()
    assert model.config.level_scale(1) == (1, 2, 2)
    assert model.config.size_multiple() == (2, 4, 4)
    assert model.encoder.stages[1].pool.kernel_size == (1, 2, 2)
    size = (5, 13, 10)
    with torch.no_grad():
        logits, feats = model(_input(3, size, n=1), return_features=True)
    assert logits.shape[2:] == size
    assert feats[1].scale == (1, 2, 2)
    assert tuple(feats[1].encoder.shape[2:]) == (5, 7, 5)


def test_multichannel_input():
    model = tiny_model(2, in_channels=3).eval()
    with torch.no_grad():
        assert model(_input(2, channels=3, n=1)).shape == (1, 2, 20, 24)


# --- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"block": "dense"}, "block"),
        ({"output": "instances", "num_classes": 2}, "num_classes must be 3"),
        ({"pool": [[2, 2]]}, "pool"),  # one factor list for depth 2
        ({"pool": [[2, 2], [3, 2]]}, "pool"),  # factor 3
        ({"pool": [[2, 2, 2], [2, 2, 2]]}, "pool"),  # 3 factors for a 2D model
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"depth": 0}, "depth"),
        ({"base_channels": 0}, "base_channels"),
        ({"output": "boxes"}, "output"),
        ({"class_names": ["a"]}, "class_names"),
        ({"tile": [64]}, "tile"),
    ],
)
def test_config_validation(kwargs, match):
    base = {"base_channels": 4, "depth": 2}
    with pytest.raises(ModelConfigError, match=match):
        ModelConfig(**{**base, **kwargs})


def test_instances_config_with_three_classes_is_fine():
    cfg = ModelConfig(output="instances", num_classes=3, depth=2)
    assert cfg.num_classes == 3


def test_config_json_round_trip(tmp_path):
    cfg = ModelConfig(
        name="rt", spatial_dims=3, in_channels=2, num_classes=3, base_channels=4, depth=2,
        block="plain", pool=[[1, 2, 2], [2, 2, 2]], output="instances",
        class_names=["background", "interior", "boundary"],
        normalization={"kind": "none"}, tile=[16, 32, 32],
        postprocess={"seed": 0.6}, inference={"flips": True}, card={"task": "test", "metrics": {"f1": 0.5}},
    )
    path = tmp_path / "config.json"
    cfg.to_json(path)
    assert json.loads(path.read_text())["pool"] == [[1, 2, 2], [2, 2, 2]]
    again = ModelConfig.from_json(path)
    assert again == cfg
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_config_from_json_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ModelConfigError, match="not valid JSON"):
        ModelConfig.from_json(bad)
    bad.write_text(json.dumps({"name": "x", "colour": "red"}))
    with pytest.raises(ModelConfigError, match="unknown keys.*colour"):
        ModelConfig.from_json(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ModelConfigError, match="JSON object"):
        ModelConfig.from_json(bad)


@pytest.mark.parametrize(("inference", "match"), [
    ({"flip": True}, r"inference has an unknown key 'flip' \(known: flips\)"),
    ({"flips": "yes"}, "true or false"),
    ([True], "inference must be an object with the keys flips"),
])
def test_config_inference_settings_are_checked(inference, match):
    with pytest.raises(ModelConfigError, match=match):
        ModelConfig(name="x", inference=inference)
