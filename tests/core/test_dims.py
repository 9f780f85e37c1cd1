from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_elastic import ConfigError, ElasticDim
from lightning_elastic.core.dims import _GENERATION, DIM_KINDS


def test_choices_sorted_deduplicated_and_active_starts_at_full():
    dim = ElasticDim("a", [32, 8, 16, 32], full=32)
    assert dim.choices == (8, 16, 32)
    assert (dim.min, dim.max, dim.active, dim.full) == (8, 32, 32, 32)
    assert dim.is_elastic
    assert not ElasticDim("b", [4], full=4).is_elastic


def test_empty_choices_error():
    with pytest.raises(ConfigError, match=r"`choices` of dimension 'a' is empty.*HINT"):
        ElasticDim("a", [], full=4)


def test_bad_kind_error():
    with pytest.raises(ConfigError, match=r"`kind` of dimension 'a' is 'colour'; allowed: width.*HINT"):
        ElasticDim("a", [4], full=4, kind="colour")


@pytest.mark.parametrize("choices", [[2, 8], [0, 4], [2, 3]])
def test_largest_choice_must_be_full_and_positive(choices):
    with pytest.raises(ConfigError, match=r"largest must equal the model's full size 4.*HINT: include 4"):
        ElasticDim("a", choices, full=4)


def test_choices_setter_validates_and_resets_active():
    dim = ElasticDim("a", [2, 4, 8], full=8)
    dim.active = 2
    dim.choices = [4, 8]
    assert dim.choices == (4, 8) and dim.active == 8  # 2 is no longer a choice: back to max
    with pytest.raises(ConfigError, match=r"`choices` for dimension 'a' got \[4, 9\].*\[1, 8\].*HINT"):
        dim.choices = [4, 9]
    with pytest.raises(ConfigError, match=r"`choices` for dimension 'a' got \[\]"):
        dim.choices = []


def test_listeners_and_generation_fire_only_on_change():
    dim = ElasticDim("a", [2, 4], full=4)
    seen = []
    dim.on_change(seen.append)
    g0 = _GENERATION[0]
    dim.active = 4  # unchanged: no event
    assert seen == [] and _GENERATION[0] == g0
    dim.active = 2
    dim.active = 4
    assert seen == [2, 4] and _GENERATION[0] == g0 + 2


def test_couple_collects_tensors_and_skips_missing_bias():
    dim = ElasticDim("a", [2, 4], full=4)
    lin = nn.Linear(3, 4, bias=False)
    group = dim.couple().add(lin, "weight", 0).add(lin, "bias", 0)
    assert dim.groups == [group]
    assert [(ct.name, ct.axis, ct.scores) for ct in group.tensors] == [("weight", 0, True)]
    assert group.tensors[0].tensor is lin.weight
    bn = nn.BatchNorm2d(4)
    group.add(bn, "running_mean", 0)
    assert group.tensors[-1].scores is False  # 1-D tensors do not score by default


def test_to_dict_and_repr():
    dim = ElasticDim("layer1.depth", [1, 2], full=2, kind="depth")
    assert dim.to_dict() == {"name": "layer1.depth", "kind": "depth", "full": 2, "choices": [1, 2]}
    assert "layer1.depth" in repr(dim) and "active=2" in repr(dim)
    assert "width" in DIM_KINDS and isinstance(torch.tensor(dim.full).item(), int)
