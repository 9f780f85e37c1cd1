from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_elastic import ConfigError, ElasticDim
from lightning_elastic.adapters.kit import couple_in, couple_out
from lightning_elastic.core.importance import IMPORTANCE, importance_order, reorder_dim, resolve_importance


def mlp_with_dim():
    model = nn.Sequential(nn.Linear(5, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3)).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    dim = ElasticDim("hidden", [6, 12], full=12)
    group = dim.couple()
    couple_out(group, model[0])
    group.add(model[1], "weight", 0, scores=False).add(model[1], "bias", 0)
    group.add(model[1], "running_mean", 0).add(model[1], "running_var", 0)
    couple_in(group, model[3])
    return model, dim


@pytest.mark.parametrize("name", ["l1", "l2"])
def test_reorder_is_function_preserving_and_sorted(name):
    model, dim = mlp_with_dim()
    x = torch.randn(7, 5)
    before = model(x)
    w0 = model[0].weight
    reorder_dim(dim, resolve_importance(name))
    assert model[0].weight is w0  # the Parameter object survives, its values move
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)
    p = 1 if name == "l1" else 2
    # the default score of a unit: its out-row norm of fc1 (the only tensor that scores), normalised
    score = model[0].weight.norm(p=p, dim=1)
    assert torch.all(score[:-1] >= score[1:])
    assert dim.importance is not None and sorted(dim.importance[0].tolist()) == list(range(12))


def test_custom_callable_is_used():
    model, dim = mlp_with_dim()
    x = torch.randn(4, 5)
    before = model(x)
    bias_before = model[0].bias.detach().clone()
    # custom: order by fc1 bias, ascending (score = -bias)
    reorder_dim(dim, lambda group, n: -group.tensors[1].tensor.detach())
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)
    assert torch.equal(model[0].bias.detach(), bias_before.sort().values)


def test_custom_callable_bad_output_error():
    model, dim = mlp_with_dim()
    with pytest.raises(ConfigError, match=r"`importance` returned \(3,\) for dimension 'hidden'; allowed: a 1-D tensor "
                                          r"of 12 scores.*HINT"):
        importance_order(dim, lambda group, n: torch.zeros(3))


def test_resolve_importance():
    assert resolve_importance(None) is None
    fn = lambda g, n: torch.zeros(n)  # noqa: E731
    assert resolve_importance(fn) is fn
    assert resolve_importance("l1") is IMPORTANCE["l1"]
    with pytest.raises(ConfigError, match=r"`importance` got 'fisher'; allowed: \['l1', 'l2'\].*HINT"):
        resolve_importance("fisher")


def test_segments_and_units_are_permuted_together():
    # a fused "qkv" with 2 heads of 3: one head permutation applied inside each of the 3 segments
    lin = nn.Linear(4, 18)
    dim = ElasticDim("heads", [1, 2], full=2, kind="heads")
    group = dim.couple().add(lin, "weight", 0, unit=3, segments=3)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[3:6] = 1.0  # head 1 of q is the heavier one
    original = lin.weight.detach().clone()
    reorder_dim(dim, IMPORTANCE["l1"])
    assert dim.importance[0].tolist() == [1, 0]
    assert group.tensors[0].tensor is lin.weight
    expected = original.view(3, 2, 3, 4)[:, [1, 0]].reshape(18, 4)
    assert torch.equal(lin.weight.detach(), expected)


def test_importance_names_and_the_data_free_fallback():
    from lightning_elastic.core.importance import check_importance

    for name in ("auto", "activation", "l1", "l2", None):
        check_importance(name)
    assert resolve_importance("auto") is IMPORTANCE["l1"]  # without data 'auto' is L1
    with pytest.raises(ConfigError, match=r"`importance`='activation' scores units on real data, but "
                                          r"`calibration_data` is None.*HINT: pass calibration_data="):
        resolve_importance("activation")


@pytest.mark.parametrize("value", ["first", {"layers.depth": []}, {"layers.depth": ["0", 1]}, {3: [0, 1]}, 3, {}])
def test_bad_depth_importance(value):
    from lightning_elastic import SearchSpaceConfig

    with pytest.raises(ConfigError, match=r"`depth_importance` got .*; allowed: 'auto'.*'influence'.*HINT"):
        SearchSpaceConfig(depth_importance=value)


def test_depth_importance_round_trips_through_json():
    import json

    from lightning_elastic import SearchSpaceConfig

    cfg = SearchSpaceConfig(depth_importance={"layers.depth": (0, 2, 1)})
    assert cfg.depth_importance == {"layers.depth": [0, 2, 1]}
    assert SearchSpaceConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert SearchSpaceConfig().importance == "auto" and SearchSpaceConfig().depth_importance == "auto"


def test_real_tokens_drop_padding_rows_only_when_the_mask_fits():
    from lightning_elastic.core.importance import real_tokens, token_mask

    x = torch.arange(2 * 3 * 4, dtype=torch.float).reshape(2, 3, 4)
    mask = token_mask({"input_ids": torch.zeros(2, 3), "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])})
    assert torch.equal(real_tokens(x, mask), torch.stack([x[0, 0], x[0, 1], x[1, 0]]))
    assert real_tokens(x, None).shape == (6, 4)
    assert real_tokens(x.reshape(6, 4), mask).shape == (6, 4)  # a flattened tensor: the mask does not fit, keep all
    assert token_mask((x, mask)) is None and token_mask({"pixel_values": x}) is None
