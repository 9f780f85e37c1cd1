import pytest
import torch

from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.core.errors import ConfigError
from lightning_elastic.core.space import SearchSpace
from lightning_elastic.training.samplers import (
    DelayedShrinkingSampler,
    NestedSampler,
    Phase,
    ProgressiveShrinkingSampler,
    SandwichSampler,
    StepContext,
    UniformSampler,
    resolve_sampler,
)


def space() -> SearchSpace:
    return SearchSpace([
        ElasticDim("stage.depth", [2, 3, 4], 4, kind="depth"),
        ElasticDim("stage.0.width", [16, 32, 48, 64], 64, kind="width"),
        ElasticDim("stage.1.kernel", [3, 5, 7], 7, kind="kernel"),
    ])


def test_sandwich_is_max_random_min_and_deterministic():
    s = SandwichSampler(num_random=2)
    a = s.subnets(space(), StepContext(step=5), seed=1)
    assert [t for t, _ in a] == ["max", "rand0", "rand1", "min"]
    assert a[0][1] == space().max_config() and a[-1][1] == space().min_config()
    assert a == s.subnets(space(), StepContext(step=5), seed=1)  # pure function of (seed, step)
    steps = [s.subnets(space(), StepContext(step=k), seed=1)[1][1] for k in range(20)]
    assert len({tuple(c.values()) for c in steps}) > 5  # a different draw per step
    assert s.subnets(space(), StepContext(step=5), seed=2) != a


def test_sandwich_does_not_touch_global_rng():
    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)
    SandwichSampler(3).subnets(space(), StepContext(step=0), seed=0)
    assert torch.equal(torch.rand(1), expected)


def test_uniform_and_nested():
    u = UniformSampler(3).subnets(space(), StepContext(step=0), seed=0)
    assert [t for t, _ in u] == ["rand0", "rand1", "rand2"]
    n = NestedSampler(num_random=2, levels=3).subnets(space(), StepContext(step=0), seed=0)
    assert [t for t, _ in n] == ["max", "nested0", "nested1", "min"]
    mid = n[1][1]  # level 1 of 3: every dim at its middle choice -> sorted, nested sub-models
    assert mid == {"stage.depth": 3, "stage.0.width": 48, "stage.1.kernel": 5}
    for _, cfg in n:
        assert all(cfg[k] <= v for k, v in space().max_config().items())


def test_progressive_phases_open_kinds_by_epoch():
    s = ProgressiveShrinkingSampler([(0, {}), (2, {"kernel": None}), (4, {"kernel": None, "depth": 2})], num_random=4)
    assert s.subnets(space(), StepContext(step=0, epoch=0), 0) == [("max", space().max_config())]
    phase1 = s.subnets(space(), StepContext(step=0, epoch=3), 0)
    assert all(c["stage.depth"] == 4 and c["stage.0.width"] == 64 for _, c in phase1)
    seen_kernels = {c["stage.1.kernel"] for k in range(10) for _, c in s.subnets(space(), StepContext(k, 3), 0)}
    assert seen_kernels == {3, 5, 7}
    depths = {c["stage.depth"] for k in range(10) for _, c in s.subnets(space(), StepContext(k, 9), 0)}
    assert depths == {3, 4}  # the 2 largest depth choices only in that phase (OFA's first depth stage)
    assert isinstance(ProgressiveShrinkingSampler().phases[0], Phase)


def test_delayed_shrinking_starts_after_fraction():
    s = DelayedShrinkingSampler(num_random=1, start=0.5)
    assert [t for t, _ in s.subnets(space(), StepContext(3, progress=0.2), 0)] == ["max"]
    assert [t for t, _ in s.subnets(space(), StepContext(3, progress=0.6), 0)] == ["max", "rand0", "min"]


def test_resolve_sampler_names():
    assert isinstance(resolve_sampler("sandwich", 2), SandwichSampler)
    assert resolve_sampler("uniform", 0).num_random == 1
    assert isinstance(resolve_sampler("nested", 1), NestedSampler)


@pytest.mark.parametrize("bad", ["sandwhich", 3, None])
def test_unknown_sampler(bad):
    with pytest.raises(ConfigError, match=r"`sampler` got .*allowed: .*sandwich.*HINT"):
        resolve_sampler(bad, 2)


def test_bad_sampler_arguments():
    with pytest.raises(ConfigError, match=r"`num_random` got -1; allowed: an integer >= 0"):
        SandwichSampler(-1)
    with pytest.raises(ConfigError, match=r"`num_random` got 0; allowed: an integer >= 1"):
        UniformSampler(0)
    with pytest.raises(ConfigError, match=r"`start` got 1.5"):
        DelayedShrinkingSampler(start=1.5)
    with pytest.raises(ConfigError, match=r"`phases` start epochs are \[2\]"):
        ProgressiveShrinkingSampler([(2, {"depth": None})])
    with pytest.raises(ConfigError, match=r"`phases` has an invalid phase .*kinds from"):
        ProgressiveShrinkingSampler([(0, {"colour": None})])
    with pytest.raises(ConfigError, match=r"`levels` got 1"):
        NestedSampler(levels=1)
