"""The shared machinery: inference cache, adopt semantics, ``dims``/``is_full``."""

from __future__ import annotations

import copy

import torch
from torch import nn

from lightning_elastic import ElasticDim
from lightning_elastic.ops.base import Axis, as_axis
from lightning_elastic.ops.linear import ElasticLinear
from tests.ops._checks import close


def make():
    lin = nn.Linear(6, 8)
    dim = ElasticDim("out", [4, 8], 8)
    return ElasticLinear.from_module(lin, out_axis=dim), lin, dim


def test_axis_sizes_and_as_axis():
    dim = ElasticDim("h", [1, 2, 4], 4, kind="heads")
    ax = Axis(dim, unit=8, segments=3)
    assert (ax.full_size, ax.active_size, ax.is_full) == (96, 96, True)
    dim.active = 2
    assert (ax.active_size, ax.is_full) == (48, False)
    assert as_axis(None) is None and as_axis(ax) is ax and as_axis(dim).dim is dim


def test_dims_and_is_full():
    op, _, dim = make()
    assert op.dims() == [dim] and op.is_full()
    dim.active = 4
    assert not op.is_full()


def test_cache_reused_under_no_grad_and_invalidated_on_select():
    op, _, dim = make()
    dim.active = 4
    with torch.no_grad():
        w1, b1 = op.sliced("weight", "bias")
        w2, b2 = op.sliced("weight", "bias")
        assert w1 is w2 and b1 is b2 and w1.is_contiguous()
        dim.active = 8
        dim.active = 4  # a new select of the same size may reuse: values are the same
        dim.active = 8
        assert op.sliced("weight")[0] is op.weight
        dim.active = 4
        w3 = op.sliced("weight", "bias")[0]
        assert torch.equal(w3, op.weight[:4])
    # with autograd on, a view of the Parameter is used (gradients must reach it)
    w4 = op.sliced("weight", "bias")[0]
    assert w4._base is op.weight


def test_cache_invalidated_after_optimizer_step_and_load_state_dict():
    op, lin, dim = make()
    dim.active = 4
    x = torch.randn(3, 6)
    with torch.no_grad():
        before = op(x)
        assert torch.equal(op(x), before)
    opt = torch.optim.SGD(op.parameters(), lr=0.5)
    op(x).sum().backward()
    opt.step()
    with torch.no_grad():
        after = op(x)
        close(after, x @ lin.weight[:4].T + lin.bias[:4])
        assert not torch.equal(after, before)
    other = copy.deepcopy(lin)
    with torch.no_grad():
        other.weight.mul_(2)
    op.load_state_dict(other.state_dict())
    with torch.no_grad():
        close(op(x), x @ other.weight[:4].T + other.bias[:4])


def test_adopt_keeps_hooks_and_attributes():
    lin = nn.Linear(3, 4)
    calls = []
    lin.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    lin.custom = "kept"
    op = ElasticLinear.from_module(lin, out_axis=ElasticDim("o", [2, 4], 4))
    op(torch.randn(1, 3))
    assert calls == [torch.Size([1, 4])] and op.custom == "kept"


def test_deepcopy_after_load_state_dict_following_a_no_grad_subnet_forward():
    """An EMA teacher copied from a restored supernet: the per-select cache of no-grad slices must not be copied."""
    import copy

    import timm

    from lightning_elastic import to_supernet

    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    net = to_supernet(model, width=(0.5, 1.0))
    net.select(net.space.min_config())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x)  # materialises the cached slices
    model.load_state_dict(copy.deepcopy(model.state_dict()))
    twin = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x))
