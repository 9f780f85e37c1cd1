"""Elastic depth: containers that run only the kept blocks.

``ElasticSequential`` replaces an ``nn.Sequential`` stage, ``ElasticModuleList`` an ``nn.ModuleList`` of layers
(iterated by the host model's own forward). Children keep their names, so the state_dict is unchanged. A depth
value ``d`` keeps the blocks ``sorted(order[:d])``; the default order drops trailing blocks. The first block of a
stage (the one that may change shape) is always in the order's first position for CNN stages.
"""

from __future__ import annotations

from torch import nn

from lightning_elastic.core.dims import ElasticDim


class _DepthMixin:
    depth: ElasticDim
    order: list[int]

    def _init_depth(self, depth: ElasticDim, order: list[int] | None) -> None:
        self.depth = depth
        self.order = list(order) if order is not None else list(range(depth.full))

    def active_indices(self) -> list[int]:
        return sorted(self.order[: self.depth.active])

    def active_modules(self) -> list[nn.Module]:
        mods = list(self._modules.values())
        return [mods[i] for i in self.active_indices()]

    def all_modules(self) -> list[nn.Module]:
        return list(self._modules.values())


class ElasticSequential(nn.Sequential, _DepthMixin):
    """``nn.Sequential`` that runs only the blocks kept by its depth dim."""

    @classmethod
    def from_module(cls, module: nn.Sequential, depth: ElasticDim, order: list[int] | None = None) -> ElasticSequential:
        new = cls.__new__(cls)
        state = module.__dict__.copy()
        state["_modules"] = dict(state["_modules"])
        new.__dict__.update(state)
        new._init_depth(depth, order)
        return new

    def forward(self, x):
        for module in (self.active_modules() if self.depth.active != self.depth.full else self._modules.values()):
            x = module(x)
        return x

    # like ElasticModuleList: iteration, len and indexing see the kept blocks only (state_dict and
    # named_modules still see every block, through ``_modules``)
    def __iter__(self):
        return iter(self.active_modules())

    def __len__(self) -> int:
        return len(self.active_indices())

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return nn.Sequential(*self.active_modules()[idx])
        return self.active_modules()[idx]

    def export_module(self) -> nn.Sequential:
        names = list(self._modules)
        return nn.Sequential(*[self._modules[names[i]] for i in self.active_indices()])


class ElasticModuleList(nn.ModuleList, _DepthMixin):
    """``nn.ModuleList`` whose iteration and slicing see only the kept layers (``len`` too)."""

    @classmethod
    def from_module(cls, module: nn.ModuleList, depth: ElasticDim, order: list[int] | None = None) -> ElasticModuleList:
        new = cls.__new__(cls)
        state = module.__dict__.copy()
        state["_modules"] = dict(state["_modules"])
        new.__dict__.update(state)
        new._init_depth(depth, order)
        return new

    def __iter__(self):
        return iter(self.active_modules())

    def __len__(self) -> int:
        return len(self.active_indices())

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return nn.ModuleList(self.active_modules()[idx])
        return self.active_modules()[idx]

    def export_module(self) -> nn.ModuleList:
        return nn.ModuleList(self.active_modules())
