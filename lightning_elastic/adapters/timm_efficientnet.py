"""timm EfficientNet / MobileNetV3 family (MobileNetV2/V3, MNASNet, EfficientNet, EfficientNet-Lite, ``tf_`` variants).

Dimensions (Once-for-All's space):
    ``blocks.{i}.depth``: blocks kept in stage ``i`` (stages with more than one block). Trailing blocks are skipped;
        block 0 (it may change shape) is never skipped, nor any block that changes shape. ``'auto'`` keeps at least
        half a stage: OFA's {2, 3, 4} for four blocks, {2, 3} for three, {1, 2} for two (see :func:`auto_depth`).
    ``blocks.{i}.{j}.expand``: mid channels of an ``InvertedResidual`` (conv_pw out + bn1, depthwise conv_dw + bn2,
        squeeze-excite conv_reduce in / conv_expand out, conv_pwl in). Values are absolute channel counts; the
        ``SearchSpaceConfig.expand`` choices are expansion ratios of the block's input channels, rounded as timm
        does (``make_divisible(in_chs * e)``). ``'auto'`` is (3, 4, 6); values above the full mid are dropped.
        The squeeze-excite reduced width stays fixed.
    ``blocks.{i}.{j}.kernel``: depthwise kernel of an ``InvertedResidual`` / ``DepthwiseSeparableConv`` by centre crop
        (``'auto'``: {3, 5, 7} up to the full kernel). ``kernel_transform=True`` adds OFA's transform matrices.

Kept fixed: the stem, the head, stage output widths, ``ConvBnAct`` and ``EdgeResidual`` blocks (EfficientNetV2),
``DepthwiseSeparableConv`` channels, and kernels that are not square, odd and undilated (e.g. ``output_stride=16``).
``tf_`` variants' dynamic 'SAME' convs (``Conv2dSame``) are supported: padding is recomputed for the active kernel.
Refused with a ConversionError: MixNet (``MixedConv2d``), CondConv, MobileNetV4 blocks, anti-aliased blocks,
non-BatchNorm norms. Export needs no attribute fixes (no ``finalize_export``): timm's blocks read every size they
use from their tensors, and stage widths (``feature_info``) do not change.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from torch import nn

from lightning_elastic.adapters.base import Adapter, ConversionPlan
from lightning_elastic.adapters.kit import OpSpecs, couple_in, couple_out, op_class
from lightning_elastic.adapters.registry import register_adapter
from lightning_elastic.adapters.timm_resnet import _in_chans, build_timm
from lightning_elastic.core.config import SearchSpaceConfig, resolve_choices
from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.core.errors import ConversionError
from lightning_elastic.ops.conv import ElasticConv2d
from lightning_elastic.ops.depth import ElasticSequential

AUTO_EXPAND = (3, 4, 6)
AUTO_KERNEL = (3, 5, 7)
AUTO_DEPTH_RATIOS = (0.5, 0.75, 1.0)

_SUPPORTED_BLOCKS = ("InvertedResidual, DepthwiseSeparableConv (elastic), ConvBnAct, EdgeResidual (kept fixed)")


def auto_depth(n: int) -> list[int]:
    """Keep at least half a stage: {ceil(n/2), ceil(3n/4), n}.

    That is OFA's {2, 3, 4} for its four-block stages, its clipping {2, 3} for three blocks, {1, 2} for two (where
    clipping alone would leave nothing elastic) and {3, 5, 6} rather than {2, 3, 4, 6} for EfficientNetV2's longer
    stages.
    """
    return sorted({math.ceil(n * r) for r in AUTO_DEPTH_RATIOS})


def expand_choices(spec: Any, in_chs: int, full: int) -> list[int]:
    """Absolute mid-channel choices for expansion ratios ``spec`` of ``in_chs`` (timm's rounding), <= ``full``."""
    from timm.layers import make_divisible

    spec = AUTO_EXPAND if spec == "auto" else spec
    if spec is None:
        return [full]
    values = {int(make_divisible(in_chs * float(e))) for e in spec}
    return sorted(v for v in values | {full} if 0 < v <= full)


class ElasticConv2dSame(ElasticConv2d):
    """``ElasticConv2d`` for timm's ``Conv2dSame``: TF 'SAME' padding is computed from the active kernel per input."""

    def _active_padding(self) -> tuple[int, int]:
        return self.padding  # always (0, 0): the input is padded dynamically

    def forward(self, x):
        plan = self._plan()
        if plan.full:
            return self._base_cls.forward(self, x)
        from timm.layers.conv2d_same import conv2d_same

        weight, bias = self._sliced(plan, ("weight", "bias"))
        return conv2d_same(x, weight, bias, self.stride, self.padding, self.dilation, plan.extra[1])


class TimmEfficientNetAdapter(Adapter):
    name = "timm-efficientnet"
    supported = ("timm EfficientNet / MobileNetV3 / MNASNet (InvertedResidual, DepthwiseSeparableConv, SE): "
                 "stage depth, expand ratio, depthwise kernel")

    def matches(self, model: nn.Module) -> bool:
        try:
            from timm.models.efficientnet import EfficientNet
            from timm.models.mobilenetv3 import MobileNetV3
        except ImportError:  # pragma: no cover
            return False
        return isinstance(model, EfficientNet | MobileNetV3)

    def plan(self, model: nn.Module, config: SearchSpaceConfig) -> ConversionPlan:
        from timm.models._efficientnet_blocks import ConvBnAct, DepthwiseSeparableConv, EdgeResidual, InvertedResidual

        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, nn.Sequential) or not all(isinstance(s, nn.Sequential) for s in blocks):
            raise ConversionError(
                f"`model.blocks` of this {type(model).__name__} is {type(blocks).__name__}; the timm-efficientnet "
                "adapter expects an nn.Sequential of nn.Sequential stages (model.blocks[stage][block]). HINT: keep "
                "timm's stage layout, or register an adapter for this layout."
            )
        plan = ConversionPlan(meta=self.describe(model))
        specs = OpSpecs(model)
        for i, stage in enumerate(blocks):
            if len(stage) > 1:
                self._plan_depth(plan, f"blocks.{i}", stage, config)
            for j, block in enumerate(stage):
                prefix = f"blocks.{i}.{j}"
                # exact types: CondConvResidual subclasses InvertedResidual but routes weights per sample
                if type(block) is InvertedResidual:
                    self._plan_inverted_residual(plan, specs, prefix, block, config)
                elif type(block) is DepthwiseSeparableConv:
                    self._plan_kernel(plan, specs, prefix, block, config)
                elif type(block) not in (ConvBnAct, EdgeResidual):
                    raise ConversionError(
                        f"{prefix} is a {type(block).__name__}; the timm-efficientnet adapter supports "
                        f"{_SUPPORTED_BLOCKS}. HINT: convert it with adapter='generic' (graph-based), or register an "
                        "adapter for this block type (lightning_elastic.adapters.registry.register_adapter)."
                    )
        self._emit(plan, specs)
        return plan

    # -- per dimension -------------------------------------------------------------------------------------
    def _plan_depth(self, plan: ConversionPlan, name: str, stage: nn.Sequential, config: SearchSpaceConfig) -> None:
        n = len(stage)
        choices = auto_depth(n) if config.depth == "auto" else resolve_choices(config.depth, n, None, "depth")
        # blocks that change shape cannot be skipped: the minimum depth keeps the last of them
        floor = 1 + max((j for j, b in enumerate(stage) if not _preserves_shape(b)), default=0)
        choices = sorted({c for c in choices if c >= floor} | {n})
        depth = ElasticDim(f"{name}.depth", choices, n, kind="depth")
        plan.dims.append(depth)
        plan.replace(name, lambda m, d=depth: ElasticSequential.from_module(m, d))

    def _plan_kernel(self, plan: ConversionPlan, specs: OpSpecs, prefix: str, block: nn.Module,
                     config: SearchSpaceConfig) -> None:
        conv = block.conv_dw
        _check_conv(f"{prefix}.conv_dw", conv)
        k = conv.kernel_size
        if k[0] != k[1] or k[0] % 2 == 0 or tuple(conv.dilation) != (1, 1):
            return  # centre crop keeps 'same' alignment only for square, odd, undilated kernels
        if config.kernel not in ("auto", None) and any(int(c) != c or c % 2 == 0 for c in config.kernel):
            raise ConversionError(
                f"`kernel` got {list(config.kernel)}; allowed: odd integer kernel sizes such as (3, 5, 7). "
                "HINT: drop the even sizes."
            )
        choices = resolve_choices(config.kernel, k[0], AUTO_KERNEL, "kernel")
        dim = ElasticDim(f"{prefix}.kernel", choices, k[0], kind="kernel")
        plan.dims.append(dim)
        specs.set(f"{prefix}.conv_dw", kernel_dim=dim, kernel_transform=config.kernel_transform)

    def _plan_inverted_residual(self, plan: ConversionPlan, specs: OpSpecs, prefix: str, block: nn.Module,
                                config: SearchSpaceConfig) -> None:
        from timm.models._efficientnet_blocks import SqueezeExcite

        if not isinstance(block.aa, nn.Identity):
            raise ConversionError(
                f"{prefix}.aa is a {type(block.aa).__name__} (anti-aliasing); the timm-efficientnet adapter supports "
                "aa_layer=None only, since the blur filter is per mid channel. HINT: build the model without "
                "`aa_layer`, or convert it with adapter='generic'."
            )
        se = block.se
        if not isinstance(se, nn.Identity) and type(se) is not SqueezeExcite:
            raise ConversionError(
                f"{prefix}.se is a {type(se).__name__}; the timm-efficientnet adapter supports timm's "
                "efficientnet SqueezeExcite (conv_reduce / conv_expand) or no SE. HINT: convert it with "
                "adapter='generic', or register an adapter for it."
            )
        for sub in ("conv_pw", "conv_pwl"):
            _check_conv(f"{prefix}.{sub}", getattr(block, sub))
        for sub in ("bn1", "bn2"):
            if not isinstance(getattr(block, sub), nn.BatchNorm2d):
                raise ConversionError(
                    f"{prefix}.{sub} is a {type(getattr(block, sub)).__name__}; the timm-efficientnet adapter "
                    "supports BatchNorm2d / BatchNormAct2d. HINT: build the model with the default norm_layer, or "
                    "convert it with adapter='generic'."
                )
        dw = block.conv_dw
        if getattr(dw, "groups", None) != getattr(dw, "in_channels", None):
            raise ConversionError(
                f"{prefix}.conv_dw is a grouped convolution (groups={dw.groups}, in_channels={dw.in_channels}); the "
                "timm-efficientnet adapter supports depthwise convolutions there (groups == channels). HINT: convert "
                "it with adapter='generic', which keeps grouped convolutions' channels fixed."
            )
        full = block.conv_pw.out_channels
        dim = ElasticDim(f"{prefix}.expand", expand_choices(config.expand, block.conv_pw.in_channels, full), full,
                         kind="width")  # kind 'width' so importance ordering applies
        plan.dims.append(dim)
        group = dim.couple()
        specs.set(f"{prefix}.conv_pw", out_axis=dim)
        specs.set(f"{prefix}.bn1", axis=dim)
        specs.set(f"{prefix}.conv_dw", out_axis=dim, depthwise=True)
        specs.set(f"{prefix}.bn2", axis=dim)
        specs.set(f"{prefix}.conv_pwl", in_axis=dim)
        for mod in (block.conv_pw, block.bn1, block.conv_dw, block.bn2):
            couple_out(group, mod)
        if isinstance(se, SqueezeExcite):
            specs.set(f"{prefix}.se.conv_reduce", in_axis=dim)
            specs.set(f"{prefix}.se.conv_expand", out_axis=dim)
            couple_in(group, se.conv_reduce)
            couple_out(group, se.conv_expand)
        couple_in(group, block.conv_pwl, scores=True)  # OFA ranks mid channels by their use in conv_pwl
        self._plan_kernel(plan, specs, prefix, block, config)

    def _emit(self, plan: ConversionPlan, specs: OpSpecs) -> None:
        from timm.layers.conv2d_same import Conv2dSame

        for name, kwargs in specs.specs.items():
            module = specs.model.get_submodule(name)
            cls = ElasticConv2dSame if type(module) is Conv2dSame else op_class(module)
            plan.replace(name, partial(cls.from_module, **kwargs))

    # -- rebuild -------------------------------------------------------------------------------------------
    def describe(self, model: nn.Module) -> dict[str, Any]:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        return {"library": "timm", "architecture": cfg.get("architecture"), "num_classes": model.num_classes,
                "in_chans": _in_chans(model)}

    def build_original(self, meta: dict[str, Any]) -> nn.Module:
        return build_timm(meta)


def _check_conv(name: str, conv: nn.Module) -> None:
    from timm.layers.conv2d_same import Conv2dSame

    if type(conv) not in (nn.Conv2d, Conv2dSame):
        raise ConversionError(
            f"{name} is a {type(conv).__name__}; the timm-efficientnet adapter supports nn.Conv2d and timm's "
            "Conv2dSame there (MixNet's MixedConv2d and CondConv are not elastic). HINT: use an EfficientNet / "
            "MobileNetV3 variant without mixed or conditional convolutions, or convert it with adapter='generic'."
        )


def _preserves_shape(block: nn.Module) -> bool:
    """Whether skipping ``block`` keeps the tensor shape: stride 1 everywhere and input channels == output channels."""
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    aa = getattr(block, "aa", None)
    if not convs or (aa is not None and not isinstance(aa, nn.Identity)):
        return False
    return all(tuple(c.stride) == (1, 1) for c in convs) and convs[0].in_channels == convs[-1].out_channels


register_adapter(TimmEfficientNetAdapter())
