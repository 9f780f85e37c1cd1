"""``ElasticLayerNorm``: LayerNorm over a prefix of the (last) normalised dimension."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.ops.base import Axis, ElasticOp, as_axis


class ElasticLayerNorm(nn.LayerNorm, ElasticOp):
    """LayerNorm with an elastic normalised size (the statistics are over the active features only)."""

    @classmethod
    def from_module(cls, module: nn.LayerNorm, axis: ElasticDim | Axis) -> ElasticLayerNorm:
        new = cls._adopt(module)
        new.axis = as_axis(axis)
        new._slices = {"weight": [(0, new.axis)], "bias": [(0, new.axis)]}
        return new

    def forward(self, x):
        if self.is_full():
            return self._base_cls.forward(self, x)
        weight, bias = self.sliced("weight", "bias")
        return F.layer_norm(x, (self.axis.active_size,), weight, bias, self.eps)

    def _export_attributes(self, new: nn.LayerNorm) -> None:
        new.normalized_shape = (self.axis.active_size,)
