from __future__ import annotations

import copy

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from lightning_elastic import ElasticDim
from lightning_elastic.ops.batchnorm import ElasticBatchNorm2d
from tests.ops._checks import assert_export_is_plain, assert_shares_parameters, close, grad_mask_check


def make(cls=nn.BatchNorm2d, **kwargs):
    bn = cls(6, **kwargs)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
        if bn.running_mean is not None:
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    dim = ElasticDim("c", [3, 6], 6)
    return ElasticBatchNorm2d.from_module(bn, dim), bn, copy.deepcopy(bn), dim


@pytest.mark.parametrize("training", [False, True])
def test_full_size_is_the_original(training):
    op, bn, ref, _ = make()
    assert_shares_parameters(op, bn)
    op.train(training), ref.train(training)
    x = torch.randn(4, 6, 3, 3)
    assert torch.equal(op(x), ref(x))
    assert torch.equal(op.running_mean, ref.running_mean) and torch.equal(op.running_var, ref.running_var)


def fresh_small(ref: nn.BatchNorm2d, n: int) -> nn.BatchNorm2d:
    small = nn.BatchNorm2d(n, momentum=ref.momentum)
    small.load_state_dict({k: (v[:n] if v.dim() else v) for k, v in ref.state_dict().items()})
    return small


@pytest.mark.parametrize("momentum", [0.1, None])
def test_train_mode_updates_only_the_active_prefix(momentum):
    op, bn, ref, dim = make(momentum=momentum)
    dim.active = 3
    small = fresh_small(ref, 3)
    op.train(), small.train()
    for _ in range(2):
        x = torch.randn(8, 3, 4, 4)
        close(op(x), small(x))
    close(bn.running_mean[:3], small.running_mean)
    close(bn.running_var[:3], small.running_var)
    assert torch.equal(bn.running_mean[3:], ref.running_mean[3:]) and torch.equal(bn.running_var[3:], ref.running_var[3:])
    assert int(bn.num_batches_tracked) == 2


def test_eval_mode_and_export():
    op, _, ref, dim = make()
    dim.active = 3
    op.eval()
    small = fresh_small(ref, 3).eval()
    x = torch.randn(2, 3, 4, 4)
    close(op(x), small(x))
    with torch.no_grad():
        close(op(x), small(x))
    exported = op.export_module()
    assert_export_is_plain(exported, nn.BatchNorm2d, {"weight": (3,), "bias": (3,), "running_mean": (3,),
                                                     "running_var": (3,)})
    assert exported.num_features == 3
    close(exported(x), small(x))


def test_gradients_outside_active_slice_are_zero():
    op, bn, _, dim = make()
    dim.active = 3
    op.train()
    (op(torch.randn(4, 3, 2, 2)) * torch.arange(1.0, 4.0).view(1, 3, 1, 1)).pow(3).sum().backward()
    grad_mask_check(bn.weight, (slice(0, 3),))
    grad_mask_check(bn.bias, (slice(0, 3),))


def test_timm_batchnorm_act_applies_act_and_drop():
    op, bn, ref, dim = make(BatchNormAct2d, act_layer=nn.ReLU6, drop_layer=lambda: nn.Dropout(0.5))
    x = torch.randn(4, 6, 3, 3) * 10
    for training in (False, True):
        op.train(training), ref.train(training)
        torch.manual_seed(0)
        a = op(x)
        torch.manual_seed(0)
        assert torch.equal(a, ref(x))
    op.eval(), ref.eval()
    dim.active = 3
    small = BatchNormAct2d(3, act_layer=nn.ReLU6).eval()
    small.load_state_dict({k: (v[:3] if v.dim() else v) for k, v in ref.state_dict().items()})
    out = op(x[:, :3])
    close(out, small(x[:, :3]))
    assert out.max() <= 6.0 and out.min() >= 0.0
    exported = op.export_module()
    assert type(exported) is BatchNormAct2d and exported.num_features == 3
    close(exported(x[:, :3]), out)


def test_without_running_stats():
    op, _, _, dim = make(track_running_stats=False)
    dim.active = 3
    x = torch.randn(4, 3, 2, 2)
    op.eval()
    close(op(x), nn.functional.batch_norm(x, None, None, op.weight[:3], op.bias[:3], True, 0.0, op.eps))


def test_eval_cache_follows_running_stats_updates():
    op, bn, _, dim = make()
    dim.active = 3
    x = torch.randn(4, 3, 2, 2)
    op.eval()
    with torch.no_grad():
        first = op(x)
        assert op.sliced("running_mean")[0] is op.sliced("running_mean")[0]
    op.train()
    op(torch.randn(8, 3, 2, 2) + 3.0)  # moves the running statistics of the active prefix
    op.eval()
    small = fresh_small(bn, 3).eval()
    with torch.no_grad():
        again = op(x)
        close(again, small(x))
    assert not torch.allclose(again, first)
