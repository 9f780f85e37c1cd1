"""A fused ``qkv_proj`` with grouped-query attention (Phi-3 with ``num_key_value_heads < num_attention_heads``).

Its output rows are ``[q: num_kv groups x g heads x head_dim | k: num_kv x head_dim | v: num_kv x head_dim]``: the q
part is sliced like a separate GQA ``q_proj`` (the same number of query heads dropped from every KV group, through
the one slicing helper), the k and v rows are kept whole. The segments differ in size, so no importance permutation
can move q heads together with the ``o_proj`` columns: these heads keep their original order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.core.slicing import slice_axis
from lightning_elastic.ops.base import Axis, as_axis
from lightning_elastic.ops.linear import ElasticLinear


@dataclass(frozen=True)
class QRows:
    """An ``out_axis`` that slices only the first ``rows`` outputs (the q part) of a fused qkv Linear."""

    axis: Axis
    rows: int


class ElasticFusedQKV(ElasticLinear):
    """``qkv_proj`` of a GQA model: query heads sliced per KV group, k and v rows kept."""

    @classmethod
    def from_module(cls, module: nn.Linear, in_axis: ElasticDim | Axis | None = None,
                    out_axis: QRows | None = None) -> ElasticFusedQKV:
        new = super().from_module(module, in_axis=in_axis)
        new.q_rows = out_axis
        return new

    def _axes(self) -> list[Axis]:
        return [*super()._axes(), as_axis(self.q_rows.axis)]

    def _slice(self, name: str) -> torch.Tensor | None:
        tensor = super()._slice(name)  # the input features (an elastic hidden size)
        ax, rows = self.q_rows.axis, self.q_rows.rows
        if tensor is None or ax.dim.active == ax.dim.full:
            return tensor
        q = slice_axis(tensor.narrow(0, 0, rows), 0, ax.dim.active, ax.dim.full, ax.unit, ax.segments)
        return torch.cat([q, tensor.narrow(0, rows, tensor.shape[0] - rows)], dim=0)
