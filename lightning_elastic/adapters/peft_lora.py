"""peft LoRA supernets (LoNAS / Shears / SQFT): elastic LoRA ranks, optionally with elastic widths of the frozen base.

``to_supernet(peft_model)`` keeps peft untouched: inside each ``lora.Linear`` the inner ``lora_A[name]`` /
``lora_B[name]`` Linears (and, for base dims, ``base_layer``) are swapped for ``ElasticLinear`` under the same names.
Base-model dims (depth, heads, MLP, hidden) come from the transformers adapters' layouts (families first, then the
structure discovery of ``hf_generic``), so a narrowed base Linear (or GPT-2 ``Conv1D``) and its adapter (``lora_A``
input, ``lora_B`` output) are always sliced together, segment by segment for a fused ``qkv_proj`` / ``gate_up_proj``. The base stays frozen: the Parameters and their ``requires_grad`` are peft's own.

Dimensions: the base family's dims plus ``{module}.rank`` per adapted module (``{module}.rank.{adapter}`` when the
model holds several adapters); ``module`` is the name inside the transformers model, as in peft's ``rank_pattern``.
Rank choices are absolute (``SearchSpaceConfig(rank=[32, 24, 16])``) or ratios of each module's ``r``.

Scaling: the LoRA scaling stays ``alpha / r_max`` (``alpha / sqrt(r_max)`` with rslora) for every rank, so a smaller
rank is a plain truncation of the trained adapter (what LoNAS trains), and a subnet's output never jumps when its rank
changes. (Rescaling to ``alpha / r`` per active rank would multiply the truncated update by ``r_max / r``, and rslora's
``alpha / sqrt(r)`` by ``sqrt(r_max / r)``: every rank would then need its own adapter scale during training.) On
export ``alpha_pattern`` is written so that peft recomputes exactly this scaling for the smaller rank:
``alpha' = alpha * r / r_max``, so ``alpha' / r == alpha / r_max`` (rslora: ``alpha' = alpha * sqrt(r / r_max)``, so
``alpha' / sqrt(r) == alpha / sqrt(r_max)``).

Export (``save_subnet``): the folder holds the merged, physically smaller native model (``config.json`` for plain
``from_pretrained`` when homogeneous, else ``load_subnet``), and, when the base is not narrowed, ``peft_adapter/``:
a standard adapter with ``rank_pattern`` / ``alpha_pattern`` that ``PeftModel.from_pretrained(original_base, …)``
loads (importance reordering of the base is undone on the adapter's tensors).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_elastic.adapters._hf import HFOpSpecs, plan_layout
from lightning_elastic.adapters.base import Adapter, ConversionPlan
from lightning_elastic.adapters.hf_base import HFTransformerAdapter, describe_hf, finalize_hf, loadable_by_hf
from lightning_elastic.adapters.hf_layout import features, is_lora_layer
from lightning_elastic.adapters.registry import register_adapter
from lightning_elastic.core.config import SearchSpaceConfig, resolve_choices
from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.core.errors import ConfigError, ConversionError
from lightning_elastic.ops.conv1d import is_conv1d

AUTO_RANK = (0.5, 0.75, 1.0)
PREFIX = "base_model.model."
ADAPTER_DIR = "peft_adapter"


def _base_adapter(inner: nn.Module) -> HFTransformerAdapter | None:
    from lightning_elastic.adapters.registry import registered_adapters

    hf = [a for a in registered_adapters().values() if isinstance(a, HFTransformerAdapter)]
    for adapter in sorted(hf, key=lambda a: a.fallback):  # family adapters first, whatever the import order
        if adapter.layout(inner) is not None:
            return adapter
    return None


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{name inside the transformers model: peft LoRA layer}``."""
    return {n[len(PREFIX):]: m for n, m in model.named_modules() if n.startswith(PREFIX) and is_lora_layer(m)}


def rank_dim_name(module: str, adapter: str, adapters: list[str]) -> str:
    return f"{module}.rank" if len(adapters) == 1 else f"{module}.rank.{adapter}"


