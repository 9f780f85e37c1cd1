"""Elastic depth: containers that run only the kept blocks.

``ElasticSequential`` replaces an ``nn.Sequential`` stage, ``ElasticModuleList`` an ``nn.ModuleList`` of layers
(iterated by the host model's own forward). Children keep their names, so the state_dict is unchanged. A depth
value ``d`` keeps the blocks ``sorted(order[:d])``; the default order drops trailing blocks. The first block of a
stage (the one that may change shape) is always in the order's first position for CNN stages.
"""

from __future__ import annotations

from torch import nn

from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.ops.base import PLAIN_KEYS, check_plain_keys


class _DepthMixin:
    depth: ElasticDim
    order: list[int]

    def _adopt_container(self, module: nn.Module, depth: ElasticDim, order: list[int] | None) -> None:
        state = module.__dict__.copy()
        state["_modules"] = dict(state["_modules"])
        self.__dict__.update(state)
        self.__dict__[PLAIN_KEYS] = frozenset(module.__dict__)
        self.__dict__["_base_cls"] = type(module)
        self.depth = depth
        self.order = list(order) if order is not None else list(range(depth.full))

    def export_module(self) -> nn.Module:
        """A plain container of the original class holding the kept blocks, renumbered ``0..d-1`` (as a model
        built with depth ``d`` names them); its ``__dict__`` holds exactly the original container's keys."""
        plain = self.__dict__[PLAIN_KEYS]
        cls = self.__dict__["_base_cls"]
        new = cls.__new__(cls)
        new.__dict__.update({k: (v.copy() if isinstance(v, dict) else v) for k, v in self.__dict__.items()
                             if k in plain})
        new._modules = {str(i): m for i, m in enumerate(self.active_modules())}
        check_plain_keys(new, plain, type(self).__name__)
        return new

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
        new._adopt_container(module, depth, order)
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


class ElasticModuleList(nn.ModuleList, _DepthMixin):
    """``nn.ModuleList`` whose iteration and slicing see only the kept layers (``len`` too)."""

    @classmethod
    def from_module(cls, module: nn.ModuleList, depth: ElasticDim, order: list[int] | None = None) -> ElasticModuleList:
        new = cls.__new__(cls)
        new._adopt_container(module, depth, order)
        return new

    def __iter__(self):
        return iter(self.active_modules())

    def __len__(self) -> int:
        return len(self.active_indices())

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return nn.ModuleList(self.active_modules()[idx])
        return self.active_modules()[idx]
