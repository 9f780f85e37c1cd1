"""timm EfficientNet / MobileNetV3 adapter: real timm models (pretrained=False), tiny inputs."""

from __future__ import annotations

import copy
import json

import pytest
import timm
import torch
from timm.layers.conv2d_same import Conv2dSame
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from torch import nn

from lightning_elastic.adapters.timm_efficientnet import ElasticConv2dSame, auto_depth, expand_choices
from lightning_elastic.core.config import SearchSpaceConfig
from lightning_elastic.core.errors import ConversionError
from lightning_elastic.ops.base import ElasticOp
from lightning_elastic.supernet.convert import to_supernet
from lightning_elastic.testing import check_adapter

ROUNDTRIP = ("mobilenetv3_small_050", "tf_efficientnet_b0")
MODELS = ["mobilenetv3_small_050", "mobilenetv3_large_100", "efficientnet_b0", "tf_efficientnet_b0", "mnasnet_small",
          "efficientnet_lite0", "test_efficientnet"]
PX = 32


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # batch-2, 32 px convs are too small to gain from threads; on a shared 2-core box spinning OpenMP workers
    # made this module ~5x slower in wall time
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def nets():
    """name -> (unconverted copy, Supernet); built once per module, each test restores the max config."""
    cache = {}

    def get(name: str):
        if name not in cache:
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, num_classes=10).eval()
            _randomise_bn(model)
            original = copy.deepcopy(model)
            cache[name] = (original, to_supernet(model, SearchSpaceConfig()))
        return cache[name]

    return get


def _randomise_bn(model: nn.Module) -> None:
    # fresh BN stats are 0/1 and weights 1/0, which would hide wrong slicing of norms
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def _x(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, PX, PX, generator=torch.Generator().manual_seed(1))


def analytic_params(original: nn.Module, cfg: dict[str, int]) -> int:
    """Parameter count of the subnet ``cfg``, from channel numbers of the original blocks."""
    total = sum(p.numel() for n, p in original.named_parameters() if not n.startswith("blocks."))
    for i, stage in enumerate(original.blocks):
        for j, block in enumerate(list(stage)[: cfg.get(f"blocks.{i}.depth", len(stage))]):
            name = f"blocks.{i}.{j}"
            if type(block) is InvertedResidual:
                cin, cout = block.conv_pw.in_channels, block.conv_pwl.out_channels
                mid = cfg.get(f"{name}.expand", block.conv_pw.out_channels)
                k = cfg.get(f"{name}.kernel", block.conv_dw.kernel_size[0])
                total += cin * mid + 2 * mid + mid * k * k + 2 * mid + mid * cout + 2 * cout
                if not isinstance(block.se, nn.Identity):
                    rd = block.se.conv_reduce.out_channels
                    total += mid * rd + rd + rd * mid + mid
            elif type(block) is DepthwiseSeparableConv:
                cin, cout = block.conv_dw.in_channels, block.conv_pw.out_channels
                k = cfg.get(f"{name}.kernel", block.conv_dw.kernel_size[0])
                total += cin * k * k + 2 * cin + cin * cout + 2 * cout
                if not isinstance(block.se, nn.Identity):
                    rd = block.se.conv_reduce.out_channels
                    total += cin * rd + rd + rd * cin + cin
            else:  # ConvBnAct / EdgeResidual are fixed
                total += sum(p.numel() for p in block.parameters())
    return total


# -- the adapter contract (check_adapter) + parameter counts from the block formulas ----------------------------
@pytest.mark.parametrize("name", MODELS)
def test_contract(name):
    def build() -> nn.Module:
        # float64: max == original to 1e-5 with no rounding slack to hide a real difference
        model = timm.create_model(name, pretrained=False, num_classes=10).double()
        _randomise_bn(model)
        return model

    # 7 random configs per model (49 in all) and the min config; round trip, gradients, plain exports included
    report = check_adapter(build, _x().double(), num_configs=7, roundtrip=name in ROUNDTRIP)
    original, net = report.reference, report.supernet
    assert analytic_params(original, net.max_config()) == sum(p.numel() for p in original.parameters())
    for cfg, n in zip(report.configs, report.num_params, strict=True):
        assert n == analytic_params(original, cfg), cfg
    kinds = {d.name.rsplit(".", 1)[-1] for d in net.space}
    assert "expand" in kinds
    if name != "test_efficientnet":  # one block per stage there
        assert "depth" in kinds


