"""Generic conversion of timm / torchvision CNNs and ViTs from their autograd graph (registered last).

Dimensions (see :mod:`lightning_elastic.adapters.graph.trace` for how channel spaces are found):
    ``{module}.width``: a channel space produced by one conv / linear (``module`` is that producer), with every
        consumer, depthwise conv, norm and loose Parameter (LayerScale, ConvNeXt ``gamma``) coupled to it;
        ``SearchSpaceConfig.width`` (``'auto'``: ratios ``(0.5, 0.75, 1.0)``). GroupNorm spaces keep multiples of
        the group count.
    ``{module}.stage_width``: a residual-coupled space (several producers added together); ``stage_width``
        (default None: fixed, like the family adapters' stage widths).
    ``{attention}.heads``: attention modules with a fused ``qkv`` and ``proj`` Linear and ``num_heads`` (timm
        ``Attention``, Swin ``WindowAttention``): heads with the head size kept (``heads``, ``'auto'``: up to two
        fewer). Relative-position tables and separate q/v biases follow the heads.
    ``{container}.depth``: an ``nn.Sequential`` / ``nn.ModuleList`` whose trailing residual children (same shape in
        and out, an identity shortcut in the graph, no residual blocks inside) may be dropped (``depth``,
        ``'auto'``: up to two fewer blocks).

Spaces the graph cannot slice consistently stay at full size (grouped convolutions, concatenation or split along
channels, reshapes that break the channel axis, the model's input and output); a model with nothing elastic is
refused with the blocking modules named.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from lightning_elastic.adapters.base import Adapter, ConversionPlan
from lightning_elastic.adapters.graph.spaces import ChannelGraph, Member
from lightning_elastic.adapters.graph.trace import trace_channels
from lightning_elastic.adapters.kit import OpSpecs, couple_in, couple_out, op_class
from lightning_elastic.adapters.registry import register_adapter
from lightning_elastic.adapters.timm_resnet import _in_chans, build_timm
from lightning_elastic.core.config import SearchSpaceConfig, check_explicit_fields, resolve_choices
from lightning_elastic.core.dims import ChannelGroup, ElasticDim
from lightning_elastic.core.errors import ConversionError
from lightning_elastic.ops.base import Axis
from lightning_elastic.ops.depth import ElasticModuleList, ElasticSequential
from lightning_elastic.ops.params import ElasticParams

AUTO_WIDTH = (0.5, 0.75, 1.0)
_SPEC_TYPES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm)


def auto_depth(n: int, floor: int) -> list[int]:
    return sorted({max(floor, n - 2, 1), max(floor, n - 1, 1), n})


def example_input(model: nn.Module, size: int = 64, channels: int | None = None) -> torch.Tensor:
    """A small input for tracing: the model's fixed image size when it has one, else ``size`` px."""
    pe = getattr(model, "patch_embed", None)
    img = getattr(pe, "img_size", None)
    if img is not None and getattr(pe, "strict_img_size", True) and not getattr(pe, "dynamic_img_size", False):
        h, w = (img, img) if isinstance(img, int) else tuple(img)
    else:
        h = w = size
    param = next(model.parameters(), None)
    channels = channels or getattr(model, "in_chans", None) or _in_chans(model)
    return torch.randn(2, channels, h, w, device=param.device if param is not None else None)


