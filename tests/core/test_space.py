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
        return space.sample(g), space.sample(g)

    first, again = draws(seed), draws(seed)
    assert first == again
    for cfg in first:
        assert space.validate(cfg) == cfg


@settings(max_examples=40, deadline=None, derandomize=True)
@given(space=spaces, seed=st.integers(0, 2**31))
def test_json_round_trip(space, seed):
    cfg = space.sample(torch.Generator().manual_seed(seed))
    assert json.loads(json.dumps(cfg)) == cfg and space.validate(json.loads(json.dumps(cfg))) == cfg


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


# -- canonical configs -------------------------------------------------------------------------------------------
def depth_space(order=(0, 1, 2)) -> SearchSpace:
    """``depth`` keeps blocks by ``order``; ``b{i}`` lives in block ``i``; ``stem`` lives outside every block."""
    dims = [ElasticDim("depth", [1, 2, 3], 3, kind="depth"), ElasticDim("stem", [4, 8], 8)]
    dims += [ElasticDim(f"b{i}", [1, 2, 3], 3) for i in range(3)]
    return SearchSpace(dims, dead_when={f"b{i}": [("depth", order.index(i))] for i in range(3)})


def test_canonical_sets_dead_dims_to_max_and_keeps_live_ones():
    space = depth_space()
    assert space.canonical({"depth": 1, "stem": 4, "b0": 1, "b1": 1, "b2": 2}) == \
        {"depth": 1, "stem": 4, "b0": 1, "b1": 3, "b2": 3}
    assert space.dead_dims({"depth": 2, "stem": 4, "b0": 1, "b1": 1, "b2": 1}) == ["b2"]
    assert space.canonical({"depth": 3, "stem": 4, "b0": 1, "b1": 1, "b2": 1}) == \
        {"depth": 3, "stem": 4, "b0": 1, "b1": 1, "b2": 1}
    # a missing depth is at max (what validate(strict=False) fills): nothing dead; missing dims stay missing
    assert space.canonical({"b2": 1}) == {"b2": 1}
    assert SearchSpace([ElasticDim("a", [1, 2], 2)]).canonical({"a": 1}) == {"a": 1}  # no map: unchanged


def test_canonical_follows_the_keep_order():
    space = depth_space(order=(2, 0, 1))  # depth 1 keeps block 2, depth 2 blocks 2 and 0
    cfg = {"depth": 1, "stem": 4, "b0": 1, "b1": 1, "b2": 1}
    assert space.canonical(cfg) == {"depth": 1, "stem": 4, "b0": 3, "b1": 3, "b2": 1}
    assert space.dead_dims({**cfg, "depth": 2}) == ["b1"]


def test_sampling_and_extremes_are_canonical():
    space = depth_space()
    g = torch.Generator().manual_seed(0)
    assert space.min_config() == {"depth": 1, "stem": 4, "b0": 1, "b1": 3, "b2": 3}
    assert space.max_config() == space.canonical(space.max_config())
    draws = [space.sample(g) for _ in range(60)]
    assert all(space.is_canonical(c) for c in draws)
    assert any(not space.is_canonical(space.sample(g, canonical=False)) for _ in range(60))
    # the raw draw consumes the generator exactly as the canonical one (same sequence either way)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert [space.canonical(space.sample(g1, canonical=False)) for _ in range(5)] == [space.sample(g2) for _ in range(5)]


def test_num_networks_and_canonical_enumeration_match_brute_force():
    space = depth_space(order=(1, 2, 0))
    distinct = {json.dumps(space.canonical(c), sort_keys=True) for c in space.enumerate()}
    assert space.num_subnets == 3 * 2 * 27
    assert space.num_networks == len(distinct) == 2 * (3 + 9 + 27)
    listed = list(space.enumerate(canonical=True))
    assert {json.dumps(c, sort_keys=True) for c in listed} == distinct and len(listed) == len(distinct)
    with pytest.raises(ConfigError, match=r"78 networks, more than `limit`=10.*HINT"):
        list(space.enumerate(limit=10, canonical=True))
    # two stages, and a dim living in blocks of both (dead only when both are removed)
    two = SearchSpace([ElasticDim("d1", [1, 2], 2, kind="depth"), ElasticDim("d2", [1, 2], 2, kind="depth"),
                       ElasticDim("x", [1, 2, 3], 3), ElasticDim("y", [1, 2], 2)],
                      dead_when={"x": [("d1", 1), ("d2", 1)], "y": [("d2", 1)]})
    distinct = {json.dumps(two.canonical(c), sort_keys=True) for c in two.enumerate()}
    assert two.num_networks == len(distinct) == len(list(two.enumerate(canonical=True))) == 1 + 3 + 6 + 6


@pytest.mark.parametrize("dead_when, match", [
    ({"zz": [("depth", 0)]}, r"'zz' is not a dim of the space"),
    ({"b0": [("nodepth", 0)]}, r"b0: depth dim 'nodepth' is not in the space"),
    ({"b0": [("depth", 3)]}, r"b0: position 3 outside \[0, 3\) of 'depth'"),
    ({"b0": []}, r"b0: empty list"),
    ({"b0": ["depth"]}, r"b0: \['depth'\] is not a list of \(depth dim, position\) pairs"),
    ({"b0": [("depth", 0)], "depth": [("stem", 0)]}, r"depth dims \['depth'\] are both listed as dead"),
])
def test_dead_when_errors(dead_when, match):
    space = depth_space()
    with pytest.raises(ConfigError, match=r"invalid `dead_when`: .*" + match + r".*HINT"):
        space.set_dead_when(dead_when)
    assert space.dead_when == depth_space().dead_when  # nothing half-set
    with pytest.raises(ConfigError, match=r"`dead_when` must be a dict .*got list.*HINT"):
        space.set_dead_when([("b0", 0)])
