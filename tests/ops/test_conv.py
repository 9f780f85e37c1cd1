from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_elastic import ConversionError, ElasticDim
from lightning_elastic.ops.conv import ElasticConv2d
from tests.ops._checks import assert_export_is_plain, assert_shares_parameters, close, grad_mask_check


def test_full_size_is_the_original():
    conv = nn.Conv2d(4, 6, 3, padding=1, stride=2)
    ref = copy.deepcopy(conv)
    op = ElasticConv2d.from_module(conv, in_axis=ElasticDim("i", [2, 4], 4), out_axis=ElasticDim("o", [3, 6], 6),
                                   kernel_dim=ElasticDim("k", [1, 3], 3, kind="kernel"))
    assert_shares_parameters(op, conv)
    x = torch.randn(2, 4, 9, 9)
    assert torch.equal(op(x), ref(x))
    assert op.sliced("weight")[0] is conv.weight


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_channels_and_kernel_crop_equal_fresh_small_conv(padding_mode):
    conv = nn.Conv2d(4, 6, 5, padding=2, stride=1, padding_mode=padding_mode)
    din, dout = ElasticDim("i", [2, 4], 4), ElasticDim("o", [3, 6], 6)
    k = ElasticDim("k", [3, 5], 5, kind="kernel")
    op = ElasticConv2d.from_module(conv, in_axis=din, out_axis=dout, kernel_dim=k)
    din.active, dout.active, k.active = 2, 3, 3
    small = nn.Conv2d(2, 3, 3, padding=1, padding_mode=padding_mode)
    with torch.no_grad():
        small.weight.copy_(conv.weight[:3, :2, 1:4, 1:4])
        small.bias.copy_(conv.bias[:3])
    x = torch.randn(2, 2, 8, 8)
    close(op(x), small(x))
    with torch.no_grad():
        close(op(x), small(x))  # cached path
    exported = op.export_module()
    assert_export_is_plain(exported, nn.Conv2d, {"weight": (3, 2, 3, 3), "bias": (3,)})
    assert (exported.in_channels, exported.out_channels, exported.kernel_size, exported.padding) == (2, 3, (3, 3), (1, 1))
    assert torch.equal(exported(x), small(x))
    assert exported(x).shape == (2, 3, 8, 8)


def test_depthwise_groups_follow_channels():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    dim = ElasticDim("c", [4, 8], 8)
    op = ElasticConv2d.from_module(conv, out_axis=dim, depthwise=True)
    dim.active = 4
    x = torch.randn(1, 4, 5, 5)
    close(op(x), F.conv2d(x, conv.weight[:4], None, 1, 1, 1, 4))
    exported = op.export_module()
    assert exported.groups == 4 and exported.in_channels == 4 and exported.weight.shape == (4, 1, 3, 3)
    close(exported(x), op(x))


def test_gradients_outside_active_slice_are_zero():
    conv = nn.Conv2d(4, 6, 5, padding=2)
    din, dout = ElasticDim("i", [2, 4], 4), ElasticDim("o", [3, 6], 6)
    k = ElasticDim("k", [3, 5], 5, kind="kernel")
    op = ElasticConv2d.from_module(conv, in_axis=din, out_axis=dout, kernel_dim=k)
    din.active, dout.active, k.active = 2, 3, 3
    op(torch.randn(2, 2, 6, 6)).pow(2).sum().backward()
    grad_mask_check(conv.weight, (slice(0, 3), slice(0, 2), slice(1, 4), slice(1, 4)))
    grad_mask_check(conv.bias, (slice(0, 3),))


