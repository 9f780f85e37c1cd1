"""The public adapter kit: collect per-module axes, then emit one replacement per module; helpers adapter authors share."""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import nn

from lightning_elastic.adapters.base import ConversionPlan
from lightning_elastic.core.dims import ChannelGroup
from lightning_elastic.core.errors import ConversionError
from lightning_elastic.ops.base import Axis
from lightning_elastic.ops.batchnorm import ElasticBatchNorm2d
from lightning_elastic.ops.conv import ElasticConv2d
from lightning_elastic.ops.embedding import ElasticEmbedding
from lightning_elastic.ops.layernorm import ElasticLayerNorm
from lightning_elastic.ops.linear import ElasticLinear
from lightning_elastic.ops.rmsnorm import ElasticRMSNorm


class OpSpecs:
    """Accumulates, per module name, the keyword arguments of its elastic op's ``from_module``.

    Example:
        >>> specs = OpSpecs(model)  # doctest: +SKIP
        >>> specs.set("layer1.0.conv1", out_axis=dim); specs.set("layer1.0.conv2", in_axis=dim)  # doctest: +SKIP
        >>> specs.emit(plan)  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.specs: dict[str, dict[str, Any]] = {}

    def set(self, name: str, **kwargs: Any) -> None:
        current = self.specs.setdefault(name, {})
        for key, value in kwargs.items():
            if key in current and current[key] is not value and current[key] != value:
                raise ConversionError(
                    f"module {name!r} got two different `{key}` dims ({current[key]!r} and {value!r}); one axis "
                    "follows one dimension. HINT: couple both into one ElasticDim, or exclude one of them."
                )
            current[key] = value

    def emit(self, plan: ConversionPlan) -> None:
        for name, kwargs in self.specs.items():
            module = self.model.get_submodule(name)
            plan.replace(name, partial(op_class(module).from_module, **kwargs))


def op_class(module: nn.Module):
    """The elastic op class for a module (nn.Linear → ElasticLinear, …); RMSNorm-likes by duck typing."""
    for base, op in ((nn.Linear, ElasticLinear), (nn.Conv2d, ElasticConv2d), (nn.BatchNorm2d, ElasticBatchNorm2d),
                     (nn.LayerNorm, ElasticLayerNorm), (nn.Embedding, ElasticEmbedding)):
        if isinstance(module, base):
            return op
    if "RMSNorm" in type(module).__name__:
        return ElasticRMSNorm
    raise ConversionError(
        f"no elastic op for module type {type(module).__name__}; supported: Linear, Conv2d, BatchNorm2d, LayerNorm, "
        "Embedding, *RMSNorm. HINT: build that module's replacement yourself in the adapter's plan()."
    )


def couple_out(group: ChannelGroup, module: nn.Module, axis: Axis | None = None) -> None:
    """Add the output-channel tensors of a conv/linear/norm to a channel group (weights, bias, running stats)."""
    unit, segments = (axis.unit, axis.segments) if axis is not None else (1, 1)
    group.add(module, "weight", 0, unit=unit, segments=segments)
    group.add(module, "bias", 0, unit=unit, segments=segments, scores=False)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        group.add(module, "running_mean", 0, scores=False)
        group.add(module, "running_var", 0, scores=False)


def couple_in(group: ChannelGroup, module: nn.Module, axis: Axis | None = None, *, scores: bool = False) -> None:
    """Add the input-channel axis of a conv/linear weight to a channel group."""
    unit, segments = (axis.unit, axis.segments) if axis is not None else (1, 1)
    group.add(module, "weight", 1, unit=unit, segments=segments, scores=scores)
