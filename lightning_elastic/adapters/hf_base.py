"""The base class of the transformers adapters, and what it shares: export (config update, layer renumbering,
plain ``save_pretrained`` when the class can rebuild the subnet), rebuilding from metadata, and layout helpers.

A family adapter subclasses :class:`HFTransformerAdapter` and implements ``layout(model)`` (where things are, see
:mod:`lightning_elastic.adapters._hf`); planning, export and saving are the same for every family.
"""

from __future__ import annotations

import weakref
from abc import abstractmethod
from typing import Any

from torch import nn

from lightning_elastic.adapters._hf import OWN_CONFIG, HFOpSpecs, plan_layout
from lightning_elastic.adapters.base import Adapter, ConversionPlan
from lightning_elastic.adapters.hf_layout import LayerLayout, Layout, features, is_lora_layer
from lightning_elastic.core.config import SearchSpaceConfig
from lightning_elastic.ops.depth import ElasticModuleList


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


class HFTransformerAdapter(Adapter):
    """Base class of the transformers adapters: a subclass implements :meth:`layout` (where things are) and, where its
    config names differ, :meth:`update_config` / :meth:`update_depths`; planning and export are shared.

    Args:
        depth_order: which layers ``layers.depth`` keeps first: None leaves it to ``SearchSpaceConfig.
            depth_importance`` (block influence with calibration data, else trailing layers dropped); a list of layer
            indices (most important first) fixes the order here. Prefer ``depth_importance={'layers.depth': [...]}``:
            it travels with the space config into checkpoints and ``subnet.json``.
    """

    family = ""
    depth_auto: tuple[float, ...] | None = (0.5, 0.75, 1.0)
    fallback = False  # True for the structure-discovering adapter: every family adapter is tried first

    def __init__(self, depth_order: list[int] | None = None) -> None:
        self.depth_order = depth_order

    @abstractmethod
    def layout(self, model: nn.Module) -> Layout | None:
        """Where ``model`` keeps its layers (None when this adapter does not handle it)."""

    def layout_of(self, model: nn.Module) -> Layout:
        """:meth:`layout`, found once per model: export reuses what conversion found."""
        layouts = self.__dict__.setdefault("_layouts", weakref.WeakKeyDictionary())
        if model not in layouts:
            layouts[model] = self.layout(model)
        return layouts[model]

    def update_config(self, config: Any, heads: int, mlp: int, hidden: int, layout: Layout) -> None:
        """Write homogeneous sizes into an exported model's config (family-specific keys)."""
        config.num_attention_heads = heads
        config.intermediate_size = mlp
        config.hidden_size = hidden

    def update_depths(self, config: Any, layout: Layout, kept: dict[str, list[int]]) -> None:
        """Write the kept layer counts (``{stack name: original indices kept}``) into an exported model's config."""
        (indices,) = kept.values()  # one stack here; multi-stack adapters override this
        if config.num_hidden_layers != len(indices):
            types = getattr(config, "layer_types", None)
            config.num_hidden_layers = len(indices)
            if isinstance(types, list | tuple) and len(types) > max(indices, default=0):
                config.layer_types = [types[i] for i in indices]

    # -- Adapter protocol --------------------------------------------------------------------------------------
    def matches(self, model: nn.Module) -> bool:
        if type(model).__module__.startswith("peft."):
            return False  # PeftModels go to the peft-lora adapter, which reuses this layout
        return hasattr(model, "config") and self.layout(model) is not None

    def plan(self, model: nn.Module, config: SearchSpaceConfig) -> ConversionPlan:
        layout = self.layout_of(model)
        plan = ConversionPlan(meta=describe_hf(model))
        specs = HFOpSpecs(model)
        plan_layout(model, layout, config, plan, specs, depth_auto=self.depth_auto, depth_order=self.depth_order)
        specs.emit(plan)
        return plan

    def finalize_export(self, model: nn.Module, supernet: Any, cfg: dict[str, int]) -> None:
        finalize_hf(model, self, "", supernet=supernet, cfg=cfg)

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


def finalize_hf(model: nn.Module, adapter: HFTransformerAdapter, prefix: str, hf_model: nn.Module | None = None, *,
                supernet: Any, cfg: dict[str, int]) -> None:
    """Fix sizes on an exported HF model: renumber layers, update the config, re-tie embeddings.

    ``model`` is what the layout paths refer to (a PeftModel for LoRA supernets, with ``prefix``); ``hf_model`` the
    transformers model inside it (``model`` itself by default).
    """
    hf_model = model if hf_model is None else hf_model
    # the layout found at conversion (the export's narrowed shapes could be ambiguous to rediscover), moved onto the
    # kept layers, which the export renumbered 0..d-1
    source = supernet.model
    layout = adapter.layout_of(source.base_model.model if prefix else source).prefixed(prefix)
    config = hf_model.config
    kept, full_lists = {}, []
    for stack in layout.stacks:
        full_lists.append(list(stack.layer_list))
        layers = model.get_submodule(stack.path)
        held = source.get_submodule(stack.path)
        indices = list(range(len(stack.layer_list)))
        if isinstance(held, ElasticModuleList):
            indices = sorted(held.order[: cfg.get(held.depth.name, held.depth.full)])
        stack.layer_list[:] = [_relocate(stack.layer_list[old], stack.path, old, new) for new, old in enumerate(indices)]
        kept[stack.name] = indices
        renumber_layers(layers)
    if any(v != list(range(len(held_all))) for v, held_all in zip(kept.values(), full_lists)):
        adapter.update_depths(config, layout, kept)  # only when layers went (ALBERT runs 1 layer N times)
    heads, mlps = set(), set()
    attns = [at for stack in layout.stacks for la in stack.layer_list for _, at in la.attns]
    for stack in layout.stacks:
        for la in stack.layer_list:
            heads.update(features(model.get_submodule(at.o))[0] // at.head_dim for _, at in la.attns)
            mlps.add(features(model.get_submodule(la.mlp_out))[0])
    first = layout.layer_list[0] if layout.layer_list else None
    hidden = features(model.get_submodule(first.mlp_out))[1] if first else layout.hidden
    homogeneous = len(heads) <= 1 and len(mlps) == 1
    if homogeneous:
        adapter.update_config(config, next(iter(heads), 0), mlps.pop(), hidden, layout)
    for at in attns:
        attn = model.get_submodule(at.module)
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


def _relocate(layer: LayerLayout, path: str, old: int, new: int) -> LayerLayout:
    a, b = f"{path}.{old}.", f"{path}.{new}."
    return layer.prefixed(lambda p: b + p[len(a):] if p.startswith(a) else p)


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
