"""Channel spaces of a model, read from its autograd graph.

One forward (eval mode, small input) records, for every conv / linear / norm module, the autograd node of its input
and output; the graph between them is walked op by op, with output shapes from ``grad_fn._input_metadata``. Every
tensor's channel axis is followed through the ops (views, permutes, broadcasting element-wise ops, concatenation and
splits along other axes, reductions): tensors whose channels must stay aligned end up in one *channel space*
(a union-find set), and the parameter axes sliced by it are its members. A space is *fixed* (kept at full size,
with the reason recorded) when a prefix of it would not be a prefix of every coupled tensor: concatenation or split
along the channel axis, a reshape that does not keep the channel axis whole, an op whose output shape is not the
broadcast of its inputs (matmul), modules called twice, an untraced tensor joining it, or the
model's input / output.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lightning_elastic.adapters.graph.spaces import ChannelGraph, Member

_VIEWS = {"ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0", "UnsqueezeBackward0",
          "UnsqueezeBackward1", "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2", "SqueezeBackward3",
          "CloneBackward0", "ToCopyBackward0", "AliasBackward0", "ExpandBackward0", "ViewAsRealBackward0"}
_SPLITS = ("SplitBackward", "SplitWithSizesBackward", "UnbindBackward", "SliceBackward", "SelectBackward",
           "UnsafeSplitBackward", "UnsafeSplitWithSizesBackward", "NarrowBackward")
_SPATIAL = ("Pool", "Upsample", "Pad", "Roll", "Flip")
_REDUCE = ("MeanBackward1", "LinalgVectorNormBackward0", "SumBackward1", "AmaxBackward0", "MaxBackward1", "NormBackward1", "StdBackward0",
           "VarBackward0", "LogsumexpBackward0")


# tensor info: ("s", space id, axis) | ("p", (module name, param name), {tensor axis: param axis}) | None
Info = Any


def _shape(fn: Any, idx: int) -> tuple[int, ...]:
    if type(fn).__name__ == "AccumulateGrad":
        return tuple(fn.variable.shape)
    return tuple(fn._input_metadata[idx].shape)


def _view_axis(a: int, s_in: tuple[int, ...], s_out: tuple[int, ...]) -> int | None:
    """Where axis ``a`` of ``s_in`` is in ``s_out`` after a view (same leading product and size), or None."""
    lead = math.prod(s_in[:a])
    for b in range(len(s_out)):
        if s_out[b] == s_in[a] and math.prod(s_out[:b]) == lead:
            return b
    if len(s_out) >= len(s_in) and s_out[len(s_out) - len(s_in) + a] in (s_in[a],) and s_in[a] != 1:
        return len(s_out) - len(s_in) + a  # expand: leading dims added
    return None


def _saved_dim(fn: Any, ndim: int) -> int | None:
    d = getattr(fn, "_saved_dim", None)
    if isinstance(d, int) and d >= 2 ** 63:
        d -= 2 ** 64  # a negative dim saved as unsigned (chunk(2, dim=-1))
    if d is None or not isinstance(d, int) or not -64 < d < 64:
        return None
    return d % ndim if ndim else d


_LEAF_TYPES = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def trace_channels(model: nn.Module, example: torch.Tensor) -> ChannelGraph:
    """Run ``model`` once on ``example`` and build its channel spaces."""
    graph = ChannelGraph()
    names = {id(m): n for n, m in model.named_modules()}
    params = {id(p): (mod_name, p_name) for mod_name, mod in model.named_modules()
              for p_name, p in mod.named_parameters(recurse=False)}
    leaf_out: dict[Any, tuple[str, Any]] = {}  # output grad_fn -> (module name, input key)
    handles = []

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        name = names[id(module)]
        graph.calls[name] = graph.calls.get(name, 0) + 1
        x = args[0] if args else None
        if not isinstance(output, torch.Tensor) or output.grad_fn is None or not isinstance(x, torch.Tensor):
            return
        key = (x.grad_fn, x.output_nr) if x.grad_fn is not None else None
        leaf_out[output.grad_fn] = (name, key, tuple(x.shape), tuple(output.shape))

    entry: dict[str, Any] = {}

    def block_pre_hook(module: nn.Module, args: tuple) -> None:
        x = args[0] if len(args) == 1 else None  # read before the block runs: an in-place op rebinds grad_fn
        ok = isinstance(x, torch.Tensor) and x.grad_fn is not None
        entry[names[id(module)]] = ((x.grad_fn, x.output_nr), tuple(x.shape)) if ok else None

    def block_hook(module: nn.Module, args: tuple, output: Any) -> None:
        name = names[id(module)]
        x = entry.get(name)
        ok = x is not None and isinstance(output, torch.Tensor) and output.grad_fn is not None
        prev = name in graph.blocks
        graph.blocks[name] = None if prev or not ok else (x[0], x[1], output.grad_fn, tuple(output.shape))

    for m in model.modules():
        if isinstance(m, _LEAF_TYPES):
            handles.append(m.register_forward_hook(hook))
        if isinstance(m, nn.Sequential | nn.ModuleList) and m is not model:
            for child in m.children():
                if any(True for _ in child.parameters()):  # skipping a parameter-free block changes nothing
                    handles.append(child.register_forward_pre_hook(block_pre_hook))
                    handles.append(child.register_forward_hook(block_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = example.clone().requires_grad_(True)
            out = model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    outs = [t for t in (out if isinstance(out, tuple | list) else [out]) if isinstance(t, torch.Tensor)]
    graph.leaf_out = leaf_out
    walker = _Walker(graph, params, leaf_out)
    walker.modules = dict(model.named_modules())
    walker.run([t for t in outs if t.grad_fn is not None])
    return graph


class _Walker:
    def __init__(self, graph: ChannelGraph, params: dict, leaf_out: dict) -> None:
        self.g = graph
        self.params = params
        self.leaf_out = leaf_out
        self.info: dict[tuple[Any, int], Info] = {}

    def inputs(self, fn: Any) -> list[tuple[Any, int]]:
        if fn in self.leaf_out:
            key = self.leaf_out[fn][1]
            return [key] if key is not None else []
        return [(f, i) for f, i in getattr(fn, "next_functions", ()) if f is not None]

    def run(self, outputs: list[torch.Tensor]) -> None:
        order, seen = [], set()
        stack = [(t.grad_fn, False) for t in outputs]
        while stack:
            fn, done = stack.pop()
            if done:
                order.append(fn)
                continue
            if fn in seen:
                continue
            seen.add(fn)
            stack.append((fn, True))
            stack.extend((f, False) for f, _ in self.inputs(fn) if f not in seen)
        for fn in order:
            self.visit(fn)
        self.g.link_pieces()
        for t in outputs:
            info = self.info.get((t.grad_fn, t.output_nr))
            if info is not None and info[0] == "s":
                self.g.fix(info[1], "it is the model's output")

    # -- helpers -------------------------------------------------------------------------------------------
    def get(self, key: tuple[Any, int] | None) -> Info:
        return None if key is None else self.info.get(key)

    def set_outputs(self, fn: Any, info: Info) -> None:
        for i in range(max(1, len(getattr(fn, "_input_metadata", ())))):
            self.info[(fn, i)] = info

    def fix_info(self, info: Info, reason: str) -> None:
        if info is not None and info[0] == "s":
            self.g.fix(info[1], reason)

    # -- visiting ------------------------------------------------------------------------------------------
    def visit(self, fn: Any) -> None:
        name = type(fn).__name__
        if name == "AccumulateGrad":
            ref = self.params.get(id(fn.variable))
            nd = fn.variable.dim()
            self.info[(fn, 0)] = ("p", ref, {a: a for a in range(nd)}) if ref is not None else None
            return
        if fn in self.leaf_out:
            self.visit_module(fn, *self.leaf_out[fn])
            return
        ins = [(key, self.get(key), _shape(*key)) for key in self.inputs(fn)]
        outs = [tuple(m.shape) for m in fn._input_metadata]
        if not outs:
            return
        tracked = [(k, i, s) for k, i, s in ins if i is not None]
        if not tracked:
            self.set_outputs(fn, None)
            return
        if name in _VIEWS or name.startswith(("PermuteBackward", "TransposeBackward")):
            _, info, s_in = tracked[0]
            self.set_outputs(fn, self.remap(fn, name, info, s_in, outs[0]))
            return
        if name.startswith("CatBackward") or name.startswith(_SPLITS):
            nd = len(outs[0]) if name.startswith("CatBackward") else len(tracked[0][2])
            d = _saved_dim(fn, nd)
            if name.startswith("CatBackward"):
                self.elementwise(fn, name, ins, outs[0], cat_dim=d)
                return
            _, info, s_in = tracked[0]
            axis = info[2] if info[0] == "s" else None
            k = len(outs)
            if d is not None and d == axis and name.startswith(("SplitBackward", "UnsafeSplitBackward")) and k > 1 \
                    and all(len(o) == len(s_in) and o[d] * k == s_in[d] for o in outs):
                # equal pieces (a GLU's chunk): linked to the input when the pieces end up in one space
                pieces = [self.g.new(s_in[d] // k) for _ in outs]
                self.g.links.append((info[1], pieces, k))
                for i, sid in enumerate(pieces):
                    self.info[(fn, i)] = ("s", sid, d)
                return
            if d is None or axis is None or d == axis:
                self.fix_info(info, f"a {name[:-9]} along its channel axis")
                self.set_outputs(fn, None)
                return
            for i, s_out in enumerate(outs):
                self.info[(fn, i)] = self.remap(fn, name, info, s_in, s_out, removed=d if name.startswith(
                    ("SelectBackward", "UnbindBackward")) else None)
            return
        if name.startswith(_REDUCE) and len(tracked) == 1:
            _, info, s_in = tracked[0]
            self.set_outputs(fn, self.remap(fn, name, info, s_in, outs[0], reduce=True))
            return
        if any(k in name for k in _SPATIAL) and len(tracked) == 1 and tracked[0][1][0] == "s":
            _, info, s_in = tracked[0]
            if len(outs[0]) == len(s_in) and outs[0][info[2]] == s_in[info[2]]:
                self.set_outputs(fn, info)  # pooling / padding / resizing / rolling along other axes
                return
        if name.startswith("ConvolutionBackward") and fn not in self.leaf_out:
            _, info, s_in = ins[0] if ins else (None, None, ())
            if info is not None and info[0] == "s" and info[2] >= 2 and len(outs[0]) == len(s_in) \
                    and outs[0][info[2]] == s_in[info[2]]:
                self.g.spaces[self.g.find(info[1])].ordered.append("a convolution along the channels")
                self.set_outputs(fn, info)  # channels run along a spatial axis of this conv (ECA's conv1d)
                return
            for _, i, _ in tracked:
                self.fix_info(i, "a convolution outside a Conv2d module")
            self.set_outputs(fn, None)
            return
        self.elementwise(fn, name, ins, outs[0])

    def remap(self, fn: Any, name: str, info: Info, s_in: tuple, s_out: tuple, removed: int | None = None,
              reduce: bool = False) -> Info:
        """Follow the tracked axis (or a loose parameter's axes) through a shape-changing single-input op."""

        def move(a: int) -> int | None:
            if name.startswith("PermuteBackward"):
                dims = [d % len(s_in) for d in fn._saved_dims]
                return dims.index(a)
            if name.startswith("TransposeBackward"):
                d0, d1 = fn._saved_dim0 % len(s_in), fn._saved_dim1 % len(s_in)
                return d1 if a == d0 else d0 if a == d1 else a
            if removed is not None:
                return None if a == removed else a - (a > removed)
            if reduce:
                dims = getattr(fn, "_saved_dim", None)
                keep = getattr(fn, "_saved_keepdim", True)
                if dims is None:
                    return None
                dims = [d % len(s_in) for d in (dims if isinstance(dims, list | tuple) else [dims])]
                if a in dims:
                    return -1  # the channel axis is reduced: the space ends here (consistent under slicing)
                return a if keep else a - sum(d < a for d in dims)
            if s_in == s_out:
                return a
            return _view_axis(a, s_in, s_out)

        if info[0] == "s":
            b = move(info[2])
            if b == -1:
                return None
            if b is None or s_out[b] != s_in[info[2]]:
                self.g.fix(info[1], f"a {name[:-9]} that does not keep the channel axis whole")
                return None
            return ("s", info[1], b)
        mapping = {}
        for a, pa in info[2].items():
            if s_in[a] == 1:
                continue
            b = move(a)
            if b is None or b == -1 or s_out[b] != s_in[a]:
                return None
            mapping[b] = pa
        return ("p", info[1], mapping)

    def elementwise(self, fn: Any, name: str, ins: list, out: tuple, cat_dim: int | None = None) -> None:
        n = len(out)
        where = name[:-9] if name.endswith("Backward0") else name
        # element-wise: the output is the broadcast of the inputs
        try:
            ok = cat_dim is not None or tuple(torch.broadcast_shapes(*[s for _, _, s in ins])) == out
        except RuntimeError:
            ok = False
        spaces = [(i, s) for _, i, s in ins if i is not None and i[0] == "s"]
        if not ok or not spaces:
            if ok and not spaces and all(i is not None and i[0] == "p" for _, i, _ in ins) and len(
                    {i[1] for _, i, _ in ins}) == 1:
                _, info, s = ins[0]
                self.set_outputs(fn, info if s == out else None)
                return
            for i, _ in spaces:
                self.g.fix(i[1], f"a {where} whose output is not element-wise in its inputs")
            self.set_outputs(fn, None)
            return
        info, s = spaces[0]
        b = info[2] + n - len(s)
        if cat_dim is not None and cat_dim == b:
            for i, _ in spaces:
                self.g.fix(i[1], "a concatenation along the channel axis")
            self.set_outputs(fn, None)
            return
        sid = info[1]
        for _, other, s_j in ins:
            a = b - (n - len(s_j))
            if a < 0 or s_j[a] == 1:
                continue
            if other is None:
                self.g.fix(sid, f"an untraced tensor joins it at a {where}")
            elif other[0] == "s":
                if other[2] != a:
                    self.g.fix(sid, f"a {where} joins channels with another axis")
                    self.g.fix(other[1], f"a {where} joins channels with another axis")
                else:
                    sid = self.g.union(sid, other[1], f"a {where}")
            else:
                pa = other[2].get(a)
                if pa is None or other[1] is None:
                    self.g.fix(sid, f"a {where} with a tensor that cannot be sliced")
                else:
                    self.g.add(sid, Member("param", other[1][0], other[1][1], pa))
        self.set_outputs(fn, ("s", sid, b))

    def visit_module(self, fn: Any, name: str, key: Any, s_in: tuple, s_out: tuple) -> None:
        g, module, info = self.g, self.modules[name], self.get(key)
        if info is not None and info[0] == "p":
            info = None
        kind = type(module).__name__
        shared = g.calls.get(name, 0) > 1
        if isinstance(module, nn.Conv2d | nn.Linear):
            axis_in, axis_out = (1, 1) if isinstance(module, nn.Conv2d) else (len(s_in) - 1, len(s_out) - 1)
            plain = type(module) in (nn.Conv2d, nn.Linear) or kind == "Conv2dSame" or (
                isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward)
            groups = getattr(module, "groups", 1)
            depthwise = groups > 1 and groups == module.in_channels == module.out_channels
            reason = (f"{name} ({kind}) is called more than once" if shared else
                      None if plain else f"{name} is a {kind} with its own forward")
            if depthwise and not (info is not None and info[0] == "s" and info[2] == axis_in):
                reason = reason or f"{name} is a depthwise convolution whose input channels are fixed"
            grouped = groups if reason is None and groups > 1 and not depthwise else 1
            ok_in = info is not None and info[0] == "s" and info[2] == axis_in
            if info is not None and not ok_in:
                g.fix(info[1], f"{name} reads it on another axis")
            if depthwise and reason is None and ok_in:
                g.add(info[1], Member("dw", name))
                self.set_outputs(fn, ("s", info[1], axis_out))
                return
            if ok_in:
                if reason is not None or depthwise:
                    g.fix(info[1], reason or f"{name} is a depthwise convolution reading an untraced input")
                else:
                    g.add(info[1], Member("in", name, groups=grouped))
            out_size = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
            sid = g.new(out_size, Member("out", name, groups=grouped), fixed=reason)
            self.set_outputs(fn, ("s", sid, axis_out))
            return
        # norms: BatchNorm2d / BatchNormAct2d, LayerNorm (last axis) / LayerNorm2d (axis 1), GroupNorm / GroupNormAct
        if isinstance(module, nn.LayerNorm):
            axis = 1 if kind.endswith("2d") else len(s_in) - 1
            ok_type = type(module) is nn.LayerNorm or kind in ("LayerNorm2d", "LayerNorm")
        elif isinstance(module, nn.GroupNorm):
            axis, ok_type = 1, True
        else:
            axis = 1
            ok_type = type(module) is nn.BatchNorm2d or kind == "BatchNormAct2d"
        if info is None:
            self.set_outputs(fn, None)
            return
        if not ok_type or shared or info[2] != axis or s_out != s_in:
            g.fix(info[1], f"{name} is a {kind}" + (" called more than once" if shared else
                                                     " (not a supported norm there)"))
            self.set_outputs(fn, None)
            return
        if getattr(module, "weight", None) is not None or getattr(module, "running_mean", None) is not None:
            g.add(info[1], Member("norm", name))
        if isinstance(module, nn.GroupNorm) and module.num_groups > 1:
            g.spaces[g.find(info[1])].ordered.append(f"{name} normalises groups of channels")
        self.set_outputs(fn, info)
