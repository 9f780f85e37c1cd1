"""``ElasticRMSNorm``: RMSNorm of any implementation (``nn.RMSNorm``, HF ``LlamaRMSNorm`` …) over a prefix.

At full size the original class's own ``forward`` runs, so outputs are bit-identical to the original. Smaller sizes
compute ``weight[:d] * (x * rsqrt(mean(x²) + eps))`` in float32 like the HF implementations; ``offset=1.0`` gives the
Gemma form ``(1 + weight)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.core.errors import ConversionError
from lightning_elastic.ops.base import Axis, ElasticOp, as_axis


class ElasticRMSNorm(nn.Module, ElasticOp):
    """Wraps any RMSNorm that has a 1-D ``weight`` and an ``eps`` / ``variance_epsilon`` attribute."""

    @classmethod
    def from_module(cls, module: nn.Module, axis: ElasticDim | Axis, offset: float = 0.0) -> ElasticRMSNorm:
        weight = getattr(module, "weight", None)
        eps = getattr(module, "eps", getattr(module, "variance_epsilon", None))
        native = isinstance(module, nn.RMSNorm)  # eps=None is valid there: finfo(dtype).eps at run time
        if weight is None or weight.dim() != 1 or (eps is None and not native):
            raise ConversionError(
                f"{type(module).__name__} is not an RMSNorm this op understands: it needs a 1-D `weight` and an "
                "`eps` or `variance_epsilon` attribute. HINT: register a custom op for this norm."
            )
        new = cls._adopt(module)
        new.axis = as_axis(axis)
        new._eps = float(eps) if eps is not None else None
        new._offset = offset
        new._slices = {"weight": [(0, new.axis)]}
        return new

    def forward(self, x):
        if self.is_full():
            return self._base_cls.forward(self, x)
        (weight,) = self.sliced("weight")
        if issubclass(self._base_cls, nn.RMSNorm):
            return F.rms_norm(x, (weight.shape[0],), weight, self.eps)
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self._eps)
        if self._offset:
            return (h * (self._offset + weight.float())).to(dtype)
        return weight * h.to(dtype)

    def _export_attributes(self, new: nn.Module) -> None:
        if isinstance(new, nn.RMSNorm):
            new.normalized_shape = (self.axis.active_size,)
        if hasattr(new, "hidden_size"):
            new.hidden_size = self.axis.active_size
