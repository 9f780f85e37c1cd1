"""How :class:`~lightning_elastic.search.costs.CostModel` builds its tables, and checks them before use.

Each counted op of a forward at the max config is one *term*, and so is each Parameter that ships. A term's value at
a config is a coefficient (per resolution choice) times one factor per dim it depends on:

- an op of an ``ElasticLinear`` / ``ElasticConv2d`` costs ``2 * (tokens or output pixels) * weight.numel()``; the
  weight's active numel is a product of its dims' active sizes (the kernel size twice for an elastic kernel), so
  the op's factors are those sizes;
- any other op (attention's score and value products) scales with the dims of the elastic ops inside the module
  that calls it (its heads): its factor at each choice is read off traced forwards in which those dims change. Dims
  that no such op shares change together in one forward, so a 30-layer LLM needs two or three of them;
- a Parameter's factors are the sizes of its sliced axes; one its adapter cuts at export (a ViT's ``pos_embed``)
  takes the dim whose sizes its exported shape shows;
- a term inside a block that a depth choice drops counts zero; the resolution picks the traced input size.

Before the tables are used, every traced forward they were built from, the min config and two seeded random configs
must agree with them op by op, and every Parameter with its exported size (exports of a meta copy, free). Anything
else raises :class:`Unsupported` and the caller counts by tracing instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.ops.base import ElasticOp
from lightning_elastic.ops.conv import ElasticConv2d
from lightning_elastic.ops.depth import _DepthMixin
from lightning_elastic.ops.linear import ElasticLinear
from lightning_elastic.search.cost_trace import CONVS, ExportedSizes, Terms, Trace, trace

_MATMULS = {torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm, torch.ops.aten.baddbmm}
#: traced forwards a table may take to build before a model is counted the slow way instead
MAX_TRACES = 64


class Unsupported(Exception):
    """The tables cannot describe this model's costs; the message says why."""


