"""``ElasticEmbedding``: an embedding table with an elastic embedding dimension."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.ops.base import Axis, ElasticOp, as_axis


class ElasticEmbedding(nn.Embedding, ElasticOp):
    """Embedding whose vectors are prefix-sliced to the active dimension."""

    @classmethod
    def from_module(cls, module: nn.Embedding, axis: ElasticDim | Axis) -> ElasticEmbedding:
        new = cls._adopt(module)
        new.axis = as_axis(axis)
        new._slices = {"weight": [(1, new.axis)]}
        return new

    def forward(self, x):
        if self.is_full():
            return self._base_cls.forward(self, x)
        (weight,) = self.sliced("weight")
        return F.embedding(x, weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq,
                           self.sparse)

    def _export_attributes(self, new: nn.Embedding) -> None:
        new.embedding_dim = new.weight.shape[1]
