"""The generic (graph-based) conversion: channel spaces, heads, depth, its fallbacks and its errors, on real timm
models (random init, small inputs)."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from lightning_elastic import ConversionError, SearchSpaceConfig, to_supernet
from lightning_elastic.adapters.graph.trace import trace_channels
from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.ops.base import ElasticOp
from lightning_elastic.ops.params import ElasticParams
from lightning_elastic.testing import check_adapter


def _space_of(graph, module: str, kind: str = "out"):
    for root in graph.roots():
        if any(m.kind == kind and m.module == module for m in graph.spaces[root].members):
            return graph.spaces[root]
    raise AssertionError(f"no space holds {kind} of {module}")


def test_residual_add_couples_producers_and_concat_fixes_its_inputs():
    resnet = timm.create_model("resnet18", pretrained=False)
    graph = trace_channels(resnet, torch.randn(2, 3, 32, 32))
    stream = _space_of(graph, "layer1.0.conv2")
    assert {m.module for m in stream.members if m.kind == "out"} == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    inner = _space_of(graph, "layer1.0.conv1")
    assert not inner.fixed and [m.module for m in inner.members] == ["layer1.0.conv1", "layer1.0.bn1",
                                                                     "layer1.0.conv2"]
    dense = timm.create_model("densenet121", pretrained=False)
    graph = trace_channels(dense, torch.randn(2, 3, 32, 32))
    assert "a concatenation along the channel axis" in _space_of(graph, "features.denseblock1.denselayer1.conv2").fixed


def test_grouped_conv_members_and_model_output():
    model = timm.create_model("regnetx_002", pretrained=False)
    graph = trace_channels(model, torch.randn(2, 3, 32, 32))
    space = _space_of(graph, "s1.b1.conv2.conv")  # the grouped conv's output space
    assert not space.fixed and {m.groups for m in space.members if m.module == "s1.b1.conv2.conv"} == {
        model.s1.b1.conv2.conv.groups}
    assert "it is the model's output" in _space_of(graph, "head.fc").fixed


def test_generic_resnet_space_names_and_depth_of_trailing_blocks():
    model = timm.create_model("resnet18", pretrained=False)
    net = to_supernet(model, adapter="generic")
    names = net.space.names()
    assert "layer1.0.conv1.width" in names and "layer4.1.conv1.width" in names
    assert not any(n.endswith("stage_width") for n in names)  # residual streams follow stage_width (None)
    assert net.space["layer2.depth"].choices == (1, 2)  # block 0 changes shape: only block 1 can go
    assert "layer1.0.downsample.depth" not in names  # conv + bn of a shortcut are no residual blocks


def test_stage_width_makes_residual_streams_elastic():
    report = check_adapter(lambda: timm.create_model("resnet18", pretrained=False, num_classes=5),
                           torch.randn(2, 3, 32, 32), config=SearchSpaceConfig(stage_width=(0.5, 1.0), width=None,
                                                                            depth=None),
                           num_configs=1, roundtrip=False, adapter="generic")
    streams = [d for d in report.supernet.space if d.name.endswith(".stage_width")]
    assert streams and all(d.choices == (d.full // 2, d.full) for d in streams)


def test_groupnorm_spaces_keep_group_multiples_and_channel_order():
    model = timm.create_model("efficientnet_b0_gn", pretrained=False)
    gn = model.blocks[1][0].bn1
    net = to_supernet(model, adapter="generic")
    dim = net.space["blocks.1.0.conv_pw.width"]
    assert all(c % gn.num_groups == 0 for c in dim.choices) and dim.is_elastic
    assert dim.groups == []  # a permutation would move channels across GroupNorm's groups: no reordering


def test_loose_parameters_follow_their_space():
    model = timm.create_model("convnext_atto", pretrained=False)
    net = to_supernet(model, adapter="generic")
    block = model.stages[0].blocks[0]
    assert isinstance(block, ElasticParams)  # its `gamma` is a Parameter of the block itself
    cfg = net.space.max_config()
    net.select(cfg)
    assert block.gamma is block._parameters["gamma"]  # at full size: the Parameter itself
    ls_dims = [d for d in net.space if any(ct.name == "gamma" for g in d.groups for ct in g.tensors)]
    assert not ls_dims  # gamma sits on the residual stream, which stays fixed by default
    net2 = to_supernet(timm.create_model("convnext_atto", pretrained=False), adapter="generic",
                       stage_width=(0.5, 1.0), width=None, depth=None)
    stream = net2.space["stem.0.stage_width"]  # named after its first producer, the stem conv
    net2.select({**net2.space.max_config(), stream.name: stream.min})
    assert net2.model.stages[0].blocks[0].gamma.shape == (stream.min,)


def test_heads_keep_head_dim_and_export_sets_num_heads():
    model = timm.create_model("mobilevit_xxs", pretrained=False, num_classes=5).eval()
    net = to_supernet(model, adapter="generic")
    heads = [d for d in net.space if d.kind == "heads"]
    assert heads
    dim = heads[0]
    attn = model.get_submodule(dim.name[: -len(".heads")])
    head_dim = attn.qkv.out_features // (3 * attn.num_heads)
    cfg = {**net.space.max_config(), dim.name: dim.min}
    net.select(cfg)
    assert attn.num_heads == dim.min
    x = torch.randn(1, 3, 64, 64)
    exported = net.export(cfg, calibration_data=[x])
    new = exported.get_submodule(dim.name[: -len(".heads")])
    assert new.num_heads == dim.min and new.qkv.out_features == 3 * dim.min * head_dim


def test_space_whose_forward_fails_when_smaller_is_kept_full():
    # PVT-v2 reshapes the spatial-reduction conv's output with the channel count of the *tokens*
    # (x.reshape(B, C, -1)): the graph cannot see that, a forward at the smallest width does
    model = timm.create_model("pvt_v2_b0", pretrained=False)
    net = to_supernet(model, adapter="generic")
    names = net.space.names()
    assert not any(".attn.sr." in n for n in names)
    assert any(".mlp.fc1.width" in n for n in names)


def test_nothing_elastic_names_the_reasons():
    model = timm.create_model("repvgg_a0", pretrained=False)
    with pytest.raises(ConversionError, match=r"found no elastic dimension in this ByobNet: .*HINT: its \d+ "
                                              r"residual-coupled spaces follow `stage_width`.*stage_width=\(0\.5, "):
        to_supernet(model)
    assert not any(isinstance(m, ElasticOp) for m in model.modules())


def test_model_that_cannot_run_is_refused_with_both_sizes():
    model = timm.create_model("resnet18", pretrained=False)

    def broken(x):
        raise RuntimeError("no forward today")

    model.forward = broken
    with pytest.raises(ConversionError, match=r"failed at 64 px \(RuntimeError: no forward today\) and at 224 px .*HINT"):
        to_supernet(model, adapter="generic")


def test_generic_matches_timm_models_only():
    from lightning_elastic.adapters.generic import GenericAdapter

    assert GenericAdapter().matches(timm.create_model("resnet18", pretrained=False))
    assert not GenericAdapter().matches(nn.Sequential(nn.Linear(4, 4)))


def test_elastic_params_groupnorm_slices_and_exports():
    gn = nn.GroupNorm(4, 16)
    with torch.no_grad():
        gn.weight.uniform_()
    dim = ElasticDim("c", [8, 16], 16)
    op = ElasticParams.wrap(gn, {"weight": [(0, dim)], "bias": [(0, dim)]})
    x = torch.randn(2, 16, 3, 3)
    assert torch.equal(op(x), gn(x)) and op.num_channels == 16 and isinstance(op, nn.GroupNorm)
    dim.active = 8
    y = op(x[:, :8])
    assert op.num_channels == 8 and op.weight.shape == (8,)
    plain = op.export_module()
    assert type(plain) is nn.GroupNorm and plain.num_channels == 8 and torch.equal(plain(x[:, :8]), y)
    assert list(op.state_dict()) == ["weight", "bias"]


def test_grouped_convs_slice_the_same_channels_of_every_group():
    # ResNeXt: conv1 -> bn1 -> conv2 (groups=32) -> bn2 -> conv3; the dims count channels per group
    report = check_adapter(lambda: timm.create_model("seresnext26d_32x4d", pretrained=False, num_classes=5),
                           torch.randn(2, 3, 32, 32), num_configs=1, roundtrip=False, adapter="generic")
    net = report.supernet
    inner = net.space["layer1.0.conv1.width"]
    conv2 = net.model.layer1[0].conv2
    assert inner.full == conv2.in_channels // conv2.groups == 4 and inner.choices == (2, 3, 4)
    exported = net.export({**net.space.max_config(), inner.name: 2}, calibration_data="current")
    new = exported.layer1[0].conv2
    assert new.groups == 32 and new.in_channels == 64 and new.weight.shape[1] == 2


def test_tiny_vit_with_glu_mlp_heads_hidden_and_depth():
    # the GLU's chunk(2, dim=-1) splits fc1's output into equal pieces multiplied together: one hidden dim whose
    # fc1 rows are sliced in two segments (the negative chunk dim is saved unsigned by autograd)
    from functools import partial

    from timm.layers import GluMlp
    from timm.models.vision_transformer import VisionTransformer

    def factory():
        return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=5,
                                 mlp_layer=partial(GluMlp, gate_last=False), mlp_ratio=2.0)

    report = check_adapter(factory, torch.randn(2, 3, 32, 32), num_configs=2, adapter="generic", roundtrip=False)
    space = report.supernet.space
    assert space["blocks.0.attn.heads"].choices == (2, 3, 4)
    hidden = space["blocks.0.mlp.fc1.width"]
    assert hidden.full == 32 and report.supernet.model.blocks[0].mlp.fc1.out_axis.segments == 2
    assert space["blocks.depth"].choices == (1, 2, 3)
