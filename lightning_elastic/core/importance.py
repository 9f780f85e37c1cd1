"""Importance ordering: a function-preserving permutation applied once at conversion.

Each channel group of an :class:`ElasticDim` gets a score per unit (channel, neuron, head); units are sorted by
descending score and every coupled tensor is permuted the same way, so the model computes the same function and a
prefix slice keeps the most important units.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lightning_elastic.core.dims import ChannelGroup, CoupledTensor, ElasticDim
from lightning_elastic.core.errors import ConfigError
from lightning_elastic.core.slicing import permute_axis

ImportanceFn = Callable[[ChannelGroup, int], torch.Tensor]


def _unit_norm(ct: CoupledTensor, n_units: int, p: int) -> torch.Tensor:
    t = ct.tensor.detach().float()
    axis = ct.axis % t.dim()
    t = t.movedim(axis, 0).reshape(ct.segments, n_units, ct.unit, -1)
    return t.abs().pow(p).sum(dim=(0, 2, 3)) if p == 1 else t.pow(2).sum(dim=(0, 2, 3)).sqrt()


def _norm_importance(p: int) -> ImportanceFn:
    def fn(group: ChannelGroup, n_units: int) -> torch.Tensor:
        tensors = [ct for ct in group.tensors if ct.scores] or group.tensors
        score = torch.zeros(n_units)
        for ct in tensors:
            s = _unit_norm(ct, n_units, p)
            score += s / (s.sum() + 1e-12)  # normalise so no single tensor dominates by scale
        return score

    return fn


IMPORTANCE: dict[str, ImportanceFn] = {"l1": _norm_importance(1), "l2": _norm_importance(2)}


def resolve_importance(importance: str | ImportanceFn | None) -> ImportanceFn | None:
    if importance is None or callable(importance):
        return importance
    if importance not in IMPORTANCE:
        raise ConfigError(
            f"`importance` got {importance!r}; allowed: {sorted(IMPORTANCE)}, None, or a callable "
            f"(group, n_units) -> scores. HINT: use 'l1' (the default) unless you have a calibration-based score."
        )
    return IMPORTANCE[importance]


@torch.no_grad()
def reorder_dim(dim: ElasticDim, importance: ImportanceFn) -> None:
    """Sort every channel group of ``dim`` by descending importance and permute its tensors in place."""
    perms = []
    for group in dim.groups:
        if not group.tensors:
            perms.append(torch.arange(0))
            continue
        first = group.tensors[0]
        n_units = first.tensor.shape[first.axis] // (first.unit * first.segments)
        scores = importance(group, n_units)
        perm = torch.argsort(scores, descending=True, stable=True)
        seen: set[int] = set()
        for ct in group.tensors:
            key = id(ct.tensor)
            if key in seen:
                continue
            seen.add(key)
            old = ct.tensor
            new = permute_axis(old.data, ct.axis, perm, ct.unit, ct.segments)
            old.data = new  # keep the Parameter object (and its name) and change its values only
        perms.append(perm)
    dim.importance = perms
