from __future__ import annotations

import copy

import torch
from torch import nn

from lightning_elastic import ElasticDim
from lightning_elastic.ops.base import Axis
from lightning_elastic.ops.linear import ElasticLinear
from tests.ops._checks import assert_export_is_plain, assert_shares_parameters, close, grad_mask_check


def make(bias: bool = True):
    lin = nn.Linear(6, 8, bias=bias)
    ref = copy.deepcopy(lin)
    din, dout = ElasticDim("in", [3, 6], 6), ElasticDim("out", [2, 4, 8], 8)
    return ElasticLinear.from_module(lin, in_axis=din, out_axis=dout), lin, ref, din, dout


def test_full_size_is_the_original():
    op, lin, ref, _, _ = make()
    assert_shares_parameters(op, lin)
    x = torch.randn(5, 6)
    assert torch.equal(op(x), ref(x))
    weight, bias = op.sliced("weight", "bias")
    assert weight is lin.weight and bias is lin.bias
    with torch.no_grad():
        assert op.sliced("weight")[0] is lin.weight


def test_smaller_equals_fresh_small_linear_and_export():
    for bias in (True, False):
        op, _, ref, din, dout = make(bias)
        din.active, dout.active = 3, 4
        small = nn.Linear(3, 4, bias=bias)
        with torch.no_grad():
            small.weight.copy_(ref.weight[:4, :3])
            if bias:
                small.bias.copy_(ref.bias[:4])
        x = torch.randn(5, 3)
        close(op(x), small(x))
        exported = op.export_module()
        assert_export_is_plain(exported, nn.Linear, {"weight": (4, 3)})
        assert (exported.in_features, exported.out_features) == (3, 4)
        assert torch.equal(exported(x), small(x))
        assert op.weight.shape == (8, 6)  # export leaves the op alone


def test_gradients_outside_active_slice_are_zero():
    op, lin, _, din, dout = make()
    din.active, dout.active = 3, 2
    op(torch.randn(4, 3)).pow(2).sum().backward()
    grad_mask_check(lin.weight, (slice(0, 2), slice(0, 3)))
    grad_mask_check(lin.bias, (slice(0, 2),))


def test_only_one_axis_elastic():
    lin = nn.Linear(6, 8)
    dout = ElasticDim("out", [4, 8], 8)
    op = ElasticLinear.from_module(lin, out_axis=dout)
    dout.active = 4
    x = torch.randn(2, 6)
    close(op(x), x @ lin.weight[:4].T + lin.bias[:4])


def test_fused_segments_with_units():
    # fused qkv: 3 segments × 4 heads × head_dim 2, keep 1 head per segment
    lin = nn.Linear(5, 24)
    heads = ElasticDim("heads", [1, 2, 4], 4, kind="heads")
    op = ElasticLinear.from_module(lin, out_axis=Axis(heads, unit=2, segments=3))
    heads.active = 1
    x = torch.randn(3, 5)
    rows = torch.tensor([0, 1, 8, 9, 16, 17])
    close(op(x), x @ lin.weight[rows].T + lin.bias[rows])
    assert op.export_module().out_features == 6
