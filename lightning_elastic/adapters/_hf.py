"""Shared machinery of the Hugging Face transformer adapters (BERT-, Llama-, ViT-family and peft LoRA).

A family adapter describes *where* things are (:class:`Layout`: the layer list, per layer the attention projections,
the MLP and the residual-stream norms, plus embeddings, final norms and heads); :func:`plan_layout` turns a layout
into dims and op specs the same way for every family. peft ``lora.Linear`` wrappers are resolved transparently:
the frozen ``base_layer`` is sliced, and ``lora_A`` (input) / ``lora_B`` (output) are sliced with it, so a narrowed
base and its adapters always stay consistent.

Dimensions (names are relative to the HF layer list, the same for every family):
    ``layers.depth``: layers kept: trailing layers are dropped by default; with calibration data the least
        influential go first (``SearchSpaceConfig.depth_importance``), decoders always keep layer 0.
    ``layers.{i}.attn.heads``: query heads of layer ``i`` (total count). With grouped-query attention every KV head
        is kept and the same number of query heads is dropped from each KV group, so values are multiples of
        ``num_key_value_heads`` and ``head_dim`` is never sliced (RoPE). Without GQA, whole heads (q, k and v) go.
        A fused ``qkv_proj`` (Phi-3) is sliced as three equal segments; with GQA its heads stay at full size.
    ``layers.{i}.mlp.hidden``: MLP intermediate size of layer ``i`` (gate/up outputs, down input; a fused
        ``gate_up_proj`` is sliced as two segments).
    ``hidden``: the residual-stream (embedding) width, off unless ``SearchSpaceConfig.embed_dim`` is set.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lightning_elastic.adapters.kit import OpSpecs
from lightning_elastic.adapters.base import ConversionPlan, LayerStack
from lightning_elastic.core.config import SearchSpaceConfig, resolve_choices
from lightning_elastic.core.dims import ChannelGroup, ElasticDim
from lightning_elastic.core.errors import ConfigError, ConversionError
from lightning_elastic.ops.base import Axis
from lightning_elastic.ops.depth import ElasticModuleList

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


@dataclass
class AttnLayout:
    module: str  # the attention module (its size attributes are kept in sync)
    q: str
    k: str
    v: str
    o: str
    head_dim: int
    num_heads: int
    num_kv: int
    head_attrs: Callable[[nn.Module, int], None] | None = None  # fn(attn_module, active_total_heads)

    @property
    def fused(self) -> bool:
        """One Linear computes q, k and v (``qkv_proj``): its output is three equal segments when ``num_kv ==
        num_heads``; with GQA the k/v parts are smaller, so its heads stay at full size."""
        return self.q == self.k == self.v


@dataclass
class LayerLayout:
    attn: AttnLayout
    mlp_in: list[str]  # Linear(s) producing the MLP hidden (gate, up / intermediate.dense / fc1)
    mlp_out: str  # Linear consuming it
    norms: list[str]  # residual-stream norms inside the layer
    mlp_segments: int = 1  # 2 for a fused gate/up Linear (Phi-3's ``gate_up_proj``: gate half, then up half)


@dataclass
class Layout:
    """Where a family keeps things. Paths are qualified names inside the model handed to :func:`plan_layout`."""

    family: str
    layers: str
    layer_list: list[LayerLayout]
    hidden: int
    embeddings: list[str] = field(default_factory=list)  # nn.Embedding with the hidden size on axis 1
    norms: list[str] = field(default_factory=list)  # residual-stream norms outside the layers
    reads: list[str] = field(default_factory=list)  # Linears reading the residual stream (heads, pooler)
    writes: list[str] = field(default_factory=list)  # Linears writing it (pooler)
    hidden_blockers: list[str] = field(default_factory=list)  # modules that make an elastic hidden size impossible
    causal: bool = False
    bare: bool = False  # the model outputs hidden states itself: hidden channels must keep their order

    def prefixed(self, prefix: str) -> Layout:
        """The same layout seen from a wrapper (``prefix`` such as ``'base_model.model.'``)."""
        def p(path: str) -> str:
            return prefix + path

        layers = [LayerLayout(AttnLayout(p(la.attn.module), p(la.attn.q), p(la.attn.k), p(la.attn.v), p(la.attn.o),
                                         la.attn.head_dim, la.attn.num_heads, la.attn.num_kv, la.attn.head_attrs),
                              [p(m) for m in la.mlp_in], p(la.mlp_out), [p(n) for n in la.norms], la.mlp_segments)
                  for la in self.layer_list]
        return Layout(self.family, p(self.layers), layers, self.hidden, [p(e) for e in self.embeddings],
                      [p(n) for n in self.norms], [p(r) for r in self.reads], [p(w) for w in self.writes],
                      list(self.hidden_blockers), self.causal, self.bare)


def is_lora_layer(module: nn.Module) -> bool:
    """A peft LoRA wrapper (``lora.Linear`` & co.), recognised by structure so peft need not be imported."""
    return hasattr(module, "base_layer") and hasattr(module, "lora_A") and hasattr(module, "lora_B")


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
        group.add(module, "weight", 0, unit=axis.unit, segments=axis.segments)
        group.add(module, "bias", 0, unit=axis.unit, segments=axis.segments, scores=False)
        for a in adapters:
            lora_b = self.model.get_submodule(f"{path}.lora_B.{a}")
            self.specs.set(f"{path}.lora_B.{a}", out_axis=axis)
            group.add(lora_b, "weight", 0, unit=axis.unit, segments=axis.segments, scores=False)
            group.add(lora_b, "bias", 0, unit=axis.unit, segments=axis.segments, scores=False)

    def into(self, group: ChannelGroup, path: str, axis: Axis) -> None:
        base, module, adapters = self._split(path)
        self.specs.set(base, in_axis=axis)
        group.add(module, "weight", 1, unit=axis.unit, segments=axis.segments, scores=False)
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
    n = len(layout.layer_list)
    check_depth_order(depth_order, n, layout.family)
    depth = ElasticDim("layers.depth", resolve_choices(config.depth, n, depth_auto, "depth"), n, kind="depth")
    plan.dims.append(depth)
    plan.replace(layout.layers, lambda m, d=depth, o=depth_order: ElasticModuleList.from_module(m, d, o))
    # decoders keep layer 0 first: the KV cache reads the sequence length from it (exports renumber layers anyway)
    plan.layer_stacks[depth.name] = LayerStack(layout.layers, first=(0,) if layout.causal else (),
                                               order=depth_order, fixed=_mixed_layer_types(model))

    hidden_choices = resolve_choices(config.embed_dim, layout.hidden, None, "embed_dim")
    if len(hidden_choices) > 1 and layout.hidden_blockers:
        raise ConversionError(
            f"`embed_dim`={config.embed_dim!r} asks for an elastic hidden size, but this {layout.family} model has "
            f"modules {layout.hidden_blockers[:3]} that the adapter cannot narrow; allowed: embed_dim=None here. "
            "HINT: pass embed_dim=None, or use a bare/classification model of this family."
        )
    hidden = ElasticDim("hidden", hidden_choices, layout.hidden, kind="width")
    plan.dims.append(hidden)
    # a bare model returns the hidden states: reordering them would permute its output, so keep the order
    hgroup = ChannelGroup() if layout.bare else hidden.couple()
    hax = Axis(hidden)
    elastic_hidden = hidden.is_elastic or any(fnmatch.fnmatchcase("hidden", p) for p in config.overrides)

    for i, layer in enumerate(layout.layer_list):
        at = layer.attn
        name = f"layers.{i}.attn.heads"
        choices = [at.num_heads] if at.fused and at.num_kv < at.num_heads else head_choices(
            config, name, at.num_heads, at.num_kv)
        heads = ElasticDim(name, choices, at.num_heads, kind="heads")
        plan.dims.append(heads)
        group = heads.couple()
        if at.fused:  # qkv_proj: q, k and v are three equal segments, each sliced to the same heads
            ax = Axis(heads, unit=at.head_dim, segments=3)
            projections = [at.q]
        elif at.num_kv < at.num_heads:  # GQA: keep every KV head, drop query heads inside each group
            ax = Axis(ScaledDim(heads, at.num_kv), unit=at.head_dim, segments=at.num_kv)
            projections = [at.q]
        else:
            ax = Axis(heads, unit=at.head_dim)
            projections = [at.q, at.k, at.v]
        for proj in projections:
            wire.out(group, proj, ax)
        wire.into(group, at.o, Axis(heads, unit=at.head_dim) if at.fused else ax)  # o reads q heads only
        if at.head_attrs is not None:
            attn = model.get_submodule(at.module)
            plan.after_apply.append(lambda d=heads, a=attn, f=at.head_attrs: d.on_change(lambda v: f(a, v)))

        mlp_full = model.get_submodule(wire._split(layer.mlp_out)[0]).in_features
        mlp = ElasticDim(f"layers.{i}.mlp.hidden", resolve_choices(config.width, mlp_full, AUTO_WIDTH, "width"),
                         mlp_full, kind="width")
        plan.dims.append(mlp)
        group = mlp.couple()
        for proj in layer.mlp_in:
            wire.out(group, proj, Axis(mlp, segments=layer.mlp_segments))
        wire.into(group, layer.mlp_out, Axis(mlp))

        if elastic_hidden:
            for proj in dict.fromkeys((at.q, at.k, at.v, *layer.mlp_in)):  # a fused qkv_proj once
                wire.into(hgroup, proj, hax)
            wire.out(hgroup, at.o, hax)
            wire.out(hgroup, layer.mlp_out, hax)
            for norm in layer.norms:
                wire.norm(hgroup, norm, hidden)
    if elastic_hidden:
        for emb in layout.embeddings:
            wire.embedding(hgroup, emb, hidden)
        for norm in layout.norms:
            wire.norm(hgroup, norm, hidden)
        for path in layout.reads:
            wire.into(hgroup, path, hax)
        for path in layout.writes:
            wire.out(hgroup, path, hax)


def layer_values(cfg: dict[str, int], space_dims: dict[str, int], n: int, kind: str) -> list[int]:
    """Per-layer values of ``heads``/``mlp.hidden`` in ``cfg`` (dims not in the space are at ``space_dims`` full)."""
    key = "attn.heads" if kind == "heads" else "mlp.hidden"
    return [cfg.get(f"layers.{i}.{key}", space_dims.get(f"layers.{i}.{key}")) for i in range(n)]


def describe_hf(model: nn.Module) -> dict[str, Any]:
    """Metadata that rebuilds a randomly initialised model of the same class and config."""
    return {"library": "transformers", "class": type(model).__name__, "config": model.config.to_dict()}


def build_hf(meta: dict[str, Any]) -> nn.Module:
    """Rebuild an HF model (random init) from :func:`describe_hf` metadata."""
    import transformers

    cls = getattr(transformers, meta["class"])
    config = cls.config_class.from_dict(dict(meta["config"]))
    return cls(config).eval()


def renumber_layers(layers: nn.ModuleList) -> None:
    """Give the kept layers consecutive ``layer_idx`` values (KV caches index by it)."""
    for i, layer in enumerate(layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = i


def base_linear(model: nn.Module, path: str) -> nn.Module:
    module = model.get_submodule(path)
    return module.base_layer if is_lora_layer(module) else module


def loadable_by_hf(model: nn.Module) -> bool:
    """Whether ``type(model)(model.config)`` builds exactly these tensor shapes (so plain ``from_pretrained`` works).

    Never raises: a config the class refuses (e.g. BERT with a hidden size that is not a multiple of a smaller head
    count: 9 of 12 heads at hidden 384) means plain ``from_pretrained`` cannot load it, so the subnet is saved for
    ``load_subnet`` instead.
    """
    import torch

    try:
        with torch.device("meta"):
            reference = type(model)(model.config)
    except Exception:  # noqa: BLE001 - any refusal of the class means "not loadable by plain from_pretrained"
        return False
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    return ours == theirs


class HFTransformerAdapter:
    """Mixin with the parts every HF family adapter shares; a family implements :meth:`layout`.

    Args:
        depth_order: which layers ``layers.depth`` keeps first: None leaves it to ``SearchSpaceConfig.
            depth_importance`` (block influence with calibration data, else trailing layers dropped); a list of layer
            indices (most important first) fixes the order here. Prefer ``depth_importance={'layers.depth': [...]}``:
            it travels with the space config into checkpoints and ``subnet.json``.
    """

    family = ""
    depth_auto: tuple[float, ...] | None = (0.5, 0.75, 1.0)

    def __init__(self, depth_order: list[int] | None = None) -> None:
        self.depth_order = depth_order

    def layout(self, model: nn.Module) -> Layout | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def update_config(self, config: Any, heads: int, mlp: int, hidden: int, layout: Layout) -> None:
        """Write homogeneous sizes into an exported model's config (family-specific keys)."""
        config.num_attention_heads = heads
        config.intermediate_size = mlp
        config.hidden_size = hidden

    # -- Adapter protocol --------------------------------------------------------------------------------------
    def matches(self, model: nn.Module) -> bool:
        if type(model).__module__.startswith("peft."):
            return False  # PeftModels go to the peft-lora adapter, which reuses this layout
        return hasattr(model, "config") and self.layout(model) is not None

    def plan(self, model: nn.Module, config: SearchSpaceConfig) -> ConversionPlan:
        layout = self.layout(model)
        plan = ConversionPlan(meta=describe_hf(model))
        specs = OpSpecs(model)
        plan_layout(model, layout, config, plan, specs, depth_auto=self.depth_auto, depth_order=self.depth_order)
        specs.emit(plan)
        return plan

    def finalize_export(self, model: nn.Module, supernet: Any, cfg: dict[str, int]) -> None:
        finalize_hf(model, self, "")

    def build_original(self, meta: dict[str, Any]) -> nn.Module:
        return build_hf(meta)

    def save(self, exported: nn.Module, supernet: Any, cfg: dict[str, int], directory) -> None:
        if loadable_by_hf(exported):
            exported.save_pretrained(directory)

    def load(self, directory, info: dict[str, Any]) -> nn.Module | None:
        return load_hf(directory, info["meta"])


