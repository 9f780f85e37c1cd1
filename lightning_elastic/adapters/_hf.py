"""Where a transformers model keeps things (:class:`Layout`), and how a layout becomes dims and op specs.

A family adapter (or the structure discovery of :mod:`~lightning_elastic.adapters.hf_generic`) describes *where*
things are: one or more layer stacks, per layer the attention projections (separate, fused in equal q/k/v segments,
fused per head as in GPT-NeoX, or fused with GQA as in Phi-3), cross-attention, the MLP and the residual-stream norms,
plus embeddings, final norms and heads. :func:`plan_layout` turns any layout into dims and op specs the same way.
peft ``lora.Linear`` wrappers are resolved transparently: the frozen ``base_layer`` is sliced, and ``lora_A`` (input)
/ ``lora_B`` (output) are sliced with it, so a narrowed base and its adapters always stay consistent. GPT-style
``Conv1D`` (a transposed Linear) gets :class:`~lightning_elastic.ops.conv1d.ElasticConv1D`.

Dimensions (``layers`` is the stack's name: ``layers`` for one stack, its path such as ``encoder.block`` for more):
    ``layers.depth``: layers kept: trailing layers are dropped by default; with calibration data the least
        influential go first (``SearchSpaceConfig.depth_importance``); decoders, and stacks whose layer 0 computes a
        position bias for all (T5), always keep layer 0.
    ``layers.{i}.attn.heads``: query heads of layer ``i`` (total count); ``layers.attn.heads`` for a stack sharing
        one count (T5); ``layers.{i}.cross_attn.heads`` for cross-attention. With grouped-query attention every KV
        head is kept and the same number of query heads is dropped from each KV group, so values are multiples of
        ``num_key_value_heads`` and ``head_dim`` is never sliced (RoPE). Without GQA, whole heads (q, k and v) go.
    ``layers.{i}.mlp.hidden``: MLP intermediate size of layer ``i`` (gate/up outputs, down input; a fused
        ``gate_up_proj`` is sliced as two segments).
    ``hidden``: the residual-stream (embedding) width, off unless ``SearchSpaceConfig.embed_dim`` is set.
"""

from __future__ import annotations

import fnmatch
from functools import partial

from torch import nn

from lightning_elastic.adapters.base import ConversionPlan, LayerStack
from lightning_elastic.adapters.hf_fused import ElasticFusedQKV, QRows
from lightning_elastic.adapters.hf_layout import AttnLayout, Layout, Stack, features, is_lora_layer, is_rms_norm
from lightning_elastic.adapters.kit import OpSpecs, op_class
from lightning_elastic.core.config import SearchSpaceConfig, resolve_choices
from lightning_elastic.core.dims import ChannelGroup, ElasticDim
from lightning_elastic.core.errors import ConfigError, ConversionError
from lightning_elastic.ops.base import Axis
from lightning_elastic.ops.conv1d import ElasticConv1D, is_conv1d
from lightning_elastic.ops.depth import ElasticModuleList
from lightning_elastic.ops.params import ElasticParams
from lightning_elastic.ops.rmsnorm import ElasticRMSNorm

AUTO_WIDTH = (0.5, 0.75, 1.0)
AUTO_HEADS = (0.5, 0.75, 1.0)
OWN_CONFIG = "_elastic_own_config"  # marks an attention module given its own copy of the model config


class ScaledDim:
    """A read-only view of a dim divided by a constant: the per-KV-group query heads of a total-heads dim."""

    def __init__(self, parent: ElasticDim, divisor: int) -> None:
        self.parent, self.divisor = parent, divisor
        self.name = f"{parent.name}/{divisor}"

    @property
    def active(self) -> int:
        return self.parent.active // self.divisor

    @property
    def full(self) -> int:
        return self.parent.full // self.divisor

    @property
    def version(self) -> int:
        return self.parent.version