class PeftLoraAdapter(Adapter):
    name = "peft-lora"
    supported = ("peft PeftModel with LoRA on nn.Linear targets of a supported transformers model: LoRA rank per "
                 "module, plus the base family's depth / heads / MLP / hidden (frozen)")

    def matches(self, model: nn.Module) -> bool:
        try:
            from peft import PeftModel
        except ImportError:  # pragma: no cover
            return False
        return isinstance(model, PeftModel)

    # -- planning ---------------------------------------------------------------------------------------------
    def _check(self, model: nn.Module, inner: nn.Module) -> Any:
        for adapter, cfg in model.peft_config.items():
            peft_type = str(getattr(cfg, "peft_type", ""))
            if "LORA" not in peft_type.upper() or getattr(cfg, "use_dora", False):
                raise ConversionError(
                    f"peft adapter {adapter!r} is {peft_type}{' with DoRA' if getattr(cfg, 'use_dora', False) else ''};"
                    " allowed: plain LoRA (LoraConfig with use_dora=False). HINT: elastic ranks need vanilla LoRA."
                )
        uncovered = []
        for name, layer in lora_layers(model).items():
            linear = isinstance(layer.base_layer, nn.Linear) or is_conv1d(layer.base_layer)
            if (not linear or len(getattr(layer, "lora_embedding_A", {})) or len(getattr(layer, "lora_variant", {}))
                    or not len(layer.lora_A)):
                uncovered.append(f"{name} ({type(layer.base_layer).__name__})")
        if uncovered:
            raise ConversionError(
                f"LoRA is applied to modules the elastic space does not cover: {uncovered[:5]}; allowed: LoRA on "
                "nn.Linear or GPT-2 Conv1D layers (attention / MLP projections, heads). HINT: restrict `target_modules` of the "
                "LoraConfig to Linear layers, e.g. ['q_proj', 'v_proj', 'up_proj', 'down_proj']."
            )
        base = _base_adapter(inner)
        if base is None:
            model_type = getattr(getattr(inner, "config", None), "model_type", None)
            raise ConversionError(
                f"the PeftModel wraps a {type(inner).__name__} (model_type {model_type!r}) that no transformers "
                "adapter supports; allowed: models built from blocks of attention and a Linear MLP (BERT, Llama, ViT, "
                "GPT-2, T5, … layouts). HINT: register an adapter with a `layout(model)` method for this family (see "
                "lightning_elastic/adapters/hf_llama.py)."
            )
        return base

    def plan(self, model: nn.Module, config: SearchSpaceConfig) -> ConversionPlan:
        inner = model.base_model.model
        base = self._check(model, inner)
        plan = ConversionPlan(meta={"base": describe_hf(inner), "base_adapter": base.name})
        specs = HFOpSpecs(model)
        plan_layout(model, base.layout_of(inner).prefixed(PREFIX), config, plan, specs, depth_auto=base.depth_auto,
                    depth_order=getattr(base, "depth_order", None))
        for name, layer in lora_layers(model).items():
            adapters = list(layer.lora_A.keys())
            for a in adapters:
                r = int(layer.r[a])
                dim_name = rank_dim_name(name, a, adapters)
                dim = ElasticDim(dim_name, _rank_choices(config, dim_name, r), r, kind="rank")
                plan.dims.append(dim)
                path = f"{PREFIX}{name}"
                specs.set(f"{path}.lora_A.{a}", out_axis=dim)
                specs.set(f"{path}.lora_B.{a}", in_axis=dim)
                group = dim.couple()
                group.add(layer.lora_A[a], "weight", 0)
                group.add(layer.lora_B[a], "weight", 1, scores=False)
        specs.emit(plan)
        return plan

    # -- export -----------------------------------------------------------------------------------------------
    def finalize_export(self, model: nn.Module, supernet: Any, cfg: dict[str, int]) -> None:
        from lightning_elastic.adapters.registry import get_adapter

        inner = model.base_model.model
        finalize_hf(model, get_adapter(supernet.meta["base_adapter"]), PREFIX, hf_model=inner, supernet=supernet, cfg=cfg)
        for name, layer in lora_layers(model).items():
            layer.in_features, layer.out_features = features(layer.base_layer)
            for a, peft_cfg in model.peft_config.items():
                if a not in layer.lora_A:
                    continue
                r_max, r = int(layer.r[a]), int(layer.lora_A[a].out_features)
                alpha = peft_cfg.alpha_pattern.get(name, peft_cfg.lora_alpha)
                ratio = math.sqrt(r / r_max) if peft_cfg.use_rslora else r / r_max
                # peft recomputes scaling from (alpha, r) on load: keep alpha / r == the trained alpha / r_max
                peft_cfg.rank_pattern = {**peft_cfg.rank_pattern, name: r}
                peft_cfg.alpha_pattern = {**peft_cfg.alpha_pattern, name: alpha * ratio}
                layer.r[a] = r
                layer.lora_alpha[a] = alpha * ratio

    def save(self, exported: nn.Module, supernet: Any, cfg: dict[str, int], directory: Path) -> None:
        from safetensors.torch import save_file

        from lightning_elastic.core.files import INFO, WEIGHTS, contiguous_state

        directory = Path(directory)
        if not _base_narrowed(exported, supernet.model):
            adapter = copy.deepcopy(exported)
            _undo_base_permutation(adapter, supernet)
            adapter.save_pretrained(str(directory / ADAPTER_DIR))
        merged = copy.deepcopy(exported).merge_and_unload()
        info = json.loads((directory / INFO).read_text())
        base_dims = [d.name for d in supernet.space if d.kind != "rank"]
        space = dict(info["space_config"])
        space["overrides"] = {k: v for k, v in space["overrides"].items() if fnmatch.filter(base_dims, k)}
        space["exclude"] = [k for k in space["exclude"] if fnmatch.filter(base_dims, k)]
        info.update(adapter=supernet.meta["base_adapter"], meta=supernet.meta["base"], space_config=space,
                    arch_config={k: v for k, v in cfg.items() if k in base_dims},
                    model_class=f"{type(merged).__module__}.{type(merged).__qualname__}",
                    num_params=sum(p.numel() for p in merged.parameters()),
                    peft={"arch_config": dict(cfg), "adapter_dir": ADAPTER_DIR if (directory / ADAPTER_DIR).is_dir()
                          else None})
        (directory / INFO).write_text(json.dumps(info, indent=2))
        if loadable_by_hf(merged):
            merged.save_pretrained(str(directory))
        else:
            save_file(contiguous_state(merged), str(directory / WEIGHTS))


