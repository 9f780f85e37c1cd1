"""``ElasticConv1D``: the transposed Linear of GPT-style models (HF ``Conv1D``: ``weight`` is ``[in, out]``).

Recognised by structure (a 2-D ``weight`` of shape ``(nx, nf)`` and ``nf`` / ``nx`` attributes), so ops never import
transformers. Slicing is the same prefix slicing as :class:`~lightning_elastic.ops.linear.ElasticLinear`, on the
transposed axes: ``in_axis`` slices ``weight`` axis 0, ``out_axis`` slices ``weight`` axis 1 and ``bias``.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.core.errors import ConversionError
from lightning_elastic.ops.base import Axis, ElasticOp, as_axis, weight_bias_slices


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is a GPT-style ``Conv1D`` (a Linear whose weight is stored ``[in, out]``)."""
    weight = getattr(module, "weight", None)
    cls = module.__dict__.get("_base_cls", type(module))  # an ElasticConv1D still describes a Conv1D
    return (cls.__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2
            and getattr(module, "nf", None) == weight.shape[1] and getattr(module, "nx", None) == weight.shape[0])


class ElasticConv1D(nn.Module, ElasticOp):
    """GPT-style ``Conv1D`` with elastic input and/or output features.

    Example:
        >>> from transformers.pytorch_utils import Conv1D  # doctest: +SKIP
        >>> op = ElasticConv1D.from_module(Conv1D(16, 8), out_axis=ElasticDim("h", [8, 16], 16))  # doctest: +SKIP
    """

    @classmethod
    def from_module(cls, module: nn.Module, in_axis: ElasticDim | Axis | None = None,
                    out_axis: ElasticDim | Axis | None = None) -> ElasticConv1D:
        if not is_conv1d(module):
            raise ConversionError(
                f"`module` is a {type(module).__name__}, not a GPT-style Conv1D (weight [nx, nf] with `nf`/`nx` "
                "attributes); allowed: transformers.pytorch_utils.Conv1D. HINT: use ElasticLinear for nn.Linear."
            )
        new = cls._adopt(module)
        new.in_axis, new.out_axis = as_axis(in_axis), as_axis(out_axis)
        new._slices = weight_bias_slices(new.out_axis, new.in_axis, weight_out=1, weight_in=0)
        return new

    def forward(self, x):
        if self.is_full():
            return self._base_cls.forward(self, x)
        weight, bias = self.sliced("weight", "bias")
        out = x.reshape(-1, x.size(-1)) @ weight
        if bias is not None:
            out = out + bias
        return out.view(*x.shape[:-1], weight.shape[1])

    def _export_attributes(self, new: nn.Module) -> None:
        new.nx, new.nf = new.weight.shape
