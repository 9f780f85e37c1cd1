"""``ElasticBatchNorm2d``: BatchNorm over a prefix of channels, with sliced running statistics."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.ops.base import Axis, ElasticOp, as_axis


class ElasticBatchNorm2d(nn.BatchNorm2d, ElasticOp):
    """BatchNorm2d whose channels follow a dim. Running stats of the active prefix are updated in place."""

    @classmethod
    def from_module(cls, module: nn.BatchNorm2d, axis: ElasticDim | Axis) -> ElasticBatchNorm2d:
        new = cls._adopt(module)
        new.axis = as_axis(axis)
        spec = [(0, new.axis)]
        new._slices = {"weight": spec, "bias": spec, "running_mean": spec, "running_var": spec}
        return new

    def forward(self, x):
        plan = self._plan()
        if plan.full:
            return self._base_cls.forward(self, x)
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or self.running_mean is None
        if self.training:
            weight, bias = self._sliced(plan, ("weight", "bias"))
            # running stats are views here, never cached copies: F.batch_norm updates them in place
            rm, rv = self._slice("running_mean"), self._slice("running_var")
        else:  # read-only: cached with the affine params under no_grad
            weight, bias, rm, rv = self._sliced(plan, ("weight", "bias", "running_mean", "running_var"))
        x = F.batch_norm(
            x,
            rm if not self.training or self.track_running_stats else None,
            rv if not self.training or self.track_running_stats else None,
            weight, bias, use_batch_stats, momentum, self.eps,
        )
        # timm's BatchNormAct2d fuses dropout + activation after the norm
        modules = self._modules
        if "drop" in modules:
            x = modules["drop"](x)
        if "act" in modules:
            x = modules["act"](x)
        return x

    def _export_attributes(self, new: nn.BatchNorm2d) -> None:
        new.num_features = new.weight.shape[0] if new.weight is not None else new.running_mean.shape[0]