def test_default_space_matches_ofa():
    net = to_supernet(timm.create_model("efficientnet_b0", pretrained=False))
    space = net.space.describe()
    # stage lengths 1,2,2,3,3,4,1: two-block stages get {1,2}, three {2,3}, four OFA's {2,3,4}
    assert [space.get(f"blocks.{i}.depth") for i in range(7)] == [None, [1, 2], [1, 2], [2, 3], [2, 3], [2, 3, 4],
                                                                  None]
    # e6 block with 24 input channels: 3*24, 4*24, 6*24
    assert space["blocks.1.1.expand"] == [72, 96, 144]
    # 5x5 depthwise: {3,5,7} clipped to 5; 3x3 kernels are not elastic
    assert space["blocks.2.0.kernel"] == [3, 5]
    assert "blocks.1.0.kernel" not in space and "blocks.0.0.kernel" not in space
    assert isinstance(net.model.blocks[2][0].conv_dw, ElasticOp)


def test_auto_depth_and_expand_choices():
    assert [auto_depth(n) for n in (1, 2, 3, 4, 6)] == [[1], [1, 2], [2, 3], [2, 3, 4], [3, 5, 6]]
    # mobilenetv3 rounds to multiples of 8: 8*3=24, 8*4=32, 8*6=48 > 40 dropped, full 40 kept
    assert expand_choices("auto", 8, 40) == [24, 32, 40]
    assert expand_choices(None, 8, 40) == [40]


def test_user_space_and_overrides():
    cfg = SearchSpaceConfig(expand=(2, 6), kernel=None, depth=(1,), overrides={"blocks.5.*.expand": [576]})
    space = to_supernet(timm.create_model("efficientnet_b0", pretrained=False), cfg).space.describe()
    assert space["blocks.1.1.expand"] == [48, 144]
    assert space["blocks.5.2.expand"] == [576, 1152]
    assert space["blocks.5.depth"] == [1, 4]
    assert not any(n.endswith(".kernel") for n in space)


# -- runtime switching ------------------------------------------------------------------------------------
def test_smaller_subnet_changes_output(nets):
    _, net = nets("mobilenetv3_small_050")
    with torch.no_grad():
        full = net.model(_x())
        with net.subnet(net.min_config()):
            small = net.model(_x())
    assert (full - small).abs().max() > 1e-3


def test_json_round_trip(nets):
    _, net = nets("efficientnet_b0")
    cfg = net.sample(torch.Generator().manual_seed(3))
    loaded = json.loads(json.dumps(cfg))
    assert loaded == cfg and net.space.validate(loaded) == cfg
    with torch.no_grad():
        with net.subnet(cfg):
            a = net.model(_x())
        with net.subnet(loaded):
            b = net.model(_x())
    torch.testing.assert_close(a, b, atol=0, rtol=0)


# -- tf_ 'SAME' padding -----------------------------------------------------------------------------------
def test_conv2d_same_crop_matches_timm():
    model = timm.create_model("tf_efficientnet_b0", pretrained=False)
    net = to_supernet(model)
    conv = model.blocks[2][0].conv_dw
    assert isinstance(conv, ElasticConv2dSame) and conv._base_cls is Conv2dSame and conv.stride == (2, 2)
    net.select({**net.max_config(), "blocks.2.0.kernel": 3, "blocks.2.0.expand": 96})
    x = torch.randn(1, 144, 15, 15)  # odd size: asymmetric TF padding
    with torch.no_grad():
        ref = Conv2dSame(96, 96, 3, stride=2, groups=96, bias=False)
        ref.weight.copy_(conv.weight[:96, :, 1:4, 1:4])
        torch.testing.assert_close(conv(x[:, :96]), ref(x[:, :96]))
    exported = conv.export_module()
    assert type(exported) is Conv2dSame and exported.padding == (0, 0) and exported.kernel_size == (3, 3)


