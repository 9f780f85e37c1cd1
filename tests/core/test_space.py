from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_elastic import ConfigError, ElasticDim, SearchSpace


def make_space(sizes=((1, 2, 3), (8, 12, 16), (3, 5, 7))) -> SearchSpace:
    return SearchSpace([ElasticDim(f"d{i}", c, full=max(c)) for i, c in enumerate(sizes)])


spaces = st.lists(
    st.lists(st.integers(1, 64), min_size=1, max_size=4, unique=True), min_size=1, max_size=5
).map(lambda sizes: make_space(sizes))


def test_container_protocol_and_counts():
    space = make_space()
    assert len(space) == 3 and "d1" in space and space["d1"].full == 16
    assert space.names() == ["d0", "d1", "d2"]
    assert space.num_subnets == 27
    assert space.max_config() == {"d0": 3, "d1": 16, "d2": 7}
    assert space.min_config() == {"d0": 1, "d1": 8, "d2": 3}
    assert space.describe() == {"d0": [1, 2, 3], "d1": [8, 12, 16], "d2": [3, 5, 7]}
    assert [d.name for d in space.match("d*")] == ["d0", "d1", "d2"] and space.match("x") == []


def test_duplicate_dim_error():
    with pytest.raises(ConfigError, match=r"duplicate dimension name 'a'.*HINT"):
        SearchSpace([ElasticDim("a", [1], 1), ElasticDim("a", [2], 2)])


def test_validate_reports_every_problem_in_one_error():
    space = make_space()
    cfg = {"d0": 4, "d1": 12.5, "zz": 1, "yy": 2}  # d0 out of choices, d1 not int, 2 unknown, d2 missing
    with pytest.raises(ConfigError) as err:
        space.validate(cfg)
    msg = str(err.value)
    for part in ("unknown keys ['zz', 'yy']", "missing keys ['d2']", "d0=4 not in choices [1, 2, 3]",
                 "d1=12.5 is not an integer", "HINT"):
        assert part in msg


def test_validate_not_strict_fills_max_and_accepts_integral_floats():
    space = make_space()
    assert space.validate({"d0": 1, "d1": 8.0}, strict=False) == {"d0": 1, "d1": 8, "d2": 7}
    with pytest.raises(ConfigError, match="missing keys"):
        space.validate({"d0": 1})
    with pytest.raises(ConfigError, match=r"`cfg` must be a dict.*got list.*HINT"):
        space.validate([("d0", 1)])
    with pytest.raises(ConfigError, match="d0=True is not an integer"):
        space.validate({"d0": True, "d1": 8, "d2": 3})


def test_apply_and_active_config():
    space = make_space()
    space.apply(space.min_config())
    assert space.active_config() == space.min_config()


def test_enumerate_lists_every_config_and_limit_error():
    space = make_space()
    configs = list(space.enumerate())
    assert len(configs) == space.num_subnets == len({json.dumps(c, sort_keys=True) for c in configs})
    assert all(space.validate(c) == c for c in configs)
    with pytest.raises(ConfigError, match=r"27 subnets, more than `limit`=10.*HINT"):
        list(space.enumerate(limit=10))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(space=spaces, seed=st.integers(0, 2**31))
def test_sampling_is_deterministic_and_valid(space, seed):
    def draws(s):
        g = torch.Generator().manual_seed(s)
        a, b = space.sample(g), space.sample(g)
        return a, b, space.mutate(a, 0.5, g), space.crossover(a, b, g)

    first, again = draws(seed), draws(seed)
    assert first == again
    for cfg in first:
        assert space.validate(cfg) == cfg
    a, b, _, child = first
    assert all(child[n] in (a[n], b[n]) for n in space.names())


@settings(max_examples=40, deadline=None, derandomize=True)
@given(space=spaces, seed=st.integers(0, 2**31))
def test_encode_decode_and_json_round_trip(space, seed):
    cfg = space.sample(torch.Generator().manual_seed(seed))
    vec = space.encode(cfg)
    assert len(vec) == len(space.elastic_dims) and all(0.0 <= x <= 1.0 for x in vec)
    assert space.decode(vec) == cfg
    assert json.loads(json.dumps(cfg)) == cfg and space.validate(json.loads(json.dumps(cfg))) == cfg


def test_mutate_extremes_and_encode_endpoints():
    space = make_space()
    g = torch.Generator().manual_seed(1)
    cfg = space.sample(g)
    assert space.mutate(cfg, 0.0, g) == cfg
    for bad in (-0.1, 1.5, "x"):
        with pytest.raises(ConfigError, match=r"`prob` got .*; allowed: a number in \[0, 1\].*HINT"):
            space.mutate(cfg, bad, g)
    assert space.encode(space.min_config()) == [0.0, 0.0, 0.0]
    assert space.encode(space.max_config()) == [1.0, 1.0, 1.0]


def test_uniform_sampling_covers_choices():
    space = make_space(((1, 2, 3),))
    g = torch.Generator().manual_seed(0)
    counts = {1: 0, 2: 0, 3: 0}
    for _ in range(600):
        counts[space.sample(g)["d0"]] += 1
    assert all(150 < c < 250 for c in counts.values()), counts


def test_signature_changes_with_choices():
    a, b = make_space(), make_space()
    assert a.signature() == b.signature()
    b["d0"].choices = [2, 3]
    assert a.signature() != b.signature()


def test_validate_hint_offers_strict_false_only_for_missing_keys():
    space = make_space()
    with pytest.raises(ConfigError, match=r"missing keys \['d2'\]\. HINT: .*; pass strict=False to fill missing keys"):
        space.validate({"d0": 1, "d1": 8})
    with pytest.raises(ConfigError) as err:
        space.validate({"d0": 4, "d1": 8, "d2": 3})  # strict=False would not help here
    assert "strict" not in str(err.value) and "d0=4 not in choices [1, 2, 3]" in str(err.value)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_validate_non_finite_values(value):
    # int(inf) used to escape as an OverflowError, int(nan) as a ValueError without the config's context
    with pytest.raises(ConfigError, match=r"invalid architecture config: d0=(inf|nan) is not an integer \(choices "
                                          r"\[1, 2, 3\]\)"):
        make_space().validate({"d0": value, "d1": 8, "d2": 3})


def test_check_returns_problems_without_raising():
    cfg, problems = make_space().check({"d0": 1, "zz": 2}, strict=True)
    assert problems == ["unknown keys ['zz']", "missing keys ['d1', 'd2']"] and cfg == {"d0": 1, "d1": 16, "d2": 7}
