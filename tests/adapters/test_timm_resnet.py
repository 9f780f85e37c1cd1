"""timm ResNet family: real timm models (random init, 32 px) against the adapter contract (check_adapter) and the
family's own rules."""

from __future__ import annotations

import copy
import functools

import pytest
import timm
import torch
from timm.models.resnet import BasicBlock
from torch import nn

from lightning_elastic import ConfigError, ConversionError, ExportError, SearchSpaceConfig, to_supernet
from lightning_elastic.adapters.timm_resnet import auto_depth, build_timm
from lightning_elastic.ops.base import ElasticOp
from lightning_elastic.testing import check_adapter
from tests._models import tiny_resnet

NAMES = ["resnet10t", "resnet18", "resnet18d", "resnet26", "resnet50d", "seresnet18"]

# the same timm ResNet class and block options as the named models, with few channels: fast enough for many
# random configs (stem variants, avg-pool downsample "d", Bottleneck, SE attention)
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


def check_contract(factory, num_configs: int, roundtrip: bool) -> None:
    """The adapter contract (lightning_elastic.testing.check_adapter), plus exported parameter counts equal to the
    block formulas for every config it checked (the max one included)."""
    report = check_adapter(factory, torch.randn(2, 3, 32, 32), num_configs=num_configs, roundtrip=roundtrip)
    assert n_params(report.reference) == analytic_params(report.reference, report.supernet.max_config())
    for cfg, n in zip(report.configs, report.num_params, strict=True):
        assert n == analytic_params(report.reference, cfg), cfg


@pytest.mark.parametrize("name", sorted(TINY))
def test_contract_tiny(name):
    # 10 random configs per variant (60 in all) and the min config; no round trip: these have no timm name
    check_contract(lambda: tiny_resnet(**TINY[name]), num_configs=10, roundtrip=False)


@pytest.mark.parametrize("name", NAMES)
def test_contract_real_models(name):
    check_contract(lambda: timm.create_model(name, pretrained=False, num_classes=7), num_configs=1, roundtrip=True)


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
    report = check_adapter(tiny_resnext, torch.randn(2, 3, 32, 32), config=space, num_configs=1, roundtrip=False)
    assert report.supernet.space.names() == ["layer1.depth"]  # grouped widths stay at full size
    # grouped convs are left as they are
    assert not any(isinstance(m, ElasticOp) for m in report.supernet.model.modules())


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
        to_supernet(resnext, space, adapter="timm-resnet")
    assert not any(isinstance(m, ElasticOp) for m in resnext.modules())


def test_resnext_elastic_width_falls_back_to_the_generic_adapter():
    """Auto-detection hands a variant the family adapter refuses to the next matching adapter (the generic one)."""
    resnext = tiny_resnext()
    net = to_supernet(resnext, SearchSpaceConfig(width=(0.5, 1.0)))
    assert net.adapter.name == "generic"
    assert any(d.kind == "width" for d in net.space)
    conv = resnext.layer1[0].conv2
    assert conv.groups == 4 and isinstance(conv, ElasticOp)  # the grouped conv itself is elastic now



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
        to_supernet(model, adapter="timm-resnet")
    assert type(model.layer1[0].conv1) is nn.Conv2d


def test_build_timm_needs_an_architecture():
    with pytest.raises(ExportError, match=r"no timm architecture name \(meta=.*HINT: convert models made by "
                                          r"timm\.create_model"):
        build_timm({"library": "timm", "architecture": None})
    assert type(build_timm({"architecture": "resnet10t", "num_classes": 3})).__name__ == "ResNet"
