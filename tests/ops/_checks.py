"""Checks every elastic op test runs."""

from __future__ import annotations

import torch
from torch import nn


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def assert_shares_parameters(op: nn.Module, original: nn.Module) -> None:
    """Same Parameter objects under the same names (no copy), so state_dict keys are unchanged."""
    assert list(op.state_dict()) == list(original.state_dict())
    for name, p in original.named_parameters(recurse=False):
        assert getattr(op, name) is p


def assert_export_is_plain(exported: nn.Module, base: type, shapes: dict[str, tuple[int, ...]]) -> None:
    """The export is exactly the base class, holds fresh physically small tensors and no elastic state."""
    assert type(exported) is base
    for name, shape in shapes.items():
        t = getattr(exported, name)
        assert tuple(t.shape) == shape, name
        assert t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size(), name
    assert not any(hasattr(exported, a) for a in ("_slices", "_cache", "_cache_key", "_dims_memo", "_base_cls"))


def grad_mask_check(param: torch.Tensor, active: tuple[slice, ...]) -> None:
    """Gradient is non-zero somewhere inside ``active`` and exactly zero outside it."""
    mask = torch.zeros_like(param, dtype=torch.bool)
    mask[active] = True
    assert param.grad is not None
    assert torch.all(param.grad[~mask] == 0)
    assert param.grad[mask].abs().sum() > 0
