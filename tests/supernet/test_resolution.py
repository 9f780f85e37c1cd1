"""Elastic input resolution: a dimension of the space that the training loop (not the model) applies.

Real timm models of every family: the resolution dim is sampled, counted, encoded and saved with the other dims; it
changes no module, so the subnet at a resolution is the model run on inputs resized to it, and the export (which
carries no resolution state) computes the same at every resolution of the space.
"""

from __future__ import annotations

import functools
import json

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from lightning_elastic import ConfigError, SearchSpaceConfig, load_subnet, to_supernet
from tests._models import tiny_resnet

RESOLUTIONS = (32, 48, 64)
MODELS = {
    "resnet": lambda: timm.create_model("resnet10t", pretrained=False, num_classes=5),
    "mobilenetv3": lambda: timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=5),
    # a ViT runs at other resolutions only with dynamic_img_size (else timm asserts the patch grid)
    "vit": lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=64, depth=2,
                                     dynamic_img_size=True),
}


@functools.cache
def converted(family: str):
    torch.manual_seed(0)
    model = MODELS[family]().eval()
    space_without = to_supernet(MODELS[family]()).space
    net = to_supernet(model, resolution=RESOLUTIONS)
    return model, net, space_without


def resized(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("family", list(MODELS))
def test_resolution_is_a_dimension_of_the_space(family):
    model, net, without = converted(family)
    dim = net.space["resolution"]
    assert dim.choices == RESOLUTIONS and dim.kind == "resolution" and dim.full == max(RESOLUTIONS)
    assert net.space.names() == without.names() + ["resolution"]
    assert net.space.num_subnets == without.num_subnets * len(RESOLUTIONS)
    assert net.resolution() == 64 and net.resolution(net.min_config()) == 32
    seen = {net.sample(torch.Generator().manual_seed(s))["resolution"] for s in range(40)}
    assert seen == set(RESOLUTIONS)  # uniform sampling reaches every resolution
    with pytest.raises(ConfigError, match=r"resolution=40 not in choices \[32, 48, 64\]"):
        net.select({**net.max_config(), "resolution": 40})


@pytest.mark.parametrize("family", list(MODELS))
def test_subnet_at_each_resolution_equals_its_export(family, tmp_path):
    model, net, _ = converted(family)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    cfg = net.sample(torch.Generator().manual_seed(3))
    exported = net.save_subnet(tmp_path / "sub", cfg, calibration_data="current").eval()
    loaded = load_subnet(tmp_path / "sub")
    assert json.loads((tmp_path / "sub" / "subnet.json").read_text())["arch_config"]["resolution"] == cfg["resolution"]
    assert sum(p.numel() for p in exported.parameters()) < sum(p.numel() for p in model.parameters())
    for size in RESOLUTIONS:
        with net.subnet({**cfg, "resolution": size}), torch.no_grad():
            size_now = net.resolution()
            expected = model(resized(x, size_now))
            torch.testing.assert_close(exported(resized(x, size)), expected, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(loaded(resized(x, size)), expected, atol=1e-5, rtol=1e-4)
        assert size_now == size
    # the resolution changes no module: the same config at another resolution has the same parameters
    assert sum(p.numel() for p in net.export({**cfg, "resolution": 32}, calibration_data="current").parameters()) == sum(
        p.numel() for p in exported.parameters())


def test_resolution_only_space():
    model = tiny_resnet("bottle", layers=(1, 1, 1, 1))
    net = to_supernet(model, SearchSpaceConfig(width=None, depth=None, resolution=(32, 64)))
    assert net.space.names() == ["resolution"] and net.space.num_subnets == 2
    exported = net.export(net.min_config(), calibration_data="current")
    assert type(exported) is type(model) and not isinstance(exported, nn.Sequential)
    assert [t.shape for t in exported.state_dict().values()] == [t.shape for t in model.state_dict().values()]