def _trace(model: nn.Module) -> tuple[ChannelGraph, torch.Tensor]:
    """Trace on a 64 px input, or at the model's default input size when it needs that (LeViT's attention
    biases, Inception's deep strides, TResNet's space-to-depth stem)."""
    cfg = (getattr(model, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224)
    errors = []
    for channels, size in ((None, 64), (cfg[0], cfg[-1])):
        try:
            x = example_input(model, size, channels)
            return trace_channels(model, x), x
        except Exception as err:  # noqa: BLE001 - a model refusing an input size raises anything (asserts too)
            errors.append(f"{size} px ({type(err).__name__}: {str(err)[:150]})")
    raise ConversionError(
        f"the generic conversion runs the {type(model).__name__} once to read its graph, and it failed at "
        f"{' and at '.join(errors)}. HINT: check that the model runs on a (2, {cfg[0]}, {cfg[-1]}, {cfg[-1]}) "
        "input, or write an adapter for it."
    )


class GenericAdapter(Adapter):
    name = "generic"
    supported = ("any timm / torchvision CNN or ViT, from its autograd graph: coupled channel widths, attention "
                 "heads (fused qkv), depth of residual blocks")

    def matches(self, model: nn.Module) -> bool:
        return type(model).__module__.startswith(("timm.", "torchvision."))

    def plan(self, model: nn.Module, config: SearchSpaceConfig) -> ConversionPlan:
        graph, example = _trace(model)
        graph.in_chans = example.shape[1]
        plan = self._plan(model, graph, config)
        failed = _failing_dims(model, plan, example)
        if failed:
            # a forward that reads sizes from elsewhere (``x.reshape(B, C, -1)`` with C of another tensor) fails at
            # a smaller width: keep those spaces at full size and plan again
            for root in graph.roots():
                space = graph.spaces[root]
                hit = [f"{m.module}.{f}" for m in space.members for f in ("width", "stage_width")
                       if f"{m.module}.{f}" in failed]
                if hit:
                    space.fixed.append(f"a forward at its smallest size failed ({failed[hit[0]]})")
            graph.blocked_heads = {n[: -len(".heads")] for n in failed if n.endswith(".heads")}
            graph.blocked_depth = {n[: -len(".depth")] for n in failed if n.endswith(".depth")}
            plan = self._plan(model, graph, config)
        return plan

    def _plan(self, model: nn.Module, graph: ChannelGraph, config: SearchSpaceConfig) -> ConversionPlan:
        plan = ConversionPlan(meta={**self.describe(model), "in_chans": graph.in_chans})
        specs = OpSpecs(model)
        loose: dict[str, dict[str, list]] = {}  # module -> {tensor: [(axis, Axis)]} for ElasticParams
        fulls: dict[str, list[int]] = {"width": [], "depth": [], "heads": [], "stage_width": []}
        taken = self._plan_heads(model, graph, config, plan, specs, loose, fulls)
        modules = dict(model.named_modules())
        position = {name: i for i, name in enumerate(modules)}
        for root in graph.roots():
            space = graph.spaces[root]
            if root in taken or not space.producers or space.fixed:
                continue
            if any(m.kind == "param" and (m.module == "" or isinstance(modules[m.module], _SPEC_TYPES))
                   for m in space.members):
                continue  # a Parameter of the root model (or of a module with its own op) cannot be sliced here
            segments = {m.groups for m in space.members if m.groups > 1}
            if len(segments) > 1 or segments and any(
                    m.kind == "dw" or isinstance(modules[m.module], nn.GroupNorm) for m in space.members):
                continue  # grouped convs of different group counts (or with depthwise convs / GroupNorm)
            seg = segments.pop() if segments else 1
            field = "stage_width" if space.residual else "width"
            first = min((m.module for m in space.members if m.kind == "out"), key=position.__getitem__)
            full = space.size // seg  # with grouped convs: channels per group, sliced alike in every group
            choices = resolve_choices(getattr(config, field), full, AUTO_WIDTH, field)
            for m in space.members:
                if m.kind == "norm" and isinstance(modules[m.module], nn.GroupNorm):
                    g = modules[m.module].num_groups
                    choices = [c for c in choices if c % g == 0]
            fulls[field].append(full)
            dim = ElasticDim(f"{first}.{field}", choices, full, kind="width")
            plan.dims.append(dim)
            self._couple(dim, space.members, modules, specs, loose, ordered=not space.ordered, segments=seg)
        self._plan_depth(model, graph, config, plan, fulls)
        check_explicit_fields(config, {k: v for k, v in fulls.items() if v}, self.name)
        if not any(d.is_elastic for d in plan.dims):
            raise ConversionError(self._nothing_elastic(model, graph))
        self._emit(plan, specs, loose)
        return plan

    # -- planning ------------------------------------------------------------------------------------------
    def _couple(self, dim: ElasticDim, members: list[Member], modules: dict, specs: OpSpecs, loose: dict,
                ordered: bool = True, segments: int = 1) -> None:
        # a space whose channel order matters is not reordered by importance: no channel group
        group = dim.couple() if ordered else ChannelGroup()
        for m in members:
            module = modules[m.module]
            ax = Axis(dim, segments=segments * m.segments)  # the same prefix of every group's / piece's channels
            if m.kind == "out":
                specs.set(m.module, out_axis=ax)
                couple_out(group, module, ax)
            elif m.kind == "in":
                # a grouped conv's weight holds the channels of one group on its input axis
                a = Axis(dim, segments=m.segments) if m.groups > 1 else ax
                specs.set(m.module, in_axis=a)
                couple_in(group, module, a, scores=True)
            elif m.kind == "dw":
                specs.set(m.module, out_axis=ax, depthwise=True)
                couple_out(group, module, ax)
            elif m.kind == "norm" and type(module) in (nn.LayerNorm, nn.BatchNorm2d) or (
                    m.kind == "norm" and type(module).__name__ in ("BatchNormAct2d", "LayerNorm")):
                specs.set(m.module, axis=ax)
                for t in ("weight", "bias", "running_mean", "running_var"):  # kit's couple_out: stats unsegmented
                    group.add(module, t, 0, segments=ax.segments, scores=False)
            elif m.kind == "norm":
                slices = loose.setdefault(m.module, {})
                for t in ("weight", "bias"):
                    if getattr(module, t, None) is not None:
                        slices[t] = [(0, ax)]
                        group.add(module, t, 0, segments=ax.segments, scores=False)
            else:
                loose.setdefault(m.module, {}).setdefault(m.pname, []).append((m.axis, ax))
                group.add(module, m.pname, m.axis, segments=ax.segments, scores=False)

    def _plan_heads(self, model: nn.Module, graph: ChannelGraph, config: SearchSpaceConfig, plan: ConversionPlan,
                    specs: OpSpecs, loose: dict, fulls: dict) -> set[int]:
        from lightning_elastic.adapters.timm_vit import auto_heads

        taken: set[int] = set()
        owner = {}
        for root in graph.roots():
            for m in graph.spaces[root].members:
                owner[(m.kind, m.module)] = root
        for name, attn in model.named_modules():
            if name in getattr(graph, "blocked_heads", ()):
                continue
            qkv, proj, h = getattr(attn, "qkv", None), getattr(attn, "proj", None), getattr(attn, "num_heads", None)
            if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and isinstance(h, int) and h > 0):
                continue
            hd, rest = divmod(qkv.out_features, 3 * h)
            sid = owner.get(("out", f"{name}.qkv"))
            if rest or proj.in_features != h * hd or sid is None or ("in", f"{name}.proj") in owner or len(
                    graph.spaces[sid].members) != 1:
                continue
            extra = {}
            for pname, p in attn.named_parameters(recurse=False):
                if p.dim() >= 1 and p.shape[0] == h * hd:
                    extra[pname] = 0
                elif p.dim() == 2 and p.shape[1] == h and "relative_position" in pname:
                    extra[pname] = 1
                else:
                    extra = None
                    break
            children = [c for c, mod in attn.named_children() if c not in ("qkv", "proj", "q_norm", "k_norm")
                        and any(True for _ in mod.parameters())]
            if extra is None or children:
                continue
            choices = auto_heads(h) if config.heads == "auto" else resolve_choices(config.heads, h, None, "heads")
            fulls["heads"].append(h)
            heads = ElasticDim(f"{name}.heads", choices, h, kind="heads")
            plan.dims.append(heads)
            taken.add(sid)
            group = heads.couple()
            qkv_axis, axis = Axis(heads, unit=hd, segments=3), Axis(heads, unit=hd)
            specs.set(f"{name}.qkv", out_axis=qkv_axis)
            couple_out(group, qkv, qkv_axis)
            specs.set(f"{name}.proj", in_axis=axis)
            couple_in(group, proj, axis, scores=True)
            for pname, ax in extra.items():
                a = axis if ax == 0 else Axis(heads)
                loose.setdefault(name, {})[pname] = [(ax, a)]
                group.add(attn, pname, ax, unit=a.unit, scores=False)
            plan.after_apply.insert(0, partial(_bind_heads, model, name, heads))
        return taken

    def _plan_depth(self, model: nn.Module, graph: ChannelGraph, config: SearchSpaceConfig, plan: ConversionPlan,
                    fulls: dict) -> None:
        residual = {k for k in graph.blocks if graph.is_residual(k)}
        for name, container in model.named_modules():
            if container is model or not isinstance(container, nn.Sequential | nn.ModuleList) or len(container) < 2 \
                    or name in getattr(graph, "blocked_depth", ()) or not all(c.isdigit() for c in container._modules):
                continue  # an export renumbers the kept blocks 0..d-1: named children would lose their names
            kids = [f"{name}.{c}" for c in container._modules]
            if any(k not in graph.blocks for k in kids):
                continue  # not every child ran once on one tensor (a container the forward does not iterate)
            # a residual block holds no residual blocks itself (else it is a stage); only trailing blocks are
            # dropped, so the kept ones keep their names (and an export its state_dict keys)
            skippable = [k in residual and not any(r.startswith(k + ".") for r in residual) for k in kids]
            owned = [{id(p) for p in child.parameters()} for child in container.children()]
            for i, params in enumerate(owned):  # a block sharing weights with another (CoaT's shared cpe) stays
                if any(params & other for j, other in enumerate(owned) if j != i):
                    skippable[i] = False
            n = len(kids)
            floor = max((i + 1 for i, s in enumerate(skippable) if not s), default=0)
            if floor == n:
                continue
            choices = auto_depth(n, floor) if config.depth == "auto" else [
                c for c in resolve_choices(config.depth, n, None, "depth") if c >= floor]
            fulls["depth"].append(n)
            depth = ElasticDim(f"{name}.depth", sorted(set(choices) | {n}), n, kind="depth")
            plan.dims.append(depth)
            cls = ElasticSequential if isinstance(container, nn.Sequential) else ElasticModuleList
            plan.replace(name, lambda m, d=depth, c=cls: c.from_module(m, d))

    def _emit(self, plan: ConversionPlan, specs: OpSpecs, loose: dict) -> None:
        from lightning_elastic.adapters.timm_efficientnet import ElasticConv2dSame

        for name, kwargs in specs.specs.items():
            module = specs.model.get_submodule(name)
            cls = ElasticConv2dSame if type(module).__name__ == "Conv2dSame" else op_class(module)
            plan.replace(name, partial(cls.from_module, **kwargs))
        for name, slices in loose.items():
            plan.replace(name, partial(ElasticParams.wrap, slices=slices))

    def _nothing_elastic(self, model: nn.Module, graph: ChannelGraph) -> str:
        reasons: dict[str, int] = {}
        streams = 0
        for root in graph.roots():
            space = graph.spaces[root]
            streams += space.residual and not space.fixed
            if space.producers and space.fixed:
                for r in dict.fromkeys(space.fixed):
                    reasons[r] = reasons.get(r, 0) + 1
        top = sorted(reasons, key=lambda r: -reasons[r])[:4]
        return (f"the generic conversion found no elastic dimension in this {type(model).__name__}: no channel "
                f"space is elastic (fixed ones: {'; '.join(top) or 'none'}) and no container has residual blocks "
                "to skip. Supported: channel spaces of Conv2d / Linear / BatchNorm / LayerNorm / "
                "GroupNorm sliced as prefixes, fused-qkv attention heads, residual blocks in Sequential / "
                "ModuleList. HINT: "
                + (f"its {streams} residual-coupled spaces follow `stage_width` (None here): pass e.g. "
                   "stage_width=(0.5, 0.75, 1.0); or " if streams else "")
                + "register an adapter for the blocking modules named above.")

    # -- export / rebuild ----------------------------------------------------------------------------------
    def describe(self, model: nn.Module) -> dict[str, Any]:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        return {"library": "timm", "architecture": cfg.get("architecture"),
                "num_classes": getattr(model, "num_classes", None), "in_chans": _in_chans(model)}

    def build_original(self, meta: dict[str, Any]) -> nn.Module:
        return build_timm(meta)

    def finalize_export(self, model: nn.Module, supernet: Any, cfg: dict[str, int]) -> None:
        fix_timm_widths(model)