def test_kernel_transform_adds_identity_matrices_and_export_drops_them():
    conv = nn.Conv2d(2, 2, 7, padding=3, groups=2, bias=False)
    k = ElasticDim("k", [3, 5, 7], 7, kind="kernel")
    op = ElasticConv2d.from_module(conv, out_axis=ElasticDim("c", [2], 2), depthwise=True, kernel_dim=k,
                                   kernel_transform=True)
    assert sorted(n for n, _ in op.named_parameters()) == ["kernel_transform_3x3", "kernel_transform_5x5", "weight"]
    k.active = 3
    x = torch.randn(1, 2, 6, 6)
    # identity transforms: same as a plain centre crop
    close(op(x), F.conv2d(x, conv.weight[..., 2:5, 2:5], None, 1, 1, 1, 2))
    with torch.no_grad():
        op.kernel_transform_5x5.mul_(2.0)
        op.kernel_transform_3x3.mul_(3.0)
    # 7 → centre 5 → ×2 → centre 3 → ×3
    close(op(x), F.conv2d(x, 6.0 * conv.weight[..., 2:5, 2:5], None, 1, 1, 1, 2))
    op(x).sum().backward()
    assert op.kernel_transform_3x3.grad is not None and op.kernel_transform_5x5.grad is not None
    exported = op.export_module()
    assert [n for n, _ in exported.named_parameters()] == ["weight"]
    close(exported(x), op(x))


def test_errors():
    with pytest.raises(ConversionError, match=r"square kernel with static padding, got kernel_size=\(3, 1\).*HINT"):
        ElasticConv2d.from_module(nn.Conv2d(2, 2, (3, 1), padding=(1, 0)), kernel_dim=ElasticDim("k", [1, 3], 3))
    with pytest.raises(ConversionError, match=r"padding='same'.*HINT"):
        ElasticConv2d.from_module(nn.Conv2d(2, 2, 3, padding="same"), kernel_dim=ElasticDim("k", [1, 3], 3))
    with pytest.raises(ConversionError, match=r"`kernel` choices must be odd sizes <= 5, got \[4, 5\].*HINT"):
        ElasticConv2d.from_module(nn.Conv2d(2, 2, 5, padding=2), kernel_dim=ElasticDim("k", [4, 5], 5))
    with pytest.raises(ConversionError, match=r"`kernel` choices must be odd sizes <= 3, got \[3, 5\].*HINT"):
        ElasticConv2d.from_module(nn.Conv2d(2, 2, 3, padding=1), kernel_dim=ElasticDim("k", [3, 5], 5))
    with pytest.raises(ConversionError, match=r"`depthwise=True` needs groups == in_channels, got groups=1.*HINT"):
        ElasticConv2d.from_module(nn.Conv2d(2, 2, 3), out_axis=ElasticDim("c", [1, 2], 2), depthwise=True)


def test_inference_cache_follows_kernel_transforms():
    # under no_grad the cropped kernel is materialised once per select; it is computed through the learned
    # transform matrices, so an in-place update of those (an optimizer step on them alone) must invalidate it
    conv = nn.Conv2d(3, 4, 5, padding=2, bias=False)
    k = ElasticDim("k", [3, 5], 5, kind="kernel")
    op = ElasticConv2d.from_module(conv, kernel_dim=k, kernel_transform=True)
    k.active = 3
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        before = op(x)
        op.kernel_transform_3x3.add_(0.5 * torch.randn(9, 9))
        after = op(x)
        centre = conv.weight[:, :, 1:4, 1:4].reshape(-1, 9) @ op.kernel_transform_3x3
        close(after, F.conv2d(x, centre.reshape(4, 3, 3, 3), None, 1, 1))
    assert not torch.allclose(before, after)


def test_plan_is_rebuilt_per_select_and_per_copy():
    # the per-select state (active padding, groups, cached slices) must follow every dim change, including one
    # made on a deep copy of the op (e.g. an EMA teacher), and each copy must compute with its own tensors
    conv = nn.Conv2d(6, 6, 5, padding=2, groups=6, bias=False)
    ch, k = ElasticDim("c", [2, 4, 6], 6), ElasticDim("k", [3, 5], 5, kind="kernel")
    op = ElasticConv2d.from_module(conv, out_axis=ch, depthwise=True, kernel_dim=k)
    with torch.no_grad():
        for c, ks in [(4, 3), (2, 5), (6, 3), (4, 3)]:
            ch.active, k.active = c, ks
            x = torch.randn(1, c, 7, 7)
            s = (5 - ks) // 2
            close(op(x), F.conv2d(x, conv.weight[:c, :, s:s + ks, s:s + ks], None, 1, ks // 2, 1, c))
        twin = copy.deepcopy(op)
        twin.weight.mul_(-1)
        x = torch.randn(1, 4, 7, 7)
        close(twin(x), -op(x))