class TableBuilder:
    """Builds and checks the tables of one supernet at one input shape (see the module doc)."""

    def __init__(self, supernet: Any, input_shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.net, self.shape, self.dtype = supernet, input_shape, dtype
        self.space = supernet.space
        self.dims: list[ElasticDim] = list(self.space)
        self.pos = {id(d): i for i, d in enumerate(self.dims)}
        self.special = {i for i, d in enumerate(self.dims) if d.kind in ("depth", "resolution")}
        self.top = self.space.max_config()
        self.lookup: list[float] = [1.0]  # offset 0: the padding slot's factor
        self._resolved: dict[int, tuple[ElasticDim | None, list[int]]] = {}
        self.num_traces = 0

    def _trace(self, cfg: dict[str, int]) -> Trace:
        self.num_traces += 1
        if self.num_traces > MAX_TRACES:
            raise Unsupported(f"its tables would need more than {MAX_TRACES} traced forwards")
        try:
            return trace(self.net, cfg, self.shape, self.dtype)
        except Exception as err:  # noqa: BLE001 - a config the model cannot run: count what the user asks for
            raise Unsupported(f"its forward fails at {self._short(cfg)} ({type(err).__name__}: {err})") from err

    def _shapes_of(self, cfg: dict[str, int]) -> dict[str, tuple[int, ...]]:
        try:
            return self.sizes.shapes(cfg)
        except Exception as err:  # noqa: BLE001 - an export that fails cannot say what ships
            raise Unsupported(f"its export fails at {self._short(cfg)} ({type(err).__name__}: {err})") from err

    def _short(self, cfg: dict[str, int]) -> str:
        """The dims of ``cfg`` below their max (a 30-layer config is long)."""
        small = {k: v for k, v in cfg.items() if v != self.top[k]}
        return f"the config {small}" if small else "the max config"

    def _table(self, dim: ElasticDim, values: Sequence[float]) -> tuple[int, int]:
        offset = len(self.lookup)
        self.lookup.extend(float(v) for v in values)
        return self.pos[id(dim)], offset

    # -- structure ---------------------------------------------------------------------------------------------
    def _resolve(self, dim: Any) -> tuple[ElasticDim | None, list[int]]:
        """The space dim a (possibly derived) dim follows, and its active value at each of that dim's choices.

        A derived dim (``ScaledDim``: the query heads per KV group of a heads dim) exposes its ``parent``; its values
        are read with the parent at each choice, whatever the derivation. Dims outside the space stay at full.
        """
        memo = self._resolved.get(id(dim))
        if memo is None:
            parent = getattr(dim, "parent", None)
            if id(dim) in self.pos:
                memo = (dim, list(dim.choices))
            elif isinstance(dim, ElasticDim) or isinstance(parent, ElasticDim) and id(parent) not in self.pos:
                memo = (None, [int(dim.full)])
            elif id(parent) in self.pos:
                values = []
                for c in parent.choices:
                    with self.net.subnet({**self.top, parent.name: c}):
                        values.append(int(dim.active))
                memo = (parent, values)
            else:
                raise Unsupported(f"a {type(dim).__name__} sizes a tensor and is neither a dim nor derived from one")
            self._resolved[id(dim)] = memo
        return memo

    def _structure(self) -> None:
        """Per module: the depth choices that keep it, and the space dims of the elastic ops inside it."""
        self.chain: dict[int, tuple[tuple[ElasticDim, int], ...]] = {}
        self.inside: dict[int, set[int]] = {}

        def walk(module: nn.Module, chain: tuple) -> set[int]:
            if id(module) in self.chain:
                if self.chain[id(module)] != chain:
                    raise Unsupported(f"a {type(module).__name__} sits in two places of the model")
                return self.inside[id(module)]
            self.chain[id(module)] = chain
            own = module.dims() if isinstance(module, ElasticOp) else ()
            dims = {self.pos[id(r)] for r in (self._resolve(d)[0] for d in own) if r is not None}
            for i, child in enumerate(module._modules.values()):
                if child is None:
                    continue
                sub = chain
                if isinstance(module, _DepthMixin) and id(module.depth) in self.pos:
                    sub = (*chain, (module.depth, module.order.index(i)))  # kept while its rank < depth
                dims |= walk(child, sub)
            self.inside[id(module)] = dims
            return dims

        walk(self.net.model, ())

    def _keep_slots(self, module: nn.Module | None) -> list[tuple[int, int]]:
        chain = self.chain.get(id(module), ()) if module is not None else ()
        return [self._table(d, [1.0 if c > rank else 0.0 for c in d.choices]) for d, rank in chain]

    def _numel(self, module: nn.Module, name: str) -> tuple[int, list[tuple[int, int]]]:
        """``numel = constant * prod(slot values)`` of the active slice of an elastic op's Parameter."""
        p = module._parameters[name]
        if type(module)._slice is not ElasticOp._slice and not isinstance(module, ElasticConv2d):
            raise Unsupported(f"{type(module).__name__} slices its tensors its own way")
        sizes: list[int | None] = list(p.shape)
        specs = [(a % p.dim(), ax.dim, ax.unit * ax.segments) for a, ax in module._slices.get(name, ())]
        if isinstance(module, ElasticConv2d) and name == "weight" and module.kernel_dim is not None:
            specs += [(p.dim() - 2, module.kernel_dim, 1), (p.dim() - 1, module.kernel_dim, 1)]
        slots: list[tuple[int, int]] = []
        const = 1
        for axis, dim, scale in specs:
            if sizes[axis] is None:
                raise Unsupported(f"{type(module).__name__}.{name} has two dims on axis {axis}")
            owner, values = self._resolve(dim)
            if owner is None:  # never sliced: the axis keeps whatever size it has
                const *= sizes[axis]
            else:
                slots.append(self._table(owner, values))
                const *= scale
            sizes[axis] = None
        return const * math.prod(s for s in sizes if s is not None), slots

    def _plain_numel(self, pid: int, p: nn.Parameter, cut: tuple[int, ...] | None
                     ) -> tuple[int, list[tuple[int, int]]]:
        """``numel = constant * prod(slot values)`` of a plain module's Parameter, given its exported shape at the
        smallest widths (``cut``): each axis the export cuts follows the one dim whose sizes give that cut (when
        several could, the one that cuts it alone)."""
        if cut is None or len(cut) != p.dim():
            raise Unsupported("a Parameter that runs is missing from the export")
        const, slots = 1, []
        for axis, (full, small) in enumerate(zip(p.shape, cut)):
            if full == small:
                const *= full
                continue
            options = {}
            for owner, values in self.dim_values:
                unit = full // values[-1]
                if unit * values[-1] == full and values[0] * unit == small:
                    options[(id(owner), tuple(v * unit for v in values))] = (owner, [v * unit for v in values])
            if len(options) > 1:
                options = {k: (owner, sizes) for k, (owner, sizes) in options.items()
                           if (self._exported_shape(pid, {**self.top, owner.name: owner.choices[0]}) or cut)[axis]
                           == small}
            if len(options) != 1:
                raise Unsupported(f"the export cuts a {tuple(p.shape)} Parameter to {cut}, which "
                                  f"{'no dim' if not options else 'more than one dim'} explains")
            owner, sizes = next(iter(options.values()))
            slots.append(self._table(owner, sizes))
        return const, slots

    def _exported_shape(self, pid: int, cfg: dict[str, int]) -> tuple[int, ...] | None:
        key = tuple(sorted(cfg.items()))
        if key not in self._shapes:
            self._shapes[key] = self._shapes_of(cfg)
        return self.sizes.shape_of(self._shapes[key], pid, cfg)

    # -- build -------------------------------------------------------------------------------------------------
    def build(self, cls: type) -> Any:
        self._structure()
        res = list(self.space["resolution"].choices) if "resolution" in self.space else [None]
        cfgs = [self.top if r is None else {**self.top, "resolution": r} for r in res]
        base = [self._trace(c) for c in cfgs]  # one forward per resolution, every other dim at max
        macs = self._op_terms(base)
        params = self._param_terms(base[-1], len(res))
        self._fill_others(macs)
        model = cls(self.space, self.lookup, macs, params)
        self._verify(model, list(zip(cfgs, base)))
        return model

    def _op_terms(self, base: list[Trace]) -> Terms:
        """One term per counted op of the max config's forwards (one per resolution choice)."""
        keyed = [t.keyed() for t in base]
        if any(k.keys() != keyed[-1].keys() for k in keyed):
            raise Unsupported("the resolution changes which ops run")
        macs = Terms()
        self.others: dict[int, tuple[int, set[int]]] = {}  # term -> (flops at max, candidate dims)
        for key, (module, packet, flops) in keyed[-1].items():
            per_res = [k[key][2] for k in keyed]
            leaf = (isinstance(module, ElasticLinear) and packet in _MATMULS) or (
                isinstance(module, ElasticConv2d) and packet in CONVS)
            if leaf:
                full = module.weight.numel()
                if any(f % full for f in per_res):
                    raise Unsupported(f"a {packet} of {type(module).__name__} is not proportional to its weight")
                const, slots = self._numel(module, "weight")
                macs.add(key, [f // full * const for f in per_res], slots + self._keep_slots(module))
            else:
                t = macs.add(key, per_res, self._keep_slots(module))
                self.others[t] = (flops, self.inside.get(id(module), set()) - self.special)
        return macs

    def _param_terms(self, top: Trace, num_res: int) -> Terms:
        """One term per Parameter that runs at the max config; plain modules' ones sized by a meta export."""
        try:
            self.sizes = ExportedSizes(self.net)
        except Exception as err:  # noqa: BLE001 - without a copy to export, exported sizes are unknown
            raise Unsupported(f"it cannot be copied to the meta device ({type(err).__name__}: {err})") from err
        self._shapes: dict[tuple, dict[str, tuple[int, ...]]] = {}
        derived = [self._resolve(ax.dim) for m in self.net.model.modules() if isinstance(m, ElasticOp)
                   for ax in m._axes()]
        self.dim_values = [(d, list(d.choices)) for i, d in enumerate(self.dims) if i not in self.special]
        self.dim_values += [(o, v) for o, v in derived if o is not None and v not in [x for _, x in self.dim_values]]
        narrow = {d.name: d.full if d.kind == "depth" else d.choices[0] for d in self.dims}  # every block kept
        params = Terms()
        for pid, (module, name) in top.parameters().items():
            if isinstance(module, ElasticOp):
                const, slots = self._numel(module, name)
            else:
                const, slots = self._plain_numel(pid, module._parameters[name], self._exported_shape(pid, narrow))
            params.add(pid, [const] * num_res, slots + self._keep_slots(module))
        return params

    def _groups(self) -> list[list[ElasticDim]]:
        """Dims changed together in one forward: no op outside the leaves depends on two of them, and depth dims
        (which drop whole blocks) go with no dim such an op depends on."""
        candidates = {i for _, cands in self.others.values() for i in cands}
        conflicts: dict[int, set[int]] = {i: set() for i in range(len(self.dims))}
        for _, cands in self.others.values():
            for i in cands:
                conflicts[i] |= cands - {i}
        groups: list[list[int]] = []
        for i, d in enumerate(self.dims):
            if d.kind == "resolution":
                continue  # its own forwards, in build
            for g in groups:
                clash = any(j in conflicts[i] for j in g) or (i in self.special and candidates & set(g)) or (
                    i in candidates and self.special & set(g))
                if not clash:
                    g.append(i)
                    break
            else:
                groups.append([i])
        return [[self.dims[i] for i in g] for g in groups]

    def _fill_others(self, macs: Terms) -> None:
        """Factors of the ops outside the leaves, read off forwards in which a group of dims takes its k-th choice."""
        ratios: dict[tuple[int, int], dict[int, float]] = {}
        self.group_traces: list[tuple[dict[str, int], Trace]] = []
        for group in self._groups():
            for k in range(max(len(d.choices) for d in group) - 1):
                cfg = {**self.top, **{d.name: d.choices[k] for d in group if k < len(d.choices) - 1}}
                traced = self._trace(cfg)
                self.group_traces.append((cfg, traced))
                ops = traced.keyed()
                for t, (flops, cands) in self.others.items():
                    changed = [self.pos[id(d)] for d in group if self.pos[id(d)] in cands and cfg[d.name] != d.full]
                    if not changed or macs.keys[t] not in ops:
                        continue  # nothing it depends on changed, or a depth choice dropped it (checked later)
                    now = ops[macs.keys[t]][2]
                    if flops == 0:
                        if now:
                            raise Unsupported("an op that counts nothing at the max config counts FLOPs elsewhere")
                        continue
                    ratios.setdefault((t, changed[0]), {})[k] = now / flops
        for t, (_, cands) in self.others.items():
            for i in sorted(cands):
                got = ratios.get((t, i), {})
                values = [got.get(k, 1.0) for k in range(len(self.dims[i].choices) - 1)] + [1.0]
                if any(v != 1.0 for v in values):
                    macs.slots[t].append(self._table(self.dims[i], values))

    def _verify(self, model: Any, base: list[tuple[dict[str, int], Trace]]) -> None:
        """Every traced forward must agree with the tables op by op; every Parameter with its exported size."""
        gen = torch.Generator().manual_seed(0)
        extra = [self.space.min_config(), self.space.sample(gen), self.space.sample(gen)]
        exported = {id(c) for c in extra}
        index = {key: t for t, key in enumerate(model.macs_terms.keys)}
        pindex = {pid: t for t, pid in enumerate(model.params_terms.keys)}
        for cfg, traced in [*base, *self.group_traces, *((c, None) for c in extra)]:
            traced = traced or self._trace(cfg)
            flops, params = model.term_values(cfg)
            seen = np.zeros(len(flops), dtype=bool)
            for key, (module, packet, count) in traced.keyed().items():
                t = index.get(key)
                if t is None or flops[t] != count:
                    where = type(module).__name__ if module is not None else "the model's forward"
                    known = "know no such op" if t is None else f"count {int(flops[t])}"
                    raise Unsupported(f"a {packet} in {where} counts {count} FLOPs at {self._short(cfg)}; the tables "
                                      f"{known}")
                seen[t] = True
            if flops[~seen].any():
                raise Unsupported(f"ops the tables expect did not run at {self._short(cfg)}")
            running = traced.parameters()
            if set(running) != {pid for pid, t in pindex.items() if params[t]}:
                raise Unsupported(f"the Parameters that run at {self._short(cfg)} are not those the tables expect")
            if id(cfg) in exported:
                shapes = self._shapes_of(cfg)
                for pid, t in pindex.items():
                    shape = self.sizes.shape_of(shapes, pid, cfg) if params[t] else None
                    if params[t] and (shape is None or int(np.prod(shape, dtype=np.int64)) != params[t]):
                        raise Unsupported(f"a Parameter's exported size at {self._short(cfg)} is not the tables' "
                                          f"{int(params[t])}")
