"""timm ResNet family (BasicBlock / Bottleneck, deep-stem ``d`` variants, SE variants).

Dimensions:
    ``layer{i}.depth``: blocks kept in stage ``i`` (trailing blocks are skipped; block 0 changes shape, never skipped).
    ``layer{i}.{j}.width``: the bottleneck (inner) width of block ``j`` — conv1/conv2 outputs of a Bottleneck, conv1
        output of a BasicBlock.

ResNeXt blocks (grouped 3x3 convs) keep their width: prefix-slicing a grouped conv would cut whole groups, not
channels per group. Their width dims exist at full size only, so ``width='auto'`` gives a depth-only space,
``exclude=['*.width']`` / ``width=None`` are accepted, and an explicit width list or override is an error.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from torch import nn

from lightning_elastic.adapters.base import Adapter, ConversionPlan
from lightning_elastic.adapters.kit import OpSpecs, couple_in, couple_out
from lightning_elastic.adapters.registry import register_adapter
from lightning_elastic.core.config import SearchSpaceConfig, check_explicit_fields, resolve_choices
from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.core.errors import ConversionError
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
        fulls: dict[str, list[int]] = {"width": [], "depth": []}
        for stage_idx in range(1, 5):
            stage_name = f"layer{stage_idx}"
            stage = getattr(model, stage_name, None)
            if not isinstance(stage, nn.Sequential):
                continue
            n = len(stage)
            depth = ElasticDim(f"{stage_name}.depth", resolve_choices(config.depth, n, None, "depth")
                               if config.depth != "auto" else auto_depth(n), n, kind="depth")
            fulls["depth"].append(n)
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
                        "Bottleneck. HINT: convert it with adapter='generic' (graph-based), or register an adapter for "
                        "this block type."
                    )
                full = block.conv1.out_channels
                sizes = [getattr(block, c).out_channels for c in convs] + [getattr(block, nxt[convs[-1]]).in_channels]
                if len(set(sizes)) > 1:
                    raise ConversionError(
                        f"{prefix} has inner widths {sizes} ({' / '.join(convs)} out, {nxt[convs[-1]]} in; a pruned "
                        "model); the timm-resnet adapter needs one inner width per block. HINT: convert it with "
                        "adapter='generic', which gives each channel space its own width dim."
                    )
                fulls["width"].append(full)
                name = f"{prefix}.width"
                groups = max(getattr(block, c).groups for c in convs + [nxt[convs[-1]]])
                if groups > 1:
                    # ResNeXt: the dim exists (so names, `exclude` and `overrides` globs match) but stays full
                    _check_grouped(name, groups, full, config)
                    plan.dims.append(ElasticDim(name, [full], full, kind="width"))
                    continue
                dim = ElasticDim(name, resolve_choices(config.width, full, AUTO_WIDTH, "width"), full, kind="width")
                plan.dims.append(dim)
                for conv in convs:
                    group = dim.couple()
                    specs.set(f"{prefix}.{conv}", out_axis=dim)
                    specs.set(f"{prefix}.{bns[conv]}", axis=dim)
                    specs.set(f"{prefix}.{nxt[conv]}", in_axis=dim)
                    couple_out(group, getattr(block, conv))
                    couple_out(group, getattr(block, bns[conv]))
                    couple_in(group, getattr(block, nxt[conv]))
        check_explicit_fields(config, fulls, self.name)
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


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def _check_grouped(name: str, groups: int, full: int, config: SearchSpaceConfig) -> None:
    """A grouped-conv block's width must stay full: refuse a width list or override that asks for more."""
    if any(_matches(name, p) for p in config.exclude):
        return
    asked = next(((f"`overrides[{p!r}]`", c) for p, c in config.overrides.items() if _matches(name, p)), None)
    if asked is None and config.width not in ("auto", None):
        asked = (f"`width`={config.width!r}", resolve_choices(config.width, full, None, "width"))
    if asked is not None and set(asked[1]) - {full}:
        raise ConversionError(
            f"{asked[0]} asks for an elastic width of {name} (full {full}), which uses grouped convolutions "
            f"(groups={groups}, ResNeXt-style); allowed there: the full width only. HINT: pass width=None or "
            "exclude=['*.width'] (stage depth stays elastic), or width='auto', which keeps grouped blocks at full width."
        )


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