def _rank_choices(config: SearchSpaceConfig, name: str, r: int) -> list[int]:
    spec = config.rank
    absolute = spec not in (None, "auto") and not all(isinstance(v, float) and v <= 1.0 for v in spec)
    if absolute and any(v > r for v in spec):
        raise ConfigError(
            f"`rank` has {sorted(v for v in spec if v > r)} above the LoRA rank r={r} of {name!r}; allowed: integers "
            f"in [1, {r}] (or ratios <= 1.0). HINT: train the adapter with a larger r, or use e.g. rank=[{r}, "
            f"{max(1, r * 3 // 4)}, {max(1, r // 2)}]."
        )
    return resolve_choices(spec, r, AUTO_RANK, "rank")


def _base_narrowed(exported: nn.Module, original: nn.Module) -> bool:
    """Whether any frozen base tensor (or the layer count) of the export is smaller than the supernet's."""
    ours = {k: v.shape for k, v in exported.state_dict().items() if "lora_" not in k}
    theirs = {k: v.shape for k, v in original.state_dict().items() if "lora_" not in k}
    return ours != theirs


@torch.no_grad()
def _undo_base_permutation(exported: nn.Module, supernet: Any) -> None:
    """Apply the inverse of each base dim's importance permutation to the exported adapter tensors."""
    from lightning_elastic.core.slicing import permute_axis

    names = {id(p): n for n, p in supernet.model.named_parameters()}
    params = dict(exported.named_parameters())
    for dim in supernet.space:
        if dim.kind == "rank" or dim.importance is None:
            continue
        for group, perm in zip(dim.groups, dim.importance):
            for ct in group.tensors:
                name = names.get(id(ct.tensor))
                if name is None or "lora_" not in name or name not in params:
                    continue
                target = params[name]
                inverse = torch.argsort(perm)
                target.data = permute_axis(target.data, ct.axis, inverse, ct.unit, ct.segments)


register_adapter(PeftLoraAdapter())
