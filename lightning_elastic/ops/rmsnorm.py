"""``ElasticRMSNorm``: RMSNorm of any implementation (``nn.RMSNorm``, HF ``LlamaRMSNorm`` …) over a prefix.

At full size the original class's own ``forward`` runs, so outputs are bit-identical to the original. Smaller sizes
compute ``weight[:d] * (x * rsqrt(mean(x²) + eps))`` in float32 like the HF implementations. A norm that computes
something else (Gemma's ``(1 + weight)`` form) is refused at conversion: its full-size output is checked against
that formula on a probe input.
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
    def from_module(cls, module: nn.Module, axis: ElasticDim | Axis) -> ElasticRMSNorm:
        weight = getattr(module, "weight", None)
        eps = getattr(module, "eps", getattr(module, "variance_epsilon", None))
        native = isinstance(module, nn.RMSNorm)  # eps=None is valid there: finfo(dtype).eps at run time
        if weight is None or weight.dim() != 1 or (eps is None and not native):
            raise ConversionError(
                f"{type(module).__name__} is not an RMSNorm this op understands: it needs a 1-D `weight` and an "
                "`eps` or `variance_epsilon` attribute. HINT: register a custom op for this norm."
            )
        if not native:
            _check_formula(module, weight, float(eps))
        new = cls._adopt(module)
        new.axis = as_axis(axis)
        new._eps = float(eps) if eps is not None else None
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
        return weight * h.to(dtype)

    def _export_attributes(self, new: nn.Module) -> None:
        if isinstance(new, nn.RMSNorm):
            new.normalized_shape = (self.axis.active_size,)
        if hasattr(new, "hidden_size"):
            new.hidden_size = self.axis.active_size


def _check_formula(module: nn.Module, weight: torch.Tensor, eps: float) -> None:
    """Raise unless ``module`` computes ``weight * (x * rsqrt(mean(x²) + eps))`` (the form the sliced path runs)."""
    if weight.device.type == "meta":
        return
    probe = torch.linspace(-2.0, 2.0, 2 * weight.shape[0], device=weight.device).reshape(2, -1).to(weight.dtype)
    with torch.no_grad():
        try:
            got = module(probe)
        except Exception:  # noqa: BLE001 - a norm that cannot run on a plain 2-D input: nothing to compare
            return
        h = probe.float() * torch.rsqrt(probe.float().pow(2).mean(-1, keepdim=True) + eps)
        expected = weight * h.to(weight.dtype)
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape or not torch.allclose(
            got.float(), expected.float(), rtol=1e-3, atol=1e-3):
        raise ConversionError(
            f"{type(module).__name__} does not compute weight * x / rms(x) (e.g. Gemma's (1 + weight) form), which "
            "the elastic RMSNorm runs at smaller sizes. HINT: exclude the dims that slice this norm, or register a "
            "custom op for it."
        )
