"""Hooks on the converted model: resize inputs to the active resolution and capture outputs for distillation.

The user's ``training_step`` calls the model as usual; these hooks are how the training loop sees (and adjusts) what
goes in and comes out without the user changing a line.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_elastic.core.errors import ConfigError
from lightning_elastic.supernet.resize import resize_call
from lightning_elastic.supernet.supernet import Supernet


def hidden_state_module(model: nn.Module) -> nn.Module | None:
    """The module whose output holds ``model``'s last hidden state: a transformers model's ``base_model`` (the
    model itself for a bare backbone), through a peft wrapper; None for other models."""
    if callable(getattr(model, "get_base_model", None)):  # peft
        model = model.get_base_model()
    base = getattr(model, "base_model", None) if hasattr(model, "config") else None
    return base if isinstance(base, nn.Module) else None


class ModelTap:
    """Forward hooks on a converted model.

    * a pre-hook resizes the image input (first positional argument or ``pixel_values=``) to the active
      ``resolution`` dim, when the space has one, so every subnet, in training and validation, sees its resolution;
    * while :attr:`capturing` is on, the last forward's output and its original (un-resized) inputs are kept, for
      in-place distillation and for an external teacher;
    * with ``hidden=True``, while capturing, the backbone's last hidden state (:func:`hidden_state_module`).

    Example:
        >>> tap = ModelTap(supernet)  # doctest: +SKIP
        >>> tap.remove()  # doctest: +SKIP
    """

    def __init__(self, supernet: Supernet, hidden: bool = False) -> None:
        self.supernet = supernet
        self.capturing = False
        self.output: Any = None
        self.inputs: tuple[tuple, dict] | None = None
        self.hidden: torch.Tensor | None = None
        model: nn.Module = supernet.model
        self._handles = [model.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
                         model.register_forward_hook(self._hook, with_kwargs=True)]
        if hidden:
            backbone = hidden_state_module(model)
            if backbone is None:
                raise ConfigError(
                    f"`distill_hidden` is on, but {type(model).__name__} has no transformers backbone whose output "
                    "holds `last_hidden_state` (allowed: Hugging Face models, peft-wrapped or not). HINT: set "
                    "distill_hidden=0 for this model.")
            self._handles.append(backbone.register_forward_hook(self._hidden_hook))

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        if self.capturing:
            self.inputs = (args, kwargs)
        size = self.supernet.resolution()
        return None if size is None else resize_call(args, kwargs, size)

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self.capturing:
            self.output = output

    def _hidden_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.capturing:
            hidden = getattr(output, "last_hidden_state", None)
            if hidden is None and isinstance(output, tuple | list) and output:
                hidden = output[0]
            self.hidden = hidden if isinstance(hidden, torch.Tensor) else None

    def clear(self) -> None:
        self.output = None
        self.inputs = None
        self.hidden = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.clear()
