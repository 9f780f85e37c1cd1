from __future__ import annotations

import pytest
import torch

from lightning_elastic.core.slicing import permute_axis, slice_axis, sliced


def test_full_size_returns_the_tensor_itself():
    t = torch.nn.Parameter(torch.randn(6, 4))
    assert slice_axis(t, 0, 6, 6) is t
    assert sliced(t, [(0, 6, 6, 1, 1), (1, 4, 4, 1, 1)]) is t
    assert sliced(None, [(0, 1, 6, 1, 1)]) is None


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_unit_prefix_matches_manual_indexing(axis):
    t = torch.randn(12, 12, 12)
    out = slice_axis(t, axis, active=2, full=4, unit=3)
    assert torch.equal(out, t.narrow(axis % 3, 0, 6))
    assert out.data_ptr() == t.data_ptr()  # a view, no copy


def test_segments_slice_each_segment():
    # fused qkv: 3 segments of 4 heads of 2 → keep 3 heads of each
    t = torch.arange(24.0).view(24, 1)
    out = slice_axis(t, 0, active=3, full=4, unit=2, segments=3)
    expected = torch.cat([t[0:6], t[8:14], t[16:22]])
    assert torch.equal(out, expected)


def test_sliced_applies_several_axes():
    t = torch.randn(8, 6, 3, 3)
    out = sliced(t, [(0, 4, 8, 1, 1), (1, 2, 6, 1, 1)])
    assert torch.equal(out, t[:4, :2])


def test_gradient_outside_slice_is_zero():
    p = torch.nn.Parameter(torch.randn(12, 3))
    slice_axis(p, 0, active=2, full=4, unit=1, segments=3).sum().backward()
    mask = torch.zeros(12, dtype=torch.bool)
    for s in range(3):
        mask[s * 4: s * 4 + 2] = True
    assert torch.all(p.grad[mask] == 1) and torch.all(p.grad[~mask] == 0)


def test_permute_axis_units_and_segments():
    t = torch.arange(12.0)
    perm = torch.tensor([1, 0])
    # 2 segments of 2 units of 3
    out = permute_axis(t, 0, perm, unit=3, segments=2)
    assert out.tolist() == [3, 4, 5, 0, 1, 2, 9, 10, 11, 6, 7, 8]
    m = torch.randn(3, 5)
    p5 = torch.randperm(5)
    assert torch.equal(permute_axis(m, -1, p5), m[:, p5])
