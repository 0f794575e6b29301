"""Fuzzing the one config validator with hypothesis: any JSON value in any field (and in the
fields of the card, the normalisation and the post-processing) gives a valid config or one
:class:`ModelConfigError`, never another exception; a config that passes renders its card and
builds its network. The recipe reader likewise raises only :class:`TrainingError`."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_skipseg.model.config import ModelConfig, ModelConfigError
from napari_skipseg.model.store import render_card
from napari_skipseg.training.loop import TrainConfig, TrainingError
from napari_skipseg.training.recipe import load_recipe

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12) | st.sampled_from([0, 1, 2, 3, 2.0, 255, 256, 6000, 1e30, "", "../x", "/tmp/x"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
BASE = ModelConfig(name="base", base_channels=2, depth=1, class_names=["a", "b"]).to_dict()
FIELDS = [f.name for f in dataclasses.fields(ModelConfig)]
SUBKEYS = {
    "card": ["task", "notes", "metrics", "parameters", "metrics_before", "accepted", "anything"],
    "normalization": ["kind", "low", "high", "invert", "stain"],
    "postprocess": ["seed", "mask", "min_size", "min_seed_size"],
    "inference": ["flips"],
    "training_scale": ["object_diameter", "pixel_size", "unit"],
}


def _accepts_or_refuses(data) -> None:
    try:
        cfg = ModelConfig.from_dict(data)
    except ModelConfigError:
        return
    render_card(cfg)  # what passed is usable: the card renders, the size is known and bounded
    assert cfg.parameter_count() <= 200_000_000
    json.dumps(cfg.to_dict())


@FUZZ
@given(field=st.sampled_from(FIELDS), value=json_values)
def test_any_value_in_any_field(field, value):
    _accepts_or_refuses({**BASE, field: value})


@FUZZ
@given(data=st.data())
def test_any_value_in_any_subfield(data):
    field = data.draw(st.sampled_from(sorted(SUBKEYS)))
    key = data.draw(st.sampled_from(SUBKEYS[field]))
    value = data.draw(json_values)
    _accepts_or_refuses({**BASE, field: {**BASE[field], key: value}})


@FUZZ
@given(raw=st.binary(max_size=200) | json_values.map(lambda v: json.dumps({**BASE, "card": v}).encode()))
def test_any_file_content(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_bytes(raw)
    try:
        ModelConfig.from_json(path)
    except ModelConfigError as err:
        assert str(path) in str(err)


@FUZZ
@given(key=st.sampled_from([f.name for f in dataclasses.fields(TrainConfig)] + ["val_fraction"]),
       value=json_values)
def test_any_value_in_a_recipe(tmp_path_factory, key, value):
    recipe = {"model": {"name": "r", "base_channels": 2, "depth": 1}, "training": {}}
    if key == "val_fraction":
        recipe[key] = value
    else:
        recipe["training"][key] = value
    path = tmp_path_factory.mktemp("recipe") / "recipe.json"
    path.write_text(json.dumps(recipe))
    try:
        load_recipe(path)
    except TrainingError as err:
        assert str(path) in str(err)


@pytest.mark.parametrize("text", [
    '{"name": "x", "depth": ' + "9" * 5000 + "}",
    "[" * 50_000,
    '{"name": "x", "card": ' + '{"a": ' * 40 + "1" + "}" * 41,
])
def test_parser_limits_are_one_error_naming_the_file(tmp_path, text):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ModelConfigError, match=f"^{path}: the model config"):
        ModelConfig.from_json(path)
