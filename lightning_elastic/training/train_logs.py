"""Per-subnet training logs: what the user's ``training_step`` logs, once per subnet group.

The user's ``training_step`` runs once per subnet of a step, so each ``self.log("train_loss", ...)`` call logs the
same key several times: Lightning keeps the *last* call's value for the step (the min subnet's under the sandwich
rule) and averages all of them for the epoch. A healthy run then looks dead on the progress bar: the min subnet's
loss barely moves. :class:`SubnetTrainLogs` stands in for ``pl_module.log`` during the step and

* still logs the plain key as before (same value, same epoch mean), but moves its progress-bar slot to the max
  subnet's key when the sampler trains the max subnet;
* logs ``<key>/<group>`` for each subnet group once per step: ``max``, ``min``, ``random`` (the mean over the
  step's random subnets ``rand0``, ``rand1``, …), ``nested`` (``nested0``, …), with the user's own arguments
  (``on_step``, ``on_epoch``, ``sync_dist``, …).

torchmetrics objects are passed through under the plain key only: one metric object accumulates across subnets and
cannot be split after the fact.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torchmetrics import Metric

_LOG_SIGNATURE = inspect.signature(L.LightningModule.log)


def subnet_group(tag: str) -> str:
    """The log group of a sampler tag: ``'rand1'`` -> ``'random'``, ``'nested0'`` -> ``'nested'``, ``'max'``."""
    group = re.sub(r"\d+$", "", tag) or tag
    return "random" if group == "rand" else group


class SubnetTrainLogs:
    """Stands in for ``pl_module.log`` during one training step (see the module docstring).

    Args:
        original: the module's bound ``log``.
        bar_on_max: move progress-bar keys to ``<key>/max`` (the sampler trains the max subnet).
    """

    def __init__(self, original: Callable[..., None], bar_on_max: bool) -> None:
        self.original = original
        self.bar_on_max = bar_on_max
        self.tag = "max"
        self._values: dict[str, dict[str, list[torch.Tensor]]] = {}
        self._kwargs: dict[str, dict[str, Any]] = {}

    def __call__(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        bound = _LOG_SIGNATURE.bind(None, name, value, *args, **kwargs)
        options = {k: v for k, v in bound.arguments.items() if k not in ("self", "name", "value")}
        if isinstance(value, Metric) or not isinstance(value, torch.Tensor | int | float):
            self.original(name, value, **options)  # Lightning validates what it accepts
            return
        plain = dict(options)
        if self.bar_on_max and plain.get("prog_bar"):
            plain["prog_bar"] = False  # the bar shows <key>/max instead
        self.original(name, value, **plain)
        value = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
        self._values.setdefault(name, {}).setdefault(subnet_group(self.tag), []).append(value)
        self._kwargs.setdefault(name, options)

    def record(self, name: str, value: torch.Tensor) -> None:
        """A value of the callback's own (the distillation term): logged per group only, on each step."""
        self._values.setdefault(name, {}).setdefault(subnet_group(self.tag), []).append(value.detach().float())
        self._kwargs.setdefault(name, {"on_step": True, "on_epoch": False})

    def flush(self) -> None:
        """Log ``<key>/<group>`` (the mean over the group's subnets of this step) for every key logged."""
        for name, groups in self._values.items():
            options = self._kwargs[name]
            for group, values in groups.items():
                mean = torch.stack([v.to(values[0].device) for v in values]).mean()
                bar = bool(options.get("prog_bar")) and self.bar_on_max and group == "max"
                self.original(f"{name}/{group}", mean, **{**options, "prog_bar": bar, "enable_graph": False})
        self._values, self._kwargs = {}, {}
