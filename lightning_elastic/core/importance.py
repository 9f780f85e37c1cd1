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
    # one fused pass (sum |x| or sqrt(sum x²)): conversion of a 135M LLM spends most of its time here
    return torch.linalg.vector_norm(t, ord=p, dim=(0, 2, 3))


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
def importance_order(dim: ElasticDim, importance: ImportanceFn) -> list[torch.Tensor]:
    """One permutation per channel group of ``dim`` (descending score); reads tensors, changes nothing.

    Raises:
        ConfigError: the importance callable returned something other than ``n_units`` scores.
    """
    perms = []
    for group in dim.groups:
        if not group.tensors:
            perms.append(torch.arange(0))
            continue
        first = group.tensors[0]
        n_units = first.tensor.shape[first.axis] // (first.unit * first.segments)
        scores = importance(group, n_units)
        if not isinstance(scores, torch.Tensor) or scores.shape != (n_units,):
            got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ConfigError(
                f"`importance` returned {got} for dimension {dim.name!r}; allowed: a 1-D tensor of {n_units} "
                "scores (one per unit). HINT: reduce over every axis but the unit axis."
            )
        perms.append(torch.argsort(scores.detach().float().cpu(), descending=True, stable=True))
    return perms


@torch.no_grad()
def apply_order(dim: ElasticDim, perms: list[torch.Tensor]) -> None:
    """Permute every tensor of ``dim``'s channel groups in place by ``perms`` (from :func:`importance_order`)."""
    for group, perm in zip(dim.groups, perms):
        seen: set[tuple[int, int]] = set()
        for ct in group.tensors:
            # a tied tensor is permuted once per axis (a square Linear can read and write the same channel space)
            key = (id(ct.tensor), ct.axis % ct.tensor.dim())
            if key in seen:
                continue
            seen.add(key)
            old = ct.tensor
            old.data = permute_axis(old.data, ct.axis, perm, ct.unit, ct.segments)  # same Parameter, new values
    dim.importance = perms


def reorder_dim(dim: ElasticDim, importance: ImportanceFn) -> None:
    """Sort every channel group of ``dim`` by descending importance and permute its tensors in place."""
    apply_order(dim, importance_order(dim, importance))


class ActivationImportance:
    """Calibration-based importance (Wanda-style): a channel's score is ``mean|x_j| * ||W[:, j]||`` summed over the
    Linears that read it, with ``x`` recorded by forward pre-hooks on one calibration batch. Channel groups with no
    reading Linear (and channels of other layer types) fall back to the L1 weight norm.

    Args:
        model: the model *before* conversion.
        batch: one calibration batch (a dict is passed as keyword arguments, anything else positionally).
        forward_fn: optional ``(model, batch) -> Any`` to run the model differently.

    Example:
        >>> imp = ActivationImportance(model, tokenizer(texts, return_tensors="pt"))  # doctest: +SKIP
        >>> to_supernet(model, SearchSpaceConfig(importance=imp))  # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module, batch, forward_fn: Callable | None = None) -> None:
        self.stats: dict[int, torch.Tensor] = {}

        def record(module, args):
            x = args[0].detach().float().abs()
            mean = x.reshape(-1, x.shape[-1]).mean(0)
            self.stats[id(module)] = self.stats.get(id(module), 0) + mean

        hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, torch.nn.Linear)]
        try:
            with torch.no_grad():
                if forward_fn is not None:
                    forward_fn(model, batch)
                elif isinstance(batch, dict) or hasattr(batch, "keys"):
                    model(**batch)
                else:
                    model(batch)
        finally:
            for h in hooks:
                h.remove()
        self.fallback = IMPORTANCE["l1"]

    def __call__(self, group: ChannelGroup, n_units: int) -> torch.Tensor:
        score = torch.zeros(n_units)
        for ct in group.tensors:
            act = self.stats.get(id(ct.module))
            w = ct.tensor.detach().float()
            if act is None or ct.axis % w.dim() != 1 or w.dim() != 2 or act.numel() != w.shape[1]:
                continue
            s = (act * w.norm(dim=0)).reshape(ct.segments, n_units, ct.unit).sum(dim=(0, 2))
            score += s / (s.sum() + 1e-12)
        return score if score.any() else self.fallback(group, n_units)
