from __future__ import annotations

import json

import pytest

from lightning_elastic import ConfigError, SearchSpaceConfig
from lightning_elastic.core.config import check_explicit_fields, resolve_choices


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


# -- specs that used to be read silently wrong ----------------------------------------------------------------------
def test_ratios_above_one_are_refused():
    # used to give channel choices [1, 2, 64]: 1.5 and 2.0 read as absolute sizes
    with pytest.raises(ConfigError, match=r"`width` got \(1\.5, 2\.0\): floats are ratios of the full size and must "
                                          r"be in \(0, 1\], but \[1\.5, 2\.0\] are above 1.*HINT: ratios such as"):
        SearchSpaceConfig(width=(1.5, 2.0))


@pytest.mark.parametrize(("value", "hint"), [
    ((0.5, 2), r"HINT: ratios only, e\.g\. heads=\(0\.5, 1\.0\), or integer sizes only, e\.g\. heads=\(2,\)"),
    ([0.5, 0.75, 1], r"HINT: write the full ratio as 1\.0: heads=\(0\.5, 0\.75, 1\.0\)"),  # YAML's [0.5, 0.75, 1]
])
def test_mixed_ratios_and_sizes_are_refused(value, hint):
    # (0.5, 2) used to drop the 0.5 silently; [0.5, 0.75, 1] kept only the full size
    with pytest.raises(ConfigError, match=r"`heads` got .*, which mixes ratios .* \(floats\) and absolute sizes "
                                          r"\[.*\] \(integers\); allowed: all ratios in \(0, 1\] or all integer "
                                          r"sizes\. " + hint):
        SearchSpaceConfig(heads=value)


def test_multiplier_fields_take_any_positive_numbers():
    cfg = SearchSpaceConfig(expand=(3, 4.5, 6), mlp_ratio=(3.0, 3.5, 4.0))
    assert cfg.expand == (3, 4.5, 6) and cfg.mlp_ratio == (3.0, 3.5, 4.0)


@pytest.mark.parametrize("value", ["layer1.*", ["layer1.*", 3], [""]])
def test_exclude_must_be_a_list_of_globs(value):
    # a string used to be split into its characters: ['l', 'a', 'y', ...]
    with pytest.raises(ConfigError, match=r"`exclude` got .*; allowed: a list of dimension names or globs \(a single "
                                          r"string would be read character by character\)\. HINT: exclude=\["):
        SearchSpaceConfig(exclude=value)


def test_exclude_string_hint_wraps_it_in_a_list():
    with pytest.raises(ConfigError, match=r"HINT: exclude=\['layer1\.\*'\]\."):
        SearchSpaceConfig(exclude="layer1.*")


def test_override_keys_must_be_globs():
    with pytest.raises(ConfigError, match=r"`overrides` key 3 is not a dimension name or glob; allowed: non-empty "
                                          r"strings\. HINT"):
        SearchSpaceConfig(overrides={3: [1, 2]})


def test_check_explicit_fields():
    built = {"width": [64, 128, 512], "depth": [2, 2]}
    check_explicit_fields(SearchSpaceConfig(width=(32, 512), depth=(1, 2)), built, "test")  # all used: fine
    check_explicit_fields(SearchSpaceConfig(kernel="auto", heads=None), built, "test")  # defaults: fine
    with pytest.raises(ConfigError, match=r"`kernel`=\(4,\) was given, but the test adapter builds no 'kernel' "
                                          r"dimensions \(it builds: \['depth', 'width'\]\), so it would be ignored\. "
                                          r"HINT: drop `kernel` or set it to None\."):
        check_explicit_fields(SearchSpaceConfig(kernel=(4,)), built, "test")
    with pytest.raises(ConfigError, match=r"`width` has absolute sizes \[1000\] above the largest full size 512 of "
                                          r"this model's 3 'width' dimensions \(full sizes \[64, 128, 512\]\); they "
                                          r"would be dropped, leaving no elastic 'width' dimension\. HINT: use sizes "
                                          r"<= 512"):
        check_explicit_fields(SearchSpaceConfig(width=(1000,)), built, "test")
    with pytest.raises(ConfigError, match=r"`depth` has absolute sizes \[3\] above the largest full size 2 .*would be "
                                          r"dropped\. HINT"):
        check_explicit_fields(SearchSpaceConfig(depth=(1, 3)), built, "test")


def test_whole_floats_above_one_get_an_integer_hint():
    with pytest.raises(ConfigError, match=r"`kernel` got \(3\.0, 5\.0, 7\.0\): floats are ratios .* HINT: write absolute "
                                          r"sizes as integers: kernel=\(3, 5, 7\)\."):
        SearchSpaceConfig(kernel=(3.0, 5.0, 7.0))
