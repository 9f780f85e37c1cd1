"""One owner of the input-resolution resize: the training tap and the search measurer / export calibration
(``resized_inputs``) resize the same inputs the same way: the first positional argument and ``pixel_values=``."""

from __future__ import annotations

import pytest
import torch
from timm.models.resnet import BasicBlock, ResNet

from lightning_elastic import to_supernet
from lightning_elastic.supernet.resize import resize_call, resized_inputs
from lightning_elastic.training.tap import ModelTap


class PixelResNet(ResNet):
    """A real timm ResNet that also takes HF-style ``pixel_values=`` and records the images it was given."""

    def __init__(self) -> None:
        super().__init__(BasicBlock, [1, 1, 1, 1], channels=(8, 8, 8, 8), stem_width=8, num_classes=3)
        self.seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x=None, mask=None, *, pixel_values=None):
        image = x if x is not None else pixel_values
        self.seen.append((image, mask))
        return super().forward(image)


CALLS = {
    "positional": lambda x, mask: ((x, mask), {}),
    "pixel_values": lambda x, mask: ((), {"pixel_values": x, "mask": mask}),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_tap_and_resized_inputs_resize_the_same_inputs(call):
    model = PixelResNet().eval()
    net = to_supernet(model, resolution=(16, 32))
    x, mask = torch.randn(2, 3, 32, 32), torch.ones(2, 3, 32, 32, dtype=torch.long)  # an integer 4-D tensor
    args, kwargs = CALLS[call](x, mask)
    with torch.no_grad():
        net.select({**net.max_config(), "resolution": 16})
        tap = ModelTap(net)  # the training path: resizes to the active resolution
        try:
            model(*args, **kwargs)
        finally:
            tap.remove()
        net.select(net.max_config())
        with resized_inputs(model, 16):  # the search measurer's and export calibration's path
            model(*args, **kwargs)
    (by_tap, tap_mask), (by_hook, hook_mask) = model.seen
    assert by_tap.shape == by_hook.shape == (2, 3, 16, 16)
    assert torch.equal(by_tap, by_hook)
    expected = resize_call(*CALLS[call](x, mask), 16)
    assert torch.equal(by_tap, expected[0][0] if expected[0] else expected[1]["pixel_values"])
    if call == "positional":
        assert tap_mask is mask and hook_mask is mask  # only the first positional argument is the image
    # the resolution dim was the max one in the hook's run: no resize from the tap, which was removed
    model.seen.clear()
    with torch.no_grad():
        model(*args, **kwargs)
    assert model.seen[0][0].shape == (2, 3, 32, 32)


def test_resize_call_leaves_other_inputs():
    ids = torch.ones(2, 3, 8, 8, dtype=torch.long)
    args, kwargs = resize_call((ids, torch.randn(2, 3, 8, 8)), {"attention_mask": torch.randn(2, 3, 8, 8)}, 4)
    assert args[0] is ids and args[1].shape == (2, 3, 8, 8) and kwargs["attention_mask"].shape == (2, 3, 8, 8)
    same = torch.randn(1, 3, 4, 4)
    assert resize_call((same,), {}, 4)[0][0] is same  # already at the size
