"""``ElasticConv2d``: output/input channels, depthwise groups and kernel size (centre crop).

Kernel size is elastic by centre-cropping the full kernel; padding shrinks with it so the output size is unchanged.
With ``kernel_transform=True`` (Once-for-All) each smaller kernel is the centre of the next larger one passed through
a learned ``k²×k²`` matrix initialised to identity; those matrices are extra Parameters named
``kernel_transform_{k}x{k}``, so the state_dict gains keys (opt-in for that reason).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.core.errors import ConversionError
from lightning_elastic.ops.base import Axis, ElasticOp, as_axis, weight_bias_slices


class ElasticConv2d(nn.Conv2d, ElasticOp):
    """Conv2d with elastic channels and kernel size.

    Args (of :meth:`from_module`):
        module: the ``nn.Conv2d`` to take over.
        in_axis / out_axis: dims slicing input / output channels. For a depthwise conv pass the same dim to
            ``out_axis`` and set ``depthwise=True``; ``groups`` then follows the active channels.
        kernel_dim: dim whose values are odd kernel sizes ``<= kernel_size``.
        kernel_transform: learn OFA kernel transformation matrices.
    """

    @classmethod
    def from_module(cls, module: nn.Conv2d, in_axis: ElasticDim | Axis | None = None,
                    out_axis: ElasticDim | Axis | None = None, depthwise: bool = False,
                    kernel_dim: ElasticDim | None = None, kernel_transform: bool = False) -> ElasticConv2d:
        if kernel_dim is not None:
            k = module.kernel_size
            if k[0] != k[1] or not isinstance(module.padding, tuple) or isinstance(module.padding, str):
                raise ConversionError(
                    f"elastic kernel needs a square kernel with static padding, got kernel_size={k}, "
                    f"padding={module.padding!r}. HINT: exclude this conv's kernel dimension."
                )
            bad = [c for c in kernel_dim.choices if c % 2 == 0 or c > k[0]]
            if bad:
                raise ConversionError(
                    f"`kernel` choices must be odd sizes <= {k[0]}, got {list(kernel_dim.choices)}. "
                    "HINT: use e.g. (3, 5, 7)."
                )
        if depthwise and module.groups != module.in_channels:
            raise ConversionError(
                f"`depthwise=True` needs groups == in_channels, got groups={module.groups}, "
                f"in_channels={module.in_channels}. HINT: pass depthwise=False for grouped or dense convs."
            )
        new = cls._adopt(module)
        new.in_axis, new.out_axis = as_axis(in_axis), as_axis(out_axis)
        new.depthwise = depthwise
        new.kernel_dim = kernel_dim
        # a depthwise conv's weight has one input channel per group: its channels follow the output axis only
        new._slices = weight_bias_slices(new.out_axis, None if depthwise else new.in_axis)
        new._kernel_transform = bool(kernel_transform and kernel_dim is not None)
        if new._kernel_transform:
            for ks in kernel_dim.choices[:-1]:
                eye = torch.eye(ks * ks, device=module.weight.device, dtype=module.weight.dtype)
                new.register_parameter(f"kernel_transform_{ks}x{ks}", nn.Parameter(eye))
        return new

    def dims(self):  # kernel size counts too (so is_full and the inference cache see it)
        dims = ElasticOp.dims(self)
        return dims + ([self.kernel_dim] if self.kernel_dim is not None else [])

    def _crop_kernel(self, weight: torch.Tensor) -> torch.Tensor:
        if self.kernel_dim is None or self.kernel_dim.active == self.kernel_dim.full:
            return weight
        target = self.kernel_dim.active
        if not self._kernel_transform:
            start = (weight.shape[-1] - target) // 2
            return weight[..., start:start + target, start:start + target]
        # OFA: progressively crop the centre and transform, largest to smallest
        for ks in reversed(self.kernel_dim.choices[:-1]):
            if ks < target:
                break
            start = (weight.shape[-1] - ks) // 2
            centre = weight[..., start:start + ks, start:start + ks]
            mat = getattr(self, f"kernel_transform_{ks}x{ks}")
            weight = (centre.reshape(-1, ks * ks) @ mat).reshape(centre.shape)
        return weight

    def _slice(self, name: str):
        t = ElasticOp._slice(self, name)
        return self._crop_kernel(t) if name == "weight" else t

    def _active_padding(self) -> tuple[int, int]:
        if self.kernel_dim is None:
            return self.padding
        shrink = (self.kernel_dim.full - self.kernel_dim.active) // 2
        return tuple(p - shrink for p in self.padding)

    def _active_groups(self) -> int:
        return self.out_axis.active_size if self.depthwise and self.out_axis is not None else self.groups

    def _plan_extra(self) -> tuple[tuple[int, int], int]:
        return self._active_padding(), self._active_groups()

    def _cache_sources(self, names: tuple[str, ...]) -> tuple[torch.Tensor | None, ...]:
        sources = ElasticOp._cache_sources(self, names)
        if self._kernel_transform and "weight" in names:  # the cropped kernel is computed through them
            sources += tuple(getattr(self, f"kernel_transform_{ks}x{ks}") for ks in self.kernel_dim.choices[:-1])
        return sources

    def forward(self, x):
        plan = self._plan()
        if plan.full:
            return self._base_cls.forward(self, x)
        weight, bias = self._sliced(plan, ("weight", "bias"))
        padding, groups = plan.extra
        if self.padding_mode != "zeros":
            # the crop shrinks the padding too, else the output would grow
            pad = [p for p in reversed(padding) for _ in range(2)]
            x = F.pad(x, pad, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, groups)
        return F.conv2d(x, weight, bias, self.stride, padding, self.dilation, groups)

    def export_module(self) -> nn.Conv2d:
        new = ElasticOp.export_module(self)
        for ks in (self.kernel_dim.choices[:-1] if self._kernel_transform else ()):
            new._parameters.pop(f"kernel_transform_{ks}x{ks}", None)
        return new

    def _export_attributes(self, new: nn.Conv2d) -> None:
        w = new.weight
        new.groups = self._active_groups()
        new.out_channels = w.shape[0]
        new.in_channels = w.shape[1] * new.groups
        new.kernel_size = tuple(w.shape[-2:])
        new.padding = self._active_padding()
        new._reversed_padding_repeated_twice = [p for p in reversed(new.padding) for _ in range(2)]