def fix_timm_widths(model: nn.Module) -> None:
    """Set a timm export's ``num_features`` / ``head_hidden_size`` (and the last ``feature_info`` entry) to the
    widths its forward now produces, so ``reset_classifier``, ``forward_head(pre_logits=True)`` and heads users build
    on ``num_features`` see the subnet's width, not the supernet's. Read off one no-grad forward at the tracing size."""
    if not hasattr(model, "num_features") or not hasattr(model, "forward_features"):
        return
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            features = model.forward_features(example_input(model)[:1])
            pre_logits = model.forward_head(features, pre_logits=True) if hasattr(model, "forward_head") else None
    except Exception:  # noqa: BLE001 - a model whose head cannot be probed keeps its attributes (as timm built them)
        return
    finally:
        model.train(training)
    if isinstance(features, torch.Tensor) and features.dim() >= 2:
        nhwc = features.dim() != 4 or str(getattr(model, "output_fmt", "NCHW")).upper() == "NHWC"
        width = int(features.shape[-1] if nhwc else features.shape[1])
        old = model.num_features
        model.num_features = width
        info = getattr(model, "feature_info", None)
        if isinstance(info, list) and info and isinstance(info[-1], dict) and info[-1].get("num_chs") == old:
            info[-1]["num_chs"] = width
    if isinstance(pre_logits, torch.Tensor) and hasattr(model, "head_hidden_size"):
        model.head_hidden_size = int(pre_logits.shape[-1])


