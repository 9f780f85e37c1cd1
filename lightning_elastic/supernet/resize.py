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


@contextmanager
def resized_inputs(model: nn.Module, resolution: int | None) -> Iterator[None]:
    """Inside the block, ``model`` sees its image input (first positional argument or ``pixel_values=``) resized to
    ``resolution`` px; ``None`` changes nothing."""
    if resolution is None:
        yield
        return

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            args = (resize_images(args[0], resolution), *args[1:])
        if "pixel_values" in kwargs:
            kwargs = {**kwargs, "pixel_values": resize_images(kwargs["pixel_values"], resolution)}
        return args, kwargs

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
