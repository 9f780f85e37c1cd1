from __future__ import annotations

import copy

import torch
from torch import nn

from lightning_elastic import ElasticDim
from lightning_elastic.ops.layernorm import ElasticLayerNorm
from tests.ops._checks import assert_export_is_plain, assert_shares_parameters, close, grad_mask_check


def test_layernorm_full_small_export_and_grads():
    ln = nn.LayerNorm(8)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-1, 1)
    ref = copy.deepcopy(ln)
    dim = ElasticDim("e", [4, 8], 8)
    op = ElasticLayerNorm.from_module(ln, dim)
    assert_shares_parameters(op, ln)
    x = torch.randn(2, 3, 8)
    assert torch.equal(op(x), ref(x))
    dim.active = 4
    small = nn.LayerNorm(4)
    small.load_state_dict({k: v[:4] for k, v in ref.state_dict().items()})
    close(op(x[..., :4]), small(x[..., :4]))
    exported = op.export_module()
    assert_export_is_plain(exported, nn.LayerNorm, {"weight": (4,), "bias": (4,)})
    assert exported.normalized_shape == (4,)
    close(exported(x[..., :4]), small(x[..., :4]))
    (op(x[..., :4]) * torch.arange(4.0)).sum().backward()
    grad_mask_check(ln.weight, (slice(0, 4),))
