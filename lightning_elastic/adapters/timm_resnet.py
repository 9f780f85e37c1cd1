"""timm ResNet family (BasicBlock / Bottleneck, deep-stem ``d`` variants, SE variants).

Dimensions:
    ``layer{i}.depth``: blocks kept in stage ``i`` (trailing blocks are skipped; block 0 changes shape, never skipped).
    ``layer{i}.{j}.width``: the bottleneck (inner) width of block ``j`` — conv1/conv2 outputs of a Bottleneck, conv1
        output of a BasicBlock.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_elastic.adapters._build import OpSpecs, couple_in, couple_out
from lightning_elastic.adapters.base import Adapter, ConversionPlan
from lightning_elastic.core.config import SearchSpaceConfig, resolve_choices
from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.core.errors import ConversionError
from lightning_elastic.core.registry import register_adapter
from lightning_elastic.ops.depth import ElasticSequential

AUTO_WIDTH = (0.5, 0.75, 1.0)


def auto_depth(n: int) -> list[int]:
    """OFA-ResNet style: drop up to two trailing blocks."""
    return list(range(max(1, n - 2), n + 1))


class TimmResNetAdapter(Adapter):
    name = "timm-resnet"
    supported = "timm ResNet / ResNet-D / SE-ResNet (BasicBlock, Bottleneck): stage depth, bottleneck width"

    def matches(self, model: nn.Module) -> bool:
        try:
            from timm.models.resnet import ResNet
        except ImportError:  # pragma: no cover
            return False
        return isinstance(model, ResNet)

    def plan(self, model: nn.Module, config: SearchSpaceConfig) -> ConversionPlan:
        from timm.models.resnet import BasicBlock, Bottleneck

        plan = ConversionPlan(meta=self.describe(model))
        specs = OpSpecs(model)
        for stage_idx in range(1, 5):
            stage_name = f"layer{stage_idx}"
            stage = getattr(model, stage_name, None)
            if not isinstance(stage, nn.Sequential):
                continue
            n = len(stage)
            depth = ElasticDim(f"{stage_name}.depth", resolve_choices(config.depth, n, None, "depth")
                               if config.depth != "auto" else auto_depth(n), n, kind="depth")
            plan.dims.append(depth)
            plan.replace(stage_name, lambda m, d=depth: ElasticSequential.from_module(m, d))
            for j, block in enumerate(stage):
                prefix = f"{stage_name}.{j}"
                if isinstance(block, Bottleneck):
                    convs = ["conv1", "conv2"]
                    nxt = {"conv1": "conv2", "conv2": "conv3"}
                    bns = {"conv1": "bn1", "conv2": "bn2"}
                elif isinstance(block, BasicBlock):
                    convs = ["conv1"]
                    nxt = {"conv1": "conv2"}
                    bns = {"conv1": "bn1"}
                else:
                    raise ConversionError(
                        f"{prefix} is a {type(block).__name__}; the timm-resnet adapter supports BasicBlock and "
                        "Bottleneck. HINT: register an adapter for this block type."
                    )
                full = block.conv1.out_channels
                choices = resolve_choices(config.width, full, AUTO_WIDTH, "width")
                groups = [getattr(block, c).groups for c in convs + [nxt[convs[-1]]]]
                if any(g > 1 for g in groups) and len(choices) > 1:
                    raise ConversionError(
                        f"{prefix} uses grouped convolutions (groups={max(groups)}, ResNeXt-style); elastic width "
                        "of grouped convs is not supported. HINT: pass width=None or exclude '*.width'."
                    )
                dim = ElasticDim(f"{prefix}.width", choices, full, kind="width")
                plan.dims.append(dim)
                for conv in convs:
                    group = dim.couple()
                    specs.set(f"{prefix}.{conv}", out_axis=dim)
                    specs.set(f"{prefix}.{bns[conv]}", axis=dim)
                    specs.set(f"{prefix}.{nxt[conv]}", in_axis=dim)
                    couple_out(group, getattr(block, conv))
                    couple_out(group, getattr(block, bns[conv]))
                    couple_in(group, getattr(block, nxt[conv]))
        specs.emit(plan)
        return plan

    def describe(self, model: nn.Module) -> dict[str, Any]:
        return {
            "library": "timm",
            "architecture": model.pretrained_cfg.get("architecture") if getattr(model, "pretrained_cfg", None) else None,
            "num_classes": model.num_classes,
            "in_chans": _in_chans(model),
        }

    def build_original(self, meta: dict[str, Any]) -> nn.Module:
        return build_timm(meta)


def _in_chans(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def build_timm(meta: dict[str, Any]) -> nn.Module:
    """Rebuild a timm model (random init) from adapter metadata."""
    import timm

    if not meta.get("architecture"):
        from lightning_elastic.core.errors import ExportError

        raise ExportError(
            f"the subnet's metadata has no timm architecture name (meta={meta!r}), so it cannot be rebuilt. "
            "HINT: convert models made by timm.create_model(name), which records the name in pretrained_cfg."
        )
    kwargs = {k: meta[k] for k in ("num_classes", "in_chans", "img_size") if meta.get(k) is not None}
    return timm.create_model(meta["architecture"], pretrained=False, **kwargs)


register_adapter(TimmResNetAdapter())
