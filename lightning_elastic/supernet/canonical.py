"""Where each dim lives: the blocks of elastic-depth containers that hold its tensors.

A dim is dead in a config when every module it sizes sits in blocks the config's depths remove: its value then
changes nothing, and configs that differ only there are one network. This module finds, once per supernet, the
blocks each dim lives in and hands :class:`~lightning_elastic.core.space.SearchSpace` the result as plain data
(``space.dead_when``), so ``space.canonical(cfg)`` can give every such network one config.

What sizes a dim, all looked up in the converted model's module tree:

- the elastic ops whose axes it slices (a derived dim, such as the query heads per KV group, counts for its
  ``parent``), and any module holding the dim as an attribute (a conv's kernel dim, a depth container's depth);
- the modules owning its coupled tensors (``dim.groups``, matched by tensor identity);
- the modules its ``on_change`` listeners update (``attn.num_heads``), found in their ``functools.partial``
  arguments, defaults and closures. A listener that names no module of the model could do anything, so its dim is
  never dead.

A block is identified by its depth dim and its position in that container's keep order (depth ``d`` keeps the blocks
at positions ``< d``), so an importance order (``depth_importance``) is followed. For a module inside nested
containers only the outermost elastic one counts: its removal alone makes the module dead, so the rule is never
wrong, merely silent about blocks an inner depth removes.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.core.space import DeadWhen, SearchSpace
from lightning_elastic.ops.base import Axis, ElasticOp
from lightning_elastic.ops.depth import _DepthMixin

Place = tuple[str, int] | None  # (depth dim, position in its keep order), or None: outside every elastic block


def dead_when(model: nn.Module, space: SearchSpace) -> DeadWhen:
    """``{dim: ((depth dim, position), ...)}`` for every dim of ``space`` that lives only inside blocks of
    elastic-depth containers of ``model`` (see the module doc); dims that also live elsewhere are left out."""
    places = _module_places(model, space)
    tensor_places: dict[int, set[Place]] = {}
    holders: dict[int, set[Place]] = {id(d): set() for d in space}
    for module, where in places.values():
        for tensor in (*module._parameters.values(), *module._buffers.values()):
            if tensor is not None:
                tensor_places.setdefault(id(tensor), set()).update(where)
        for dim in _dims_held(module):
            if id(dim) in holders:
                holders[id(dim)].update(where)
    out: DeadWhen = {}
    for d in space:
        found = holders[id(d)]
        for group in d.groups:
            for coupled in group.tensors:
                tensor = getattr(coupled.module, coupled.name, None)
                found.update(tensor_places.get(id(tensor), ()))  # a tensor outside the model never runs
        for listener in d._listeners:
            targets = [m for m in _reach(listener, _is_module) if id(m) in places]
            if not targets:
                found.add(None)  # it updates something outside the model: assume it matters
            for m in targets:
                found.update(places[id(m)][1])
        if found and None not in found:
            out[d.name] = tuple(sorted(found))
    # a depth dim that decides deadness lives outside every elastic block, so it is never listed itself
    return out


def attach_dead_when(model: nn.Module, space: SearchSpace) -> None:
    """Set ``space.dead_when`` for ``model`` (``to_supernet`` calls it once the model is converted).

    Warns instead of raising: the model is converted by then, and without the map configs merely stay raw.
    """
    try:
        space.set_dead_when(dead_when(model, space))
    except Exception as err:  # noqa: BLE001 - see above: never undo a finished conversion over an optimisation
        warnings.warn(f"to_supernet: could not tell which dims elastic depth removes ({type(err).__name__}: {err}); "
                      "configs that differ only in removed blocks count as different subnets. HINT: report this "
                      "with the model's class.", stacklevel=3)


def _module_places(model: nn.Module, space: SearchSpace) -> dict[int, tuple[nn.Module, set[Place]]]:
    """Every module of ``model`` with each place it sits in (a module reachable twice has two)."""
    out: dict[int, tuple[nn.Module, set[Place]]] = {}

    def walk(module: nn.Module, place: Place) -> None:
        entry = out.setdefault(id(module), (module, set()))
        if place in entry[1]:
            return  # this subtree was already walked from this place
        entry[1].add(place)
        elastic = place is None and isinstance(module, _DepthMixin) and module.depth.name in space \
            and space[module.depth.name] is module.depth
        for i, child in enumerate(module._modules.values()):
            if child is not None:
                walk(child, (module.depth.name, module.order.index(i)) if elastic else place)

    walk(model, None)
    return out


def _dims_held(module: nn.Module) -> Iterable[ElasticDim]:
    """The dims ``module`` slices or reaches through its attributes (a conv's kernel dim, a depth container's depth,
    hooks and patched methods that read a dim), derived dims resolved to their parents."""
    found: list[Any] = list(module.dims()) if isinstance(module, ElasticOp) else []
    state = [v for k, v in module.__dict__.items() if k not in ("_parameters", "_buffers", "_modules")]
    found += _reach(state, _is_dim)
    for dim in found:
        parent = getattr(dim, "parent", None)
        yield parent if isinstance(parent, ElasticDim) else dim


def _is_dim(value: Any) -> bool:
    return isinstance(value, ElasticDim) or isinstance(getattr(value, "parent", None), ElasticDim)


def _reach(value: Any, wanted: Callable[[Any], bool], depth: int = 0) -> list[Any]:
    """Objects ``wanted`` accepts that ``value`` reaches through containers, axes, ``partial`` arguments, bound
    methods, defaults and closure cells. Modules and tensors are not entered (modules are walked on their own);
    other objects neither, so a handle on the whole space cannot make every dim look used."""
    if wanted(value):
        return [value]
    if depth > 4 or isinstance(value, nn.Module | torch.Tensor | str | bytes | int | float | type):
        return []
    if isinstance(value, Axis):
        children: Iterable[Any] = [value.dim]
    elif isinstance(value, dict):
        children = value.values()
    elif isinstance(value, list | tuple | set | frozenset):
        children = value
    elif isinstance(value, functools.partial):
        children = [value.func, *value.args, *value.keywords.values()]
    elif callable(value):
        cells = [c.cell_contents for c in (getattr(value, "__closure__", None) or ()) if _filled(c)]
        children = [getattr(value, "__self__", None), getattr(value, "__func__", None),
                    *(getattr(value, "__defaults__", None) or ()), *cells]
    else:
        return []
    return [found for child in children for found in _reach(child, wanted, depth + 1)]


def _is_module(value: Any) -> bool:
    return isinstance(value, nn.Module)


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True
