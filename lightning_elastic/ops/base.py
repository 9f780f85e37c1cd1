"""Shared machinery of elastic ops: axis specs, sliced parameters and per-``select`` materialisation.

An elastic op is a subclass of the torch module it replaces (``ElasticLinear(nn.Linear)``), built from the original
module by :meth:`ElasticOp.from_module` *without copying tensors*: the same Parameter objects, under the same names.
Each parameter/buffer has a list of ``(axis, Axis)`` pairs saying which dimension slices which axis.

Per-``select`` state: an op's forward needs to know whether it is at full size, and (for some ops) derived values
such as the active padding. That is computed once per change of any dim (:func:`core.dims.generation`) into a small
:class:`_Plan`, so a forward costs one integer comparison, not a walk over its dims.

Inference caching: when autograd is off (``torch.no_grad``/``inference_mode``), sliced tensors are materialised
contiguously once per (``select``, tensor identities and versions) and reused, so runtime switching costs one copy
per ``select`` instead of a strided view (and, inside conv kernels, a hidden copy) per forward.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from lightning_elastic.core import dims as _dims
from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.core.errors import ExportError
from lightning_elastic.core.slicing import slice_axis

#: the attribute where an op records the ``__dict__`` keys of the module it replaced (see :meth:`ElasticOp._adopt`)
PLAIN_KEYS = "_plain_keys"


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


def weight_bias_slices(out_axis: Axis | None, in_axis: Axis | None, *, weight_out: int = 0,
                       weight_in: int = 1) -> dict[str, list[tuple[int, Axis]]]:
    """``_slices`` of a weight + bias layer: the output axis slices the weight's ``weight_out`` axis and the bias, the
    input axis the weight's ``weight_in`` axis (GPT-2's ``Conv1D`` stores its weight transposed: 1 and 0)."""
    weight, bias = [], []
    if out_axis is not None:
        weight.append((weight_out, out_axis))
        bias.append((0, out_axis))
    if in_axis is not None:
        weight.append((weight_in, in_axis))
    return {"weight": weight, "bias": bias}


class _Plan:
    """What an op's forward needs for the current ``select``: built once per dims generation (see the module doc)."""

    __slots__ = ("generation", "slices", "full", "active", "extra", "cache")

    def __init__(self, generation: int, slices: dict, active: tuple[int, ...], full: bool) -> None:
        self.generation = generation
        self.slices = slices
        self.active = active
        self.full = full
        self.extra: object = None  # op-specific derived values (e.g. conv padding and groups)
        # names -> (source tensors, their (id, version) pairs, materialised slices); lives as long as this select
        self.cache: dict[tuple[str, ...], tuple[tuple, list[tuple[int, int]], list]] = {}

    def __deepcopy__(self, memo: dict) -> None:
        # a copy of the op (an EMA teacher) rebuilds its own plan on first use; the cached no-grad slices cannot be
        # deep-copied once load_state_dict has modified their base in place
        return None


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
        new._base_cls = type(module)
        # what a plain module of this class holds: export keeps exactly these keys and drops everything the
        # conversion added (axes, dims, caches), which would otherwise keep the full supernet tensors reachable
        new.__dict__[PLAIN_KEYS] = frozenset(module.__dict__)
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

    def _plan(self) -> _Plan:
        """The per-``select`` state, rebuilt only when some dim changed (one int comparison on the hot path)."""
        plan = self.__dict__.get("_plan_memo")
        gen = _dims._GENERATION[0]
        if plan is not None and plan.generation == gen and plan.slices is self._slices:
            return plan
        dims, full = self._dim_state()
        active = tuple(d.active for d in dims)
        plan = _Plan(gen, self._slices, active, active == full)
        plan.extra = self._plan_extra()
        self.__dict__["_plan_memo"] = plan
        return plan

    def _plan_extra(self) -> object:
        """Values derived from the active sizes that the op's forward needs (override; computed once per select)."""
        return None

    def is_full(self) -> bool:
        return self._plan().full

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
        return self._sliced(self._plan(), names)

    def _cache_sources(self, names: tuple[str, ...]) -> tuple[torch.Tensor | None, ...]:
        """The tensors whose values the slices of ``names`` depend on (override to add e.g. kernel transforms)."""
        params, buffers = self._parameters, self._buffers
        return tuple(params[n] if n in params else buffers.get(n) for n in names)

    def _sliced(self, plan: _Plan, names: tuple[str, ...]) -> list[torch.Tensor | None]:
        if plan.full:
            return [getattr(self, n) for n in names]
        if torch.is_grad_enabled():
            return [self._slice(n) for n in names]
        # contiguous copies, made once per select and reused while the source tensors are the same objects with the
        # same versions: an optimizer step, load_state_dict or a BN statistics update bumps the version
        sources = self._cache_sources(names)
        # identities as ints, not the objects: a deepcopy of the op (an EMA teacher) remaps stored objects to its
        # own tensors, whose fresh versions could then collide with the stored ones
        key = [(id(t), -1 if t is None else t._version) for t in sources]
        hit = plan.cache.get(names)
        if hit is not None and hit[1] == key:
            return hit[2]
        out = []
        for n in names:
            sl = self._slice(n)
            out.append(None if sl is None else sl.contiguous())
        plan.cache[names] = (sources, key, out)  # the sources are held so that their ids cannot be reused
        return out

    def export_module(self) -> nn.Module:
        """A plain module of the original class with physically smaller tensors for the active sizes.

        Its ``__dict__`` holds exactly the keys of the module this op replaced (ModelOpt's export contract).

        Raises:
            ExportError: an op subclass left attributes of its own on the export (a bug in that op).
        """
        plain = self.__dict__[PLAIN_KEYS]
        new = self._base_cls.__new__(self._base_cls)
        # dict-valued state (tensors, submodules, hook tables) is copied so the export shares no table with the op
        state = {k: (copy.copy(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items() if k in plain}
        new.__dict__.update(state)
        with torch.no_grad():
            for name in list(self._parameters):
                p = self._parameters[name]
                if p is not None and name in new._parameters:
                    t = self._slice(name).detach().clone().contiguous()
                    new._parameters[name] = nn.Parameter(t, requires_grad=p.requires_grad)
            for name in list(self._buffers):
                b = self._buffers[name]
                if b is not None and name in self._slices:
                    new._buffers[name] = self._slice(name).detach().clone().contiguous()
                elif b is not None:
                    new._buffers[name] = b.detach().clone()
        self._export_attributes(new)
        check_plain_keys(new, plain, type(self).__name__)
        return new

    def _export_attributes(self, new: nn.Module) -> None:
        """Update size attributes (``in_features`` …) on the exported module."""


def check_plain_keys(module: nn.Module, plain: frozenset[str], op_name: str) -> None:
    """Raise if ``module`` holds ``__dict__`` keys beyond ``plain`` (what the module it came from held)."""
    extra = sorted(set(module.__dict__) - plain)
    if extra:
        raise ExportError(
            f"the export of a {op_name} kept attributes {extra} that a plain {type(module).__name__} does not have. "
            "HINT: this is a bug in the op: set only existing attributes in `_export_attributes`."
        )