class _Wiring:
    """Sets axes on Linears (resolving peft wrappers) and fills the matching importance groups."""

    def __init__(self, model: nn.Module, specs: OpSpecs) -> None:
        self.model, self.specs = model, specs

    def _split(self, path: str) -> tuple[str, nn.Module, list[str]]:
        module = self.model.get_submodule(path)
        if is_lora_layer(module):
            return f"{path}.base_layer", module.base_layer, list(module.lora_A.keys())
        return path, module, []

    def out(self, group: ChannelGroup, path: str, axis: Axis) -> None:
        base, module, adapters = self._split(path)
        self.specs.set(base, out_axis=axis)
        group.add(module, "weight", 1 if is_conv1d(module) else 0, unit=axis.unit, segments=axis.segments)
        group.add(module, "bias", 0, unit=axis.unit, segments=axis.segments, scores=False)
        for a in adapters:
            lora_b = self.model.get_submodule(f"{path}.lora_B.{a}")
            self.specs.set(f"{path}.lora_B.{a}", out_axis=axis)
            group.add(lora_b, "weight", 0, unit=axis.unit, segments=axis.segments, scores=False)
            group.add(lora_b, "bias", 0, unit=axis.unit, segments=axis.segments, scores=False)

    def into(self, group: ChannelGroup, path: str, axis: Axis) -> None:
        base, module, adapters = self._split(path)
        self.specs.set(base, in_axis=axis)
        group.add(module, "weight", 0 if is_conv1d(module) else 1, unit=axis.unit, segments=axis.segments,
                  scores=False)
        for a in adapters:
            self.specs.set(f"{path}.lora_A.{a}", in_axis=axis)
            group.add(self.model.get_submodule(f"{path}.lora_A.{a}"), "weight", 1, unit=axis.unit,
                      segments=axis.segments, scores=False)

    def norm(self, group: ChannelGroup, path: str, dim: ElasticDim) -> None:
        module = self.model.get_submodule(path)
        self.specs.set(path, axis=dim)
        group.add(module, "weight", 0, scores=False)
        group.add(module, "bias", 0, scores=False)

    def embedding(self, group: ChannelGroup, path: str, dim: ElasticDim) -> None:
        self.specs.set(path, axis=dim)
        group.add(self.model.get_submodule(path), "weight", 1)

    def table(self, group: ChannelGroup, path: str, dim: ElasticDim) -> None:
        """An Embedding with one column per head (T5's relative attention bias)."""
        self.specs.set(path, axis=dim)
        group.add(self.model.get_submodule(path), "weight", 1, scores=False)


class HFOpSpecs(OpSpecs):
    """:class:`OpSpecs` that also knows GPT-style ``Conv1D`` and RMS norms not named ``*RMSNorm`` (``T5LayerNorm``)."""

    def emit(self, plan: ConversionPlan) -> None:
        for name, kwargs in self.specs.items():
            module = self.model.get_submodule(name)
            if "param_slices" in kwargs:
                slices = {n: [(axis, ax)] for n, axis, ax in kwargs["param_slices"]}
                plan.replace(name, partial(ElasticParams.wrap, slices=slices))
                continue
            if isinstance(kwargs.get("out_axis"), QRows):
                cls = ElasticFusedQKV
            elif is_conv1d(module):
                cls = ElasticConv1D
            elif is_rms_norm(module):
                cls = ElasticRMSNorm
            else:
                cls = op_class(module)
            plan.replace(name, partial(cls.from_module, **kwargs))


