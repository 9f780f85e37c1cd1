from __future__ import annotations

import json

import pytest

from lightning_elastic import ConfigError, SearchSpaceConfig
from lightning_elastic.core.config import resolve_choices


def test_defaults_and_list_to_tuple():
    cfg = SearchSpaceConfig(width=[0.5, 1.0], resolution=[160, 128, 160])
    assert cfg.width == (0.5, 1.0) and cfg.depth == "auto" and cfg.resolution == (128, 160)


@pytest.mark.parametrize("value", ["big", 3, (), {}])
def test_bad_spec_shape(value):
    with pytest.raises(ConfigError, match=r"`width` got .*allowed: 'auto', None.*HINT: e.g. width="):
        SearchSpaceConfig(width=value)


@pytest.mark.parametrize("value", [(0.5, -1), (True, 1.0), ("a",), (0,)])
def test_bad_spec_values(value):
    with pytest.raises(ConfigError, match=r"`depth` has invalid values .*allowed: positive numbers.*HINT"):
        SearchSpaceConfig(depth=value)


@pytest.mark.parametrize("value", [(), (0,), (1.5, 2), (True,)])
def test_bad_resolution(value):
    with pytest.raises(ConfigError, match=r"`resolution` got .*allowed: None or a list of positive integers.*HINT"):
        SearchSpaceConfig(resolution=value)


def test_bad_overrides():
    with pytest.raises(ConfigError, match=r"`overrides` must be a dict .*got \[1\].*HINT"):
        SearchSpaceConfig(overrides=[1])
    for bad in ([], [0, 2], [1.5], "12", [True]):
        with pytest.raises(ConfigError, match=r"`overrides\['a\.\*'\]` got .*positive integers.*HINT"):
            SearchSpaceConfig(overrides={"a.*": bad})


def test_bad_importance():
    with pytest.raises(ConfigError, match=r"`importance` got 'l3'; allowed: \['l1', 'l2'\].*HINT"):
        SearchSpaceConfig(importance="l3")


def test_dict_round_trip_through_json():
    cfg = SearchSpaceConfig(width=(0.5, 1.0), depth=None, overrides={"x.*": [2, 4]}, exclude=["y"], resolution=(96,))
    again = SearchSpaceConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert SearchSpaceConfig(importance=lambda g, n: None).to_dict()["importance"] is None


def test_from_dict_unknown_keys():
    with pytest.raises(ConfigError, match=r"unknown SearchSpaceConfig keys \['colour'\]; allowed: .*HINT"):
        SearchSpaceConfig.from_dict({"colour": 1})


@pytest.mark.parametrize(
    ("spec", "full", "auto", "expected"),
    [
        ("auto", 64, (0.5, 0.75, 1.0), [32, 48, 64]),
        ("auto", 4, None, [4]),
        (None, 64, (0.5, 1.0), [64]),
        ((0.25, 0.5), 10, None, [2, 5, 10]),  # ratios round, full always included
        ((2, 3, 4, 6), 4, None, [2, 3, 4]),  # absolute values above full are dropped
        ((0.01,), 8, None, [1, 8]),  # never below `minimum`
        ((1.0,), 8, None, [8]),
    ],
)
def test_resolve_choices(spec, full, auto, expected):
    assert resolve_choices(spec, full, auto, "width") == expected
