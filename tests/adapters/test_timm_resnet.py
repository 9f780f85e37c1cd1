"""timm ResNet family: real timm models (random init, 32 px) against the contracts of the design."""

from __future__ import annotations

import copy
import functools

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.models.resnet import BasicBlock
from torch import nn

from lightning_elastic import (
    ConfigError,
    ConversionError,
    ExportError,
    SearchSpaceConfig,
    load_subnet,
    save_subnet,
    to_supernet,
)
from lightning_elastic.adapters.timm_resnet import auto_depth, build_timm
from lightning_elastic.ops.base import ElasticOp
from lightning_elastic.ops.conv import ElasticConv2d
from tests._models import tiny_resnet

NAMES = ["resnet10t", "resnet18", "resnet18d", "resnet26", "resnet50d", "seresnet18"]

# the same timm ResNet class and block options as the named models, with few channels: fast enough for many
# hypothesis examples (stem variants, avg-pool downsample "d", Bottleneck, SE attention)
TINY = {
    "resnet10t-like": dict(block="basic", layers=(1, 1, 1, 1), stem_type="deep_tiered", avg_down=True),
    "resnet18-like": dict(block="basic", layers=(2, 2, 2, 2)),
    "resnet18d-like": dict(block="basic", layers=(2, 2, 2, 2), stem_type="deep", avg_down=True),
    "resnet26-like": dict(block="bottle", layers=(2, 2, 2, 2)),
    "resnet50d-like": dict(block="bottle", layers=(3, 4, 6, 3), stem_type="deep", avg_down=True),
    "seresnet18-like": dict(block="basic", layers=(2, 2, 2, 2), block_args=dict(attn_layer="se")),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # many tiny convs: on a shared 2-core machine, intra-op threads cost more than they give
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def converted(name: str):
    """(original, supernet model, Supernet, input) built once per module run; tests select what they need."""
    torch.manual_seed(0)
    if name in TINY:
        original = tiny_resnet(**TINY[name]).eval()
    else:
        original = timm.create_model(name, pretrained=False, num_classes=7).eval()
    model = copy.deepcopy(original)
    net = to_supernet(model)
    return original, model, net, torch.randn(2, 3, 32, 32)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def analytic_params(original: nn.Module, cfg: dict[str, int]) -> int:
    """Parameter count of the subnet ``cfg``, from the block formulas (conv weights have no bias in timm ResNets;
    a BatchNorm has weight + bias per channel). Stem, head, downsample and SE do not depend on the config."""
    total = sum(p.numel() for n, p in original.named_parameters() if not n.startswith("layer"))
    for i in range(1, 5):
        stage = getattr(original, f"layer{i}")
        for j, block in enumerate(list(stage)[: cfg.get(f"layer{i}.depth", len(stage))]):
            w = cfg.get(f"layer{i}.{j}.width", block.conv1.out_channels)
            cin = block.conv1.in_channels
            fixed = sum(n_params(m) for m in (block.downsample, block.se) if m is not None)
            if isinstance(block, BasicBlock):
                cout = block.bn2.num_features
                total += cin * w * 9 + 2 * w + w * cout * 9 + 2 * cout + fixed
            else:
                cout = block.bn3.num_features
                total += cin * w + 2 * w + w * w * 9 + 2 * w + w * cout + 2 * cout + fixed
    return total


@pytest.mark.parametrize("name", NAMES)
def test_max_config_equals_original(name):
    original, model, net, x = converted(name)
    net.select(net.max_config())
    assert list(model.state_dict()) == list(original.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=0, atol=1e-5)
    exported = net.export(net.max_config())
    assert type(exported) is type(original) and n_params(exported) == n_params(original)
    assert list(exported.state_dict()) == list(original.state_dict())


@pytest.mark.parametrize("name", NAMES + sorted(TINY))
def test_default_space(name):
    original, _, net, _ = converted(name)
    for i in range(1, 5):
        stage = getattr(original, f"layer{i}")
        depth = auto_depth(len(stage))
        assert (f"layer{i}.depth" in net.space) == (len(depth) > 1)
        for j, block in enumerate(stage):
            full = block.conv1.out_channels
            expected = tuple(sorted({round(full * r) for r in (0.5, 0.75, 1.0)}))
            assert net.space[f"layer{i}.{j}.width"].choices == expected


@settings(max_examples=60, deadline=None, derandomize=True)
@given(name=st.sampled_from(sorted(TINY)), seed=st.integers(0, 2**31 - 1))
def test_random_config_export_equals_supernet(name, seed):
    check_random_config(name, seed)


@pytest.mark.parametrize("name", NAMES)
def test_random_config_export_equals_supernet_real_models(name):
    check_random_config(name, 1)


def check_random_config(name: str, seed: int) -> None:
    original, model, net, x = converted(name)
    cfg = net.sample(torch.Generator().manual_seed(seed))
    exported = net.export(cfg).eval()
    net.select(cfg)
    model.eval()
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(exported(x), expected, rtol=1e-4, atol=1e-5)
    assert type(exported) is type(original)
    assert not any(isinstance(m, ElasticOp) for m in exported.modules())
    assert n_params(exported) == analytic_params(original, cfg)
    net.select(net.max_config())


@pytest.mark.parametrize("name", ["resnet18d-like", "resnet50d-like"])
def test_gradients_outside_active_slice_are_zero(name):
    _, model, net, x = converted(name)
    cfg = net.min_config()
    net.select(cfg)
    model.train()
    model.zero_grad(set_to_none=True)
    model(x).logsumexp(-1).sum().backward()
    checked = 0
    for mod_name, m in model.named_modules():
        if not isinstance(m, ElasticConv2d) or m.weight.grad is None:
            continue
        mask = torch.zeros_like(m.weight, dtype=torch.bool)
        mask[: m.out_axis.active_size if m.out_axis else None, : m.in_axis.active_size if m.in_axis else None] = True
        assert torch.all(m.weight.grad[~mask] == 0), mod_name
        checked += 1
    assert checked >= 4
    for i in range(1, 5):
        stage = getattr(model, f"layer{i}")
        for j, block in enumerate(stage.all_modules() if hasattr(stage, "all_modules") else stage):
            used = j < cfg.get(f"layer{i}.depth", len(stage))
            assert (block.conv1.weight.grad is not None) == used, f"layer{i}.{j}"
    model.zero_grad(set_to_none=True)
    model.eval()
    net.select(net.max_config())


def test_width_only_and_depth_only_spaces():
    model = tiny_resnet("bottle", layers=(3, 1, 1, 1), channels=(16, 16, 32, 32))
    net = to_supernet(model, SearchSpaceConfig(width=None, depth=(1, 3)))
    assert net.space.names() == ["layer1.depth"] and net.space["layer1.depth"].choices == (1, 3)
    model2 = tiny_resnet("basic")
    net2 = to_supernet(model2, SearchSpaceConfig(width=(0.25, 1.0), depth=None))
    assert all(n.endswith(".width") for n in net2.space.names()) and net2.space["layer1.0.width"].choices == (2, 8)


def tiny_resnext():
    return tiny_resnet("bottle", layers=(2, 1, 1, 1), channels=(16, 16, 32, 32), cardinality=4, base_width=8).eval()


@pytest.mark.parametrize("space", [
    SearchSpaceConfig(),  # 'auto' width keeps grouped blocks full: depth only (used to raise)
    SearchSpaceConfig(exclude=["*.width"]),  # the hint's route (used to raise the same error)
    SearchSpaceConfig(width=(0.5, 1.0), exclude=["*.width"]),
    SearchSpaceConfig(width=None, depth=(1, 2)),
], ids=["default", "exclude", "width-list-excluded", "width-none"])
def test_resnext_grouped_convs_depth_only(space):
    resnext = tiny_resnext()
    original = copy.deepcopy(resnext)
    net = to_supernet(resnext, space)
    assert net.space.names() == ["layer1.depth"]  # grouped widths stay at full size
    assert not any(isinstance(m, ElasticOp) for m in resnext.modules())  # grouped convs are left as they are
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(resnext(x), original(x), rtol=0, atol=1e-5)  # max config == original
        exported = net.export(net.min_config()).eval()
        net.select(net.min_config())
        torch.testing.assert_close(exported(x), resnext(x), rtol=0, atol=1e-5)


def test_real_seresnext_default_space_converts():
    model = timm.create_model("seresnext26d_32x4d", pretrained=False, num_classes=10)
    net = to_supernet(model)
    assert sorted(net.space.names()) == [f"layer{i}.depth" for i in range(1, 5)]


@pytest.mark.parametrize(("space", "asked"), [
    (SearchSpaceConfig(width=(0.5, 1.0)), r"`width`=\(0\.5, 1\.0\)"),
    (SearchSpaceConfig(overrides={"layer1.0.width": [4, 8]}), r"`overrides\['layer1\.0\.width'\]`"),
])
def test_resnext_elastic_width_asked_explicitly(space, asked):
    resnext = tiny_resnext()
    with pytest.raises(ConversionError, match=asked + r" asks for an elastic width of layer1\.0\.width \(full 8\), "
                       r"which uses grouped convolutions \(groups=4, ResNeXt-style\); allowed there: the full width "
                       r"only\. HINT: pass width=None or exclude=\['\*\.width'\]"):
        to_supernet(resnext, space)
    assert not any(isinstance(m, ElasticOp) for m in resnext.modules())


@pytest.mark.parametrize(("space", "message"), [
    # a kind the ResNet adapter has no dims for used to be ignored
    (SearchSpaceConfig(kernel=(4,)), r"`kernel`=\(4,\) was given, but the timm-resnet adapter builds no 'kernel' "
                                     r"dimensions \(it builds: \['depth', 'width'\]\), so it would be ignored\. HINT"),
    (SearchSpaceConfig(stage_width=(0.5, 1.0)), r"`stage_width`=\(0\.5, 1\.0\) was given, but the timm-resnet "
                                                r"adapter builds no 'stage_width'"),
    # every width above every block's full size: the width dims used to vanish
    (SearchSpaceConfig(width=(1000,)), r"`width` has absolute sizes \[1000\] above the largest full size 32 of this "
                                       r"model's 8 'width' dimensions .*leaving no elastic 'width' dimension\. HINT"),
    (SearchSpaceConfig(depth=(1, 5)), r"`depth` has absolute sizes \[5\] above the largest full size 2 "),
])
def test_explicit_values_the_model_cannot_use(space, message):
    model = tiny_resnet("basic")
    with pytest.raises(ConfigError, match=message):
        to_supernet(model, space)
    assert not any(isinstance(m, ElasticOp) for m in model.modules())


def test_unknown_block_error():
    model = tiny_resnet("basic")
    model.layer2[1] = nn.Identity()
    with pytest.raises(ConversionError, match=r"layer2\.1 is a Identity; the timm-resnet adapter supports BasicBlock and "
                                              r"Bottleneck\. HINT"):
        to_supernet(model)
    assert type(model.layer1[0].conv1) is nn.Conv2d


def test_save_load_round_trip(tmp_path):
    original, model, net, x = converted("resnet10t")
    cfg = net.min_config()
    exported = save_subnet(net, tmp_path, cfg).eval()
    loaded = load_subnet(tmp_path)
    assert type(loaded) is type(original) and n_params(loaded) == analytic_params(original, cfg)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), exported(x), rtol=0, atol=0)


def test_build_timm_needs_an_architecture():
    with pytest.raises(ExportError, match=r"no timm architecture name \(meta=.*HINT: convert models made by "
                                          r"timm\.create_model"):
        build_timm({"library": "timm", "architecture": None})
    assert type(build_timm({"architecture": "resnet10t", "num_classes": 3})).__name__ == "ResNet"
