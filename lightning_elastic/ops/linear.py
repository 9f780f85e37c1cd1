"""``ElasticLinear``: a ``nn.Linear`` whose input and output features are prefix-sliced."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.ops.base import Axis, ElasticOp, as_axis, weight_bias_slices


class ElasticLinear(nn.Linear, ElasticOp):
    """Linear layer with elastic ``in_features`` and/or ``out_features``.

    Args (of :meth:`from_module`):
        module: the ``nn.Linear`` to take over (its Parameters are shared, not copied).
        in_axis: dim (or :class:`Axis` with unit/segments) slicing the input features.
        out_axis: dim (or :class:`Axis`) slicing the output features; for a fused qkv use
            ``Axis(heads, unit=head_dim, segments=3)``.

    Example:
        >>> lin = ElasticLinear.from_module(nn.Linear(8, 16), out_axis=ElasticDim("h", [8, 16], 16))
    """

    @classmethod
    def from_module(cls, module: nn.Linear, in_axis: ElasticDim | Axis | None = None,
                    out_axis: ElasticDim | Axis | None = None) -> ElasticLinear:
        new = cls._adopt(module)
        new.in_axis, new.out_axis = as_axis(in_axis), as_axis(out_axis)
        new._slices = weight_bias_slices(new.out_axis, new.in_axis)
        return new

    def forward(self, x):
        weight, bias = self.sliced("weight", "bias")
        return F.linear(x, weight, bias)

    def _export_attributes(self, new: nn.Linear) -> None:
        new.out_features, new.in_features = new.weight.shape
