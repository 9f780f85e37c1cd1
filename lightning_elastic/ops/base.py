"""Shared machinery of elastic ops: axis specs, sliced parameters and per-``select`` materialisation.

An elastic op is a subclass of the torch module it replaces (``ElasticLinear(nn.Linear)``), built from the original
module by :meth:`ElasticOp.from_module` *without copying tensors*: the same Parameter objects, under the same names.
Each parameter/buffer has a list of ``(axis, Axis)`` pairs saying which dimension slices which axis.

Inference caching: when autograd is off (``torch.no_grad``/``inference_mode``), sliced tensors are materialised
contiguously once per (active sizes, parameter versions) and reused, so runtime switching costs one copy per
``select`` instead of a strided view per forward.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.core.slicing import slice_axis


@dataclass(frozen=True)
class Axis:
    """A dimension slicing one tensor axis: ``unit`` elements per step, ``segments`` equal segments."""

    dim: ElasticDim
    unit: int = 1
    segments: int = 1

    @property
    def active_size(self) -> int:
        return self.dim.active * self.unit * self.segments

    @property
    def full_size(self) -> int:
        return self.dim.full * self.unit * self.segments

    @property
    def is_full(self) -> bool:
        return self.dim.active == self.dim.full


def as_axis(value: ElasticDim | Axis | None) -> Axis | None:
    if value is None or isinstance(value, Axis):
        return value
    return Axis(value)


class ElasticOp:
    """Mixin for elastic ops. Subclasses set ``self._slices = {tensor_name: [(axis, Axis), ...]}``."""

    _slices: dict[str, list[tuple[int, Axis]]]

    @classmethod
    def _adopt(cls, module: nn.Module):
        """A new instance of ``cls`` sharing ``module``'s tensors, submodules, hooks and attributes."""
        new = cls.__new__(cls)
        state = module.__dict__.copy()
        for key in ("_parameters", "_buffers", "_modules"):
            state[key] = dict(state[key])
        new.__dict__.update(state)
        new._slices = {}
        new._cache_key = None
        new._cache: dict[str, torch.Tensor | None] = {}
        new._base_cls = type(module)
        return new

    def _axes(self) -> list[Axis]:
        return [ax for specs in self._slices.values() for _, ax in specs]

    def _dim_state(self) -> tuple[tuple[ElasticDim, ...], tuple[int, ...]]:
        """The op's dims and their full sizes, memoised (forward runs this per call: keep it cheap). Rebuilt when
        ``_slices`` is replaced; ``from_module`` sets it once."""
        memo = self.__dict__.get("_dims_memo")
        if memo is None or memo[0] is not self._slices:
            dims = tuple(self.dims())
            memo = (self._slices, dims, tuple(d.full for d in dims))
            self.__dict__["_dims_memo"] = memo
        return memo[1], memo[2]

    def is_full(self) -> bool:
        dims, full = self._dim_state()
        return tuple(d.active for d in dims) == full

    def dims(self) -> list[ElasticDim]:
        seen: dict[int, ElasticDim] = {}
        for ax in self._axes():
            seen[id(ax.dim)] = ax.dim
        return list(seen.values())

    def _slice(self, name: str) -> torch.Tensor | None:
        tensor = getattr(self, name)
        if tensor is None:
            return None
        for axis, ax in self._slices.get(name, ()):
            tensor = slice_axis(tensor, axis, ax.dim.active, ax.dim.full, ax.unit, ax.segments)
        return tensor

    def sliced(self, *names: str) -> list[torch.Tensor | None]:
        """The active slices of the named tensors (the originals at full size; cached when autograd is off)."""
        dims, full = self._dim_state()
        active = tuple(d.active for d in dims)
        if active == full:
            return [getattr(self, n) for n in names]
        if torch.is_grad_enabled():
            return [self._slice(n) for n in names]
        # contiguous copies, made once per (active sizes, tensor identities and versions): an optimizer step,
        # load_state_dict or a BN statistics update bumps the version and so invalidates them
        tensors = [getattr(self, n) for n in names]
        key = (active, tuple(None if t is None else (id(t), t._version) for t in tensors))
        hit = self._cache.get(names)
        if hit is not None and hit[0] == key:
            return hit[1]
        out = []
        for n, t in zip(names, tensors):
            sl = None if t is None else self._slice(n)
            out.append(None if sl is None else sl.contiguous())
        self._cache[names] = (key, out)
        return out

    def _clear_cache(self) -> None:
        self._cache_key = None
        self._cache = {}

    def export_module(self) -> nn.Module:
        """A plain module of the original class with physically smaller tensors for the active sizes."""
        new = self._base_cls.__new__(self._base_cls)
        state = {k: v for k, v in self.__dict__.items()
                 if k not in ("_slices", "_cache_key", "_cache", "_base_cls", "_dims_memo")}
        state = copy.copy(state)
        for key in ("_parameters", "_buffers", "_modules"):
            state[key] = dict(state[key])
        new.__dict__.update(state)
        with torch.no_grad():
            for name in list(self._parameters):
                p = self._parameters[name]
                if p is not None:
                    t = self._slice(name).detach().clone().contiguous()
                    new._parameters[name] = nn.Parameter(t, requires_grad=p.requires_grad)
            for name in list(self._buffers):
                b = self._buffers[name]
                if b is not None and name in self._slices:
                    new._buffers[name] = self._slice(name).detach().clone().contiguous()
                elif b is not None:
                    new._buffers[name] = b.detach().clone()
        self._export_attributes(new)
        return new

    def _export_attributes(self, new: nn.Module) -> None:
        """Update size attributes (``in_features`` …) on the exported module."""