def load_hf(directory, meta: dict[str, Any]) -> nn.Module | None:
    """``from_pretrained`` when the folder holds an HF ``config.json`` (homogeneous subnets), else None."""
    from pathlib import Path

    if not (Path(directory) / "config.json").is_file():
        return None
    import transformers

    return getattr(transformers, meta["class"]).from_pretrained(str(directory)).eval()


def finalize_hf(model: nn.Module, adapter: HFTransformerAdapter, prefix: str, hf_model: nn.Module | None = None) -> None:
    """Fix sizes on an exported HF model: renumber layers, update the config, re-tie embeddings.

    ``model`` is what the layout paths refer to (a PeftModel for LoRA supernets, with ``prefix``); ``hf_model`` the
    transformers model inside it (``model`` itself by default).
    """
    hf_model = model if hf_model is None else hf_model
    layout = adapter.layout(hf_model).prefixed(prefix)
    config = hf_model.config
    layers = model.get_submodule(layout.layers)
    kept = [_layer_index(layer, i) for i, layer in enumerate(layers)]
    renumber_layers(layers)
    if config.num_hidden_layers != len(layers):
        types = getattr(config, "layer_types", None)
        config.num_hidden_layers = len(layers)
        if isinstance(types, list | tuple) and len(types) > max(kept, default=0):
            config.layer_types = [types[i] for i in kept]
    heads, mlps = [], []
    for la in layout.layer_list:
        heads.append(base_linear(model, la.attn.o).in_features // la.attn.head_dim)  # also right for fused qkv
        mlps.append(base_linear(model, la.mlp_out).in_features)
    hidden = base_linear(model, layout.layer_list[0].attn.o).out_features if layout.layer_list else layout.hidden
    homogeneous = len(set(heads)) <= 1 and len(set(mlps)) <= 1 and heads
    if homogeneous:
        adapter.update_config(config, heads[0], mlps[0], hidden, layout)
    for la in layout.layer_list:
        attn = model.get_submodule(la.attn.module)
        # the marker is ours (not an HF attribute); a per-layer config (fused attention) stays only while layers
        # differ, a homogeneous export shares the model's config again
        if attn.__dict__.pop(OWN_CONFIG, False) and homogeneous:
            attn.config = config
    quant = getattr(getattr(hf_model, "hf_quantizer", None), "quantization_config", None)
    if "gguf" in str(getattr(quant, "quant_method", "")).lower():
        # GGUF weights were dequantized to float on load: the export is a plain float model that can be saved
        hf_model.hf_quantizer = None
        config.__dict__.pop("quantization_config", None)
    out_emb = hf_model.get_output_embeddings() if hasattr(hf_model, "get_output_embeddings") else None
    if getattr(config, "tie_word_embeddings", False) and isinstance(out_emb, nn.Linear):
        out_emb.weight = hf_model.get_input_embeddings().weight


def _layer_index(layer: nn.Module, default: int) -> int:
    for module in layer.modules():
        if isinstance(getattr(module, "layer_idx", None), int):
            return module.layer_idx
    return default


def head_parts(model: nn.Module, base_prefix: str, hidden: int) -> tuple[list[str], list[str], list[str]]:
    """Linears / LayerNorms outside the base model that touch the hidden size: ``(reads, writes, norms)``.

    A head Linear with ``in_features == hidden`` reads the (elastic) hidden features, one with ``out_features ==
    hidden`` writes them for the next head module (BERT's MLM transform, DistilBERT's pre-classifier), and a
    LayerNorm over ``hidden`` normalises them; slicing all of them alike keeps tied decoders consistent.
    """
    reads, writes, norms = [], [], []
    if not base_prefix:
        return reads, writes, norms  # a bare base model has no head
    for name, module in model.named_modules():
        if not name or name == base_prefix or name.startswith(base_prefix + "."):
            continue
        if any(is_lora_layer(model.get_submodule(p)) for p in _parents(name)):
            continue  # inside a peft wrapper: handled through the wrapper
        if is_lora_layer(module):
            module = module.base_layer
        if isinstance(module, nn.Linear):
            if module.in_features == hidden:
                reads.append(name)
            if module.out_features == hidden:
                writes.append(name)
        elif isinstance(module, nn.LayerNorm) and tuple(module.normalized_shape) == (hidden,):
            norms.append(name)
    return reads, writes, norms


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def has_submodules(layer: nn.Module, paths: tuple[str, ...]) -> bool:
    """Whether ``layer`` has every dotted submodule in ``paths`` (layout detection by structure, not class name)."""
    try:
        for path in paths:
            layer.get_submodule(path)
    except AttributeError:
        return False
    return True


def find_module(model: nn.Module, target: nn.Module) -> str | None:
    """The qualified name of ``target`` inside ``model`` ('' for the model itself)."""
    for name, module in model.named_modules():
        if module is target:
            return name
    return None
