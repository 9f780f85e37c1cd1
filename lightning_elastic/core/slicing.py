"""The one slicing mechanism: prefix slices of the original tensors.

At full size the original Parameter itself is returned, so the max subnet runs the original code path and gradients
flow into the Parameter unchanged. Smaller sizes are views (prefix narrows), so gradients outside the active slice
are exactly zero.
"""

from __future__ import annotations

import torch


def slice_axis(tensor: torch.Tensor, axis: int, active: int, full: int, unit: int = 1, segments: int = 1) -> torch.Tensor:
    """Keep the first ``active * unit`` elements of each of ``segments`` equal segments along ``axis``.

    Args:
        tensor: the tensor to slice.
        axis: which axis.
        active: active number of units per segment.
        full: full number of units per segment (``tensor.shape[axis] == segments * full * unit``).
        unit: elements per unit (e.g. ``head_dim``).
        segments: number of equal segments (e.g. 3 for fused qkv, or the number of KV groups).

    Returns:
        ``tensor`` itself when ``active == full``, else a view (a copy only when ``segments > 1``).
    """
    if active == full:
        return tensor
    axis = axis % tensor.dim()
    if segments == 1:
        return tensor.narrow(axis, 0, active * unit)
    shape = list(tensor.shape)
    seg_shape = shape[:axis] + [segments, full * unit] + shape[axis + 1:]
    out = tensor.reshape(seg_shape).narrow(axis + 1, 0, active * unit)
    return out.reshape(shape[:axis] + [segments * active * unit] + shape[axis + 1:])


def sliced(tensor: torch.Tensor | None, spec: list[tuple[int, int, int, int, int]]) -> torch.Tensor | None:
    """Apply several :func:`slice_axis` calls; ``spec`` holds ``(axis, active, full, unit, segments)`` tuples."""
    if tensor is None:
        return None
    for axis, active, full, unit, segments in spec:
        tensor = slice_axis(tensor, axis, active, full, unit, segments)
    return tensor


def permute_axis(tensor: torch.Tensor, axis: int, perm: torch.Tensor, unit: int = 1, segments: int = 1) -> torch.Tensor:
    """Reorder units along ``axis`` by ``perm`` (same permutation inside every segment). Returns a new tensor."""
    axis = axis % tensor.dim()
    n_units = perm.numel()
    idx = (perm.view(-1, 1) * unit + torch.arange(unit)).reshape(-1)
    idx = (idx.view(1, -1) + torch.arange(segments).view(-1, 1) * (n_units * unit)).reshape(-1)
    return tensor.index_select(axis, idx.to(tensor.device))