def _failing_dims(model: nn.Module, plan: ConversionPlan, example: torch.Tensor) -> dict[str, str]:
    """Elastic dims at whose smallest value the planned supernet cannot run ``example`` (on a copy of ``model``)."""
    import copy

    dims = [d for d in plan.dims if d.is_elastic]
    if not dims:
        return {}
    clone = copy.deepcopy(model).eval()
    for name, factory in sorted(plan.replacements, key=lambda r: -r[0].count(".")):
        parent, _, child = name.rpartition(".")
        holder = clone.get_submodule(parent) if parent else clone
        new = factory(getattr(holder, child) if not child.isdigit() else holder._modules[child])
        holder._modules[child] = new
    from lightning_elastic.adapters.timm_vit import _set_heads

    def run(subset: list[ElasticDim]) -> str | None:
        for d in subset:
            d.active = d.min
            if d.kind == "heads":  # the plan's listeners are bound to the original model, not to the clone
                _set_heads(clone.get_submodule(d.name[: -len(".heads")]), d.min)
        try:
            with torch.no_grad():
                clone(example[:1])
            return None
        except Exception as err:  # noqa: BLE001 - any failure means this space cannot shrink
            return f"{type(err).__name__}: {str(err)[:120]}"
        finally:
            for d in subset:
                d.active = d.full
                if d.kind == "heads":
                    _set_heads(clone.get_submodule(d.name[: -len(".heads")]), d.full)

    if run(dims) is None:
        return {}
    failed = {}
    for d in dims:
        err = run([d])
        if err is not None:
            failed[d.name] = err
    return failed or {d.name: "fails only with other dims at their smallest" for d in dims}


def _bind_heads(model: nn.Module, name: str, heads: ElasticDim) -> None:
    """Keep ``num_heads`` of the attention module now at ``name`` (it may have been swapped) in sync with ``heads``;
    an export copies the module with the active value, so it needs no fix afterwards."""
    from lightning_elastic.adapters.timm_vit import _set_heads

    heads.on_change(partial(_set_heads, model.get_submodule(name)))


register_adapter(GenericAdapter())
