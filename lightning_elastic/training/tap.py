"""Hooks on the converted model: resize inputs to the active resolution and capture outputs for distillation.

The user's ``training_step`` calls the model as usual; these hooks are how the training loop sees (and adjusts) what
goes in and comes out without the user changing a line.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_elastic.supernet.resize import resize_images
from lightning_elastic.supernet.supernet import Supernet


class ModelTap:
    """Forward hooks on a converted model.

    * a pre-hook resizes the image input (first positional argument or ``pixel_values=``) to the active
      ``resolution`` dim, when the space has one, so every subnet, in training and validation, sees its resolution;
    * while :attr:`capturing` is on, the last forward's output and its original (un-resized) inputs are kept, for
      in-place distillation and for an external teacher.

    Example:
        >>> tap = ModelTap(supernet)  # doctest: +SKIP
        >>> tap.remove()  # doctest: +SKIP
    """

    def __init__(self, supernet: Supernet) -> None:
        self.supernet = supernet
        self.capturing = False
        self.output: Any = None
        self.inputs: tuple[tuple, dict] | None = None
        model: nn.Module = supernet.model
        self._handles = [model.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
                         model.register_forward_hook(self._hook, with_kwargs=True)]

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        if self.capturing:
            self.inputs = (args, kwargs)
        size = self.supernet.resolution()
        if size is None:
            return None
        if args:
            args = (resize_images(args[0], size),) + tuple(args[1:])
        if "pixel_values" in kwargs:
            kwargs = {**kwargs, "pixel_values": resize_images(kwargs["pixel_values"], size)}
        return args, kwargs

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self.capturing:
            self.output = output

    def clear(self) -> None:
        self.output = None
        self.inputs = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.clear()