def test_kernel_transform_export(tmp_path):
    model = timm.create_model("mobilenetv3_small_050", pretrained=False).eval()
    net = to_supernet(model, SearchSpaceConfig(kernel_transform=True))
    extra = [k for k in model.state_dict() if "kernel_transform" in k]
    assert extra and all(k.endswith("kernel_transform_3x3") for k in extra)
    with torch.no_grad():
        for k in extra:
            model.get_parameter(k).add_(0.1 * torch.randn(9, 9))
        cfg = net.min_config()
        with net.subnet(cfg):
            expected = model(_x())
        exported = net.export(cfg, calibration_data="current").eval()
        torch.testing.assert_close(exported(_x()), expected, atol=1e-5, rtol=1e-4)
    assert not any("kernel_transform" in k for k in exported.state_dict())


# -- errors and all-or-nothing ----------------------------------------------------------------------------
def _snapshot(model: nn.Module):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()])


def _assert_untouched(model: nn.Module, snap) -> None:
    state, types = snap
    assert [type(m) for m in model.modules()] == types
    now = model.state_dict()
    assert list(now) == list(state) and all(torch.equal(now[k], v) for k, v in state.items())


@pytest.mark.parametrize(("name", "kwargs", "match"), [
    ("mobilenetv4_conv_small", {}, r"blocks\.2\.0 is a UniversalInvertedResidual.*HINT"),
    ("efficientnet_cc_b0_4e", {}, r"blocks\.4\.0 is a CondConvResidual.*HINT"),
    ("mixnet_s", {}, r"blocks\.1\.0\.conv_pw is a MixedConv2d.*HINT"),
    ("mobilenetv3_small_050", {"aa_layer": "blurpc"}, r"blocks\.1\.0\.aa is a BlurPool2d.*HINT"),
    ("test_efficientnet_gn", {}, r"blocks\.3\.0\.bn1 is a GroupNormAct.*HINT"),
])
def test_unsupported_models_are_refused_untouched(name, kwargs, match):
    model = timm.create_model(name, pretrained=False, **kwargs)
    snap = _snapshot(model)
    with pytest.raises(ConversionError, match=match):
        to_supernet(model, adapter="timm-efficientnet")
    _assert_untouched(model, snap)


def test_other_squeeze_excite_is_refused():
    from timm.layers import SEModule

    model = timm.create_model("mobilenetv3_small_050", pretrained=False)
    model.blocks[2][0].se = SEModule(model.blocks[2][0].conv_pw.out_channels)
    snap = _snapshot(model)
    with pytest.raises(ConversionError, match=r"blocks\.2\.0\.se is a SEModule.*HINT"):
        to_supernet(model, adapter="timm-efficientnet")
    _assert_untouched(model, snap)


def test_blocks_not_sequential_is_refused():
    model = timm.create_model("mobilenetv3_small_050", pretrained=False)
    model.blocks = nn.ModuleList(list(model.blocks))
    with pytest.raises(ConversionError, match=r"`model.blocks`.*ModuleList.*HINT"):
        to_supernet(model)


def test_even_kernel_is_refused():
    model = timm.create_model("mobilenetv3_small_050", pretrained=False)
    with pytest.raises(ConversionError, match=r"`kernel` got \[2, 3\].*odd.*HINT"):
        to_supernet(model, SearchSpaceConfig(kernel=(2, 3)), adapter="timm-efficientnet")


def test_failure_while_building_leaves_model_untouched():
    # the override passes the plan, then the elastic conv refuses the even kernel while replacements are built
    model = timm.create_model("efficientnet_b0", pretrained=False)
    snap = _snapshot(model)
    with pytest.raises(ConversionError, match="odd"):
        to_supernet(model, SearchSpaceConfig(overrides={"blocks.2.0.kernel": [2, 5]}))
    _assert_untouched(model, snap)
    assert to_supernet(model).space["blocks.2.0.kernel"].choices == (3, 5)  # and it still converts afterwards


def test_torch_export_of_subnet(nets):
    # the exported min subnet has cropped kernels in timm's dynamic-'SAME' Conv2dSame
    _, net = nets("tf_efficientnet_b0")
    exported = net.export(net.min_config(), calibration_data="current").eval()
    x = _x(1)
    program = torch.export.export(exported, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), exported(x), atol=1e-5, rtol=1e-4)