def head_choices(config: SearchSpaceConfig, name: str, num_heads: int, num_kv: int) -> list[int]:
    """Total-head choices that keep whole KV groups (multiples of ``num_kv``) when the model uses GQA.

    Raises:
        ConfigError: an absolute head count or an override that is not a multiple of ``num_key_value_heads``.
    """
    gqa = num_kv < num_heads
    step = num_kv if gqa else 1
    spec = config.heads
    for pattern, values in config.overrides.items():
        if gqa and (pattern == name or fnmatch.fnmatchcase(name, pattern)):
            bad = [v for v in values if v % step]
            if bad:
                raise ConfigError(
                    f"`overrides[{pattern!r}]` has head counts {bad} for {name!r}, which would break grouped-query "
                    f"attention ({num_heads} query heads over {num_kv} KV heads); allowed: multiples of {num_kv} up "
                    f"to {num_heads}. HINT: use e.g. {[step * g for g in range(1, num_heads // step + 1)]}."
                )
    if spec not in (None, "auto") and not all(isinstance(v, float) and v <= 1.0 for v in spec):
        bad = [v for v in spec if int(v) % step]
        if gqa and bad:
            raise ConfigError(
                f"`heads` has absolute head counts {bad}, which would break grouped-query attention ({num_heads} "
                f"query heads over {num_kv} KV heads); allowed: multiples of {num_kv}. HINT: use ratios such as "
                f"heads=(0.5, 1.0) or multiples of {num_kv}."
            )
        spec = [int(v) // step for v in spec]
    return [c * step for c in resolve_choices(spec, num_heads // step, AUTO_HEADS, "heads")]


def check_depth_order(order: list[int] | None, n: int, family: str) -> None:
    """An importance-ordered depth must name every layer once, or a subnet would skip or repeat layers.

    Raises:
        ConfigError: ``order`` is not a permutation of ``range(n)``.
    """
    if order is None:
        return
    items = list(order) if isinstance(order, list | tuple) else [order]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in items) or sorted(items) != list(range(n)):
        raise ConfigError(
            f"`depth_order` got {order!r}, which is not an ordering of this {family} model's {n} layers; "
            f"allowed: each of 0..{n - 1} exactly once, most important first. HINT: e.g. depth_order="
            f"{[0, *range(n - 1, 0, -1)]!r} keeps the first and the last layers longest, or None to drop trailing "
            "layers."
        )


def _mixed_layer_types(model: nn.Module) -> str | None:
    """Why the layer order is fixed: HF models index ``config.layer_types`` (sliding / full attention) by position."""
    types = getattr(getattr(model, "config", None), "layer_types", None)
    if isinstance(types, list | tuple) and len(set(types)) > 1:
        return (f"its layers differ in type ({sorted(set(map(str, types)))} in config.layer_types), and the model "
                "picks each layer's attention mask by position, so only trailing layers can be dropped")
    return None


def plan_layout(model: nn.Module, layout: Layout, config: SearchSpaceConfig, plan: ConversionPlan,
                specs: OpSpecs, *, depth_auto: tuple[float, ...] | None, depth_order: list[int] | None = None) -> None:
    """Add the dims and op specs of ``layout`` to ``plan`` / ``specs`` (touches nothing in ``model``)."""
    wire = _Wiring(model, specs)
    hidden_choices = resolve_choices(config.embed_dim, layout.hidden, None, "embed_dim")
    if len(hidden_choices) > 1 and layout.hidden_blockers:
        raise ConversionError(
            f"`embed_dim`={config.embed_dim!r} asks for an elastic hidden size, but this {layout.family} model has "
            f"modules {layout.hidden_blockers[:3]} that the adapter cannot narrow; allowed: embed_dim=None here. "
            "HINT: pass embed_dim=None, or use a bare/classification model of this family."
        )
    hidden = ElasticDim("hidden", hidden_choices, layout.hidden, kind="width")
    # a bare model returns the hidden states: reordering them would permute its output, so keep the order
    hgroup = ChannelGroup() if layout.bare else hidden.couple()
    elastic_hidden = hidden.is_elastic or any(fnmatch.fnmatchcase("hidden", p) for p in config.overrides)
    for k, stack in enumerate(layout.stacks):
        _plan_stack(model, stack, layout.family, config, plan, wire, depth_auto, depth_order if k == 0 else None,
                    hgroup if elastic_hidden else None, hidden, first=k == 0)
    if elastic_hidden:
        hax = Axis(hidden)
        for emb in layout.embeddings:
            wire.embedding(hgroup, emb, hidden)
        for norm in layout.norms:
            wire.norm(hgroup, norm, hidden)
        for path in layout.reads:
            wire.into(hgroup, path, hax)
        for path in layout.writes:
            wire.out(hgroup, path, hax)


def _plan_stack(model: nn.Module, stack: Stack, family: str, config: SearchSpaceConfig, plan: ConversionPlan,
                wire: _Wiring, depth_auto: tuple[float, ...] | None, depth_order: list[int] | None,
                hgroup: ChannelGroup | None, hidden: ElasticDim, first: bool) -> None:
    n, name = len(stack.layer_list), stack.name
    check_depth_order(depth_order, n, family)
    depth = ElasticDim(f"{name}.depth", resolve_choices(config.depth, n, depth_auto, "depth"), n, kind="depth")
    plan.dims.append(depth)
    if first:
        plan.dims.append(hidden)  # the historical order (checkpointed space signatures): depth, hidden, layers
    plan.replace(stack.path, lambda m, d=depth, o=depth_order: ElasticModuleList.from_module(m, d, o))
    # decoders keep layer 0 first: the KV cache reads the sequence length from it (exports renumber layers anyway);
    # so does a stack whose layer 0 computes the position bias every layer adds (T5)
    tables = any(at.head_tables for la in stack.layer_list[:1] for _, at in la.attns)
    plan.layer_stacks[depth.name] = LayerStack(stack.path, first=(0,) if stack.causal or tables else (),
                                               order=depth_order, fixed=_mixed_layer_types(model))
    shared: dict[str, tuple[ElasticDim, ChannelGroup]] = {}
    for i, layer in enumerate(stack.layer_list):
        for kind, at in layer.attns:
            key = f"{name}.{kind}.heads" if stack.shared_heads else f"{name}.{i}.{kind}.heads"
            lora_gqa = at.fused and at.num_kv < at.num_heads and is_lora_layer(model.get_submodule(at.q))
            if key not in shared:
                choices = [at.num_heads] if lora_gqa else _attn_choices(config, key, at)
                heads = ElasticDim(key, choices, at.num_heads, kind="heads")
                plan.dims.append(heads)
                shared[key] = (heads, heads.couple())
            heads, group = shared[key]
            if stack.shared_heads and at.num_heads != heads.full:
                raise ConversionError(
                    f"layer {i} of {stack.path!r} has {at.num_heads} heads, layer 0 has {heads.full}; one `{key}` dim "
                    "needs the same count in every layer. HINT: register an adapter with a `layout(model)` that keeps "
                    "`shared_heads=False` for this family."
                )
            if not lora_gqa:  # lora_B of a GQA qkv_proj cannot follow its uneven segments: those heads stay whole
                _wire_attn(model, wire, plan, group, heads, at)
        mlp_full = features(model.get_submodule(layer.mlp_out))[0]
        mlp = ElasticDim(f"{name}.{i}.mlp.hidden", resolve_choices(config.width, mlp_full, AUTO_WIDTH, "width"),
                         mlp_full, kind="width")
        plan.dims.append(mlp)
        group = mlp.couple()
        for proj in layer.mlp_in:
            wire.out(group, proj, Axis(mlp, segments=layer.mlp_segments))
        wire.into(group, layer.mlp_out, Axis(mlp))

        if hgroup is not None:
            hax = Axis(hidden)
            for _, at in layer.attns:
                for proj in dict.fromkeys((at.q, at.k, at.v)):  # a fused qkv_proj once
                    wire.into(hgroup, proj, hax)
                wire.out(hgroup, at.o, hax)
            for proj in layer.mlp_in:
                wire.into(hgroup, proj, hax)
            wire.out(hgroup, layer.mlp_out, hax)
            for norm in layer.norms:
                wire.norm(hgroup, norm, hidden)


def _attn_choices(config: SearchSpaceConfig, name: str, at: AttnLayout) -> list[int]:
    """Head choices of one attention; a fixed count where the heads cannot be sliced (and were not asked for).

    Raises:
        ConversionError: ``heads`` or an override asks for elastic heads that ``at.heads_blocker`` forbids.
    """
    if at.heads_blocker is None:
        return head_choices(config, name, at.num_heads, at.num_kv)
    asked = [p for p in config.overrides if p == name or fnmatch.fnmatchcase(name, p)]
    if config.heads not in (None, "auto") or asked:
        raise ConversionError(
            f"`heads`={config.heads!r}{f' (overrides {asked})' if asked else ''} asks for elastic heads in {name!r}, "
            f"but {at.heads_blocker}; allowed: heads=None or 'auto' (heads stay at {at.num_heads} there). "
            "HINT: pass heads=None (or leave it 'auto') and drop overrides of these heads."
        )
    return [at.num_heads]


def _wire_attn(model: nn.Module, wire: _Wiring, plan: ConversionPlan, group: ChannelGroup, heads: ElasticDim,
               at: AttnLayout) -> None:
    if at.fused and at.interleaved:  # [heads, 3, head_dim]: a head is one contiguous unit of q, k and v
        ax, o_ax, projections = Axis(heads, unit=3 * at.head_dim), Axis(heads, unit=at.head_dim), [at.q]
    elif at.fused and at.num_kv < at.num_heads:  # GQA qkv_proj: q heads per KV group, k/v rows whole, no reorder
        ax = Axis(ScaledDim(heads, at.num_kv), unit=at.head_dim, segments=at.num_kv)
        wire.specs.set(at.q, out_axis=QRows(ax, at.num_heads * at.head_dim))
        wire.into(ChannelGroup(), at.o, ax)  # a group of its own: the o_proj columns keep q's order
        _bind_heads(model, plan, heads, at)
        return
    elif at.fused:  # qkv_proj: q, k and v are three equal segments, each sliced to the same heads
        ax, o_ax, projections = Axis(heads, unit=at.head_dim, segments=3), Axis(heads, unit=at.head_dim), [at.q]
    elif at.num_kv < at.num_heads:  # GQA: keep every KV head, drop query heads inside each group
        ax = o_ax = Axis(ScaledDim(heads, at.num_kv), unit=at.head_dim, segments=at.num_kv)
        projections = [at.q]
    else:
        ax = o_ax = Axis(heads, unit=at.head_dim)
        projections = [at.q, at.k, at.v]
    for proj in [*projections, *at.extra_out]:
        wire.out(group, proj, ax)
    wire.into(group, at.o, o_ax)  # o reads q heads only
    for table in at.head_tables:
        wire.table(group, table, heads)
    for path, name, axis in at.head_params:
        wire.specs.set(path, param_slices=((name, axis, Axis(heads)),))
        group.add(model.get_submodule(path), name, axis, scores=False)
    _bind_heads(model, plan, heads, at)


def _bind_heads(model: nn.Module, plan: ConversionPlan, heads: ElasticDim, at: AttnLayout) -> None:
    if at.head_attrs is not None:
        attn = model.get_submodule(at.module)
        plan.after_apply.append(lambda d=heads, a=attn, f=at.head_attrs: d.on_change(lambda v: f(a, v)))
