"""The elastic ``resolution`` dim acts on inputs, not on the model: resize image batches to the subnet's resolution.

Kept in ``supernet`` so every layer can use one implementation: export calibrates BatchNorm at the subnet's
resolution here, and the training tap / search measurer resize the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def resize_images(x: Any, size: int) -> Any:
    """Bilinearly resize a 4-D floating-point image batch to ``size × size``; anything else is returned as is."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point() or tuple(x.shape[-2:]) == (
            size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def resize_call(args: tuple, kwargs: dict, size: int) -> tuple[tuple, dict]:
    """A model call's ``(args, kwargs)`` with its image input resized to ``size`` px: the first positional argument
    and a ``pixel_values=`` keyword (Hugging Face image models), whichever are 4-D floating-point batches.

    The one definition of "the image input": the training tap, the search measurer and export calibration all
    resize through it."""
    if args:
        args = (resize_images(args[0], size), *args[1:])
    if "pixel_values" in kwargs:
        kwargs = {**kwargs, "pixel_values": resize_images(kwargs["pixel_values"], size)}
    return args, kwargs


@contextmanager
def resized_inputs(model: nn.Module, resolution: int | None) -> Iterator[None]:
    """Inside the block, ``model`` sees its image input (see :func:`resize_call`) resized to ``resolution`` px;
    ``None`` changes nothing."""
    if resolution is None:
        yield
        return

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return resize_call(args, kwargs, resolution)

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
