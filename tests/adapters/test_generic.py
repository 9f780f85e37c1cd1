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


def test_grouped_conv_and_model_output_are_fixed():
    graph = trace_channels(timm.create_model("regnetx_002", pretrained=False), torch.randn(2, 3, 32, 32))
    assert any("grouped convolution (groups=" in r for r in _space_of(graph, "s1.b1.conv2.conv").fixed)
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
