"""timm VisionTransformer adapter: real timm models (pretrained=False, tiny sizes via kwargs)."""

from __future__ import annotations

import copy
import functools
import json

import pytest
import timm
import torch
from torch import nn

from lightning_elastic import (
    ConfigError,
    ConversionError,
    ExportError,
    SearchSpaceConfig,
    get_supernet,
    load_subnet,
    to_supernet,
)
from lightning_elastic.adapters.timm_vit import TimmViTAdapter
from lightning_elastic.ops.depth import ElasticSequential
from lightning_elastic.testing import check_adapter

NUM_CLASSES = 5
# name, create_model kwargs (tiny), space: together they cover DeiT distillation, avg pooling without a class token,
# register tokens, no_embed_class, LayerScale, RmsNorm + patch norm + SwiGLU (AIMv2), SwiGLUPacked/GluMlp (DINOv2),
# CLIP pre-norm with norms inside attention and MLP
CASES = [
    ("vit_tiny_patch16_224", dict(img_size=32, depth=3), dict(embed_dim=(0.5, 0.75, 1.0))),
    ("deit_tiny_distilled_patch16_224", dict(img_size=32, depth=2), dict(embed_dim=(96, 192))),
    ("vit_small_patch16_224", dict(img_size=32, depth=2, embed_dim=96, num_heads=3, class_token=False,
                                   global_pool="avg", reg_tokens=2, init_values=1e-5, no_embed_class=True),
     dict(embed_dim=(0.5, 1.0), heads=(1, 2, 3))),
    ("aimv2_large_patch14_224", dict(img_size=28, embed_dim=64, depth=2, num_heads=2), dict(embed_dim=(32, 48, 64))),
    ("vit_giant_patch14_reg4_dinov2", dict(img_size=28, embed_dim=64, depth=2, num_heads=2, mlp_ratio=4.0),
     dict(embed_dim=(0.5, 1.0), width=(0.5, 1.0))),
    ("vit_base_patch16_clip_224", dict(img_size=32, embed_dim=64, depth=2, num_heads=2, scale_attn_norm=True,
                                       scale_mlp_norm=True), dict(embed_dim=(0.5, 1.0))),
]
IDS = [c[0] for c in CASES]


def create(name: str, kwargs: dict) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs).eval()
    with torch.no_grad():  # timm initialises norms, biases and LayerScale to constants: a missed permutation of
        for p in model.parameters():  # those would go unnoticed, so make every tensor channel-dependent
            p.add_(torch.randn_like(p) * 0.05)
    return model


def image(kwargs: dict, batch: int = 2) -> torch.Tensor:
    size = kwargs["img_size"]
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def facts(model: nn.Module) -> dict:
    """Static facts of the original model that the analytic parameter count needs."""
    b = model.blocks[0]
    mlp = b.mlp
    kind = "swiglu" if hasattr(mlp, "fc1_x") else ("glu" if type(mlp).__name__ == "GluMlp" else "mlp")
    return {
        "in_chans": 3, "patch": model.patch_embed.patch_size[0], "num_patches": model.patch_embed.num_patches,
        "pos_tokens": model.pos_embed.shape[1] - model.patch_embed.num_patches,
        "tokens": sum(getattr(model, t, None) is not None for t in ("cls_token", "dist_token")) + model.num_reg_tokens,
        "rms": "Rms" in type(b.norm1).__name__, "patch_norm": not isinstance(model.patch_embed.norm, nn.Identity),
        "patch_bias": model.patch_embed.proj.bias is not None, "qkv_bias": b.attn.qkv.bias is not None,
        "proj_bias": b.attn.proj.bias is not None, "mlp_bias": mlp.fc2.bias is not None,
        "head_dim": b.attn.head_dim, "layer_scale": hasattr(b.ls1, "gamma"), "mlp_kind": kind,
        "heads": (2 if hasattr(model, "head_dist") else 1), "full_embed": model.embed_dim, "depth": len(model.blocks),
        "full_heads": b.attn.num_heads, "full_hidden": mlp.fc2.in_features,
        "pre_norm": not isinstance(model.norm_pre, nn.Identity), "attn_norm": not isinstance(b.attn.norm, nn.Identity),
        "mlp_norm": not isinstance(mlp.norm, nn.Identity),
    }


def expected_params(f: dict, cfg: dict) -> int:
    """Parameters of the subnet ``cfg`` computed from first principles."""
    e = cfg.get("embed_dim", f["full_embed"])
    norm = e if f["rms"] else 2 * e
    total = f["in_chans"] * f["patch"] ** 2 * e + e * f["patch_bias"] + norm * f["patch_norm"]
    total += f["tokens"] * e + (f["num_patches"] + f["pos_tokens"]) * e + norm * f["pre_norm"]
    for i in range(cfg.get("depth", f["depth"])):
        a = cfg.get(f"blocks.{i}.attn.heads", f["full_heads"]) * f["head_dim"]
        m = cfg.get(f"blocks.{i}.mlp.hidden", f["full_hidden"])
        total += 2 * norm + 3 * a * e + 3 * a * f["qkv_bias"] + a * e + e * f["proj_bias"] + 2 * e * f["layer_scale"]
        fc1_out = {"mlp": m, "glu": 2 * m, "swiglu": 2 * m}[f["mlp_kind"]]
        total += e * fc1_out + fc1_out * f["mlp_bias"] + m * e + e * f["mlp_bias"]
        total += 2 * a * f["attn_norm"] + 2 * m * f["mlp_norm"]
    return total + norm + f["heads"] * (e * NUM_CLASSES + NUM_CLASSES)


@functools.cache
def converted(idx: int):
    name, kwargs, space = CASES[idx]
    model = create(name, kwargs)
    f = facts(model)
    net = to_supernet(model, SearchSpaceConfig(**space))
    return model, net, f, image(kwargs)


@pytest.mark.parametrize("idx", range(len(CASES)), ids=IDS)
def test_contract(idx):
    # the adapter contract (8 random configs per case, 48 in all, and the min config), then the family's own facts
    name, kwargs, space = CASES[idx]
    x = image(kwargs)
    report = check_adapter(lambda: create(name, kwargs), x, config=space, num_configs=8, roundtrip=idx in (1, 3))
    net, f = report.supernet, facts(report.reference)
    model = net.model
    assert "embed_dim" in net.space and isinstance(model.blocks, ElasticSequential)
    with torch.no_grad(), net.subnet(net.min_config()):
        assert not torch.allclose(model(x), report.reference(x), rtol=1e-2, atol=1e-9)  # the min is really smaller
    assert to_supernet(model, SearchSpaceConfig(**space)) is net  # idempotent
    for cfg, n in zip(report.configs, report.num_params, strict=True):
        assert n == expected_params(f, cfg), cfg
        exported = net.export(cfg)
        assert "_pos_embed" not in exported.__dict__ and "_pos_embed" in model.__dict__
        e = cfg["embed_dim"]
        assert exported.embed_dim == exported.num_features == exported.head_hidden_size == e
        assert exported.head.in_features == e and exported.pos_embed.shape[-1] == e
        assert len(exported.blocks) == cfg.get("depth", f["depth"]) == len(exported.feature_info)
        for i, block in enumerate(exported.blocks):
            heads = cfg.get(f"blocks.{i}.attn.heads", f["full_heads"])
            assert block.attn.num_heads == heads and block.attn.attn_dim == heads * f["head_dim"]
            assert block.attn.qkv.weight.shape == (3 * heads * f["head_dim"], e)


def test_gradients_outside_active_slice_are_zero():
    name, kwargs, _ = CASES[2]  # LayerScale, register tokens, avg pool + fc_norm
    model = create(name, kwargs).train()
    net = to_supernet(model, embed_dim=(0.5, 1.0), heads=(1, 2, 3), width=(0.5, 1.0), depth=(1, 2))
    cfg = {"depth": 1, "embed_dim": 48, "blocks.0.attn.heads": 2, "blocks.0.mlp.hidden": 192,
           "blocks.1.attn.heads": 1, "blocks.1.mlp.hidden": 192}
    net.select(cfg)
    model(image(kwargs)).square().sum().backward()
    e, a, m = 48, 2 * 32, 192
    b = model.blocks[0]
    qkv = b.attn.qkv.weight.grad.view(3, 96, 96)
    outside = [model.pos_embed.grad[..., e:], model.reg_token.grad[..., e:], model.patch_embed.proj.weight.grad[e:],
               qkv[:, a:], qkv[:, :, e:], b.attn.proj.weight.grad[:, a:], b.attn.proj.weight.grad[e:],
               b.mlp.fc1.weight.grad[m:], b.mlp.fc2.weight.grad[:, m:], b.ls1.gamma.grad[e:], b.norm1.weight.grad[e:],
               model.fc_norm.weight.grad[e:], model.head.weight.grad[:, e:]]
    inside = [model.pos_embed.grad[..., :e], qkv[:, :a, :e], b.mlp.fc1.weight.grad[:m, :e], b.ls2.gamma.grad[:e],
              model.head.weight.grad[:, :e]]
    assert all(torch.count_nonzero(g) == 0 for g in outside)
    assert all(torch.count_nonzero(g) > 0 for g in inside)
    assert all(p.grad is None for p in model.blocks._modules["1"].parameters())  # dropped block


def test_heads_stay_in_sync_and_deepcopy_rebinds():
    model, net, _, _ = converted(0)
    cfg = {**net.max_config(), "blocks.1.attn.heads": 1}
    with net.subnet(cfg):
        assert model.blocks[1].attn.num_heads == 1 and model.blocks[1].attn.attn_dim == 64
        twin = copy.deepcopy(model)  # e.g. an EMA teacher: its dims must drive its own modules
    assert model.blocks[1].attn.num_heads == 3
    get_supernet(twin).select(net.min_config())
    assert model.blocks[0].attn.num_heads == 3 and twin.blocks[0].attn.num_heads == 1
    assert twin.__dict__["_pos_embed"].args[0] is twin


def test_default_space_is_autoformer_like_and_configs_survive_json():
    model = create("vit_tiny_patch16_224", dict(img_size=32, depth=4))
    net = to_supernet(model)
    space = net.space.describe()
    assert space["depth"] == [2, 3, 4] and "embed_dim" not in space
    assert space["blocks.0.attn.heads"] == [1, 2, 3] and space["blocks.3.mlp.hidden"] == [576, 672, 768]
    cfg = net.sample(torch.Generator().manual_seed(3))
    back = json.loads(json.dumps(cfg))
    assert back == cfg and net.select(back) == cfg
    config = SearchSpaceConfig.from_dict(json.loads(json.dumps(net.config.to_dict())))
    twin = to_supernet(create("vit_tiny_patch16_224", dict(img_size=32, depth=4)), config)
    assert twin.signature() == net.signature()


def test_autoformer_space_is_expressible():
    # AutoFormer-T scaled down by 3 in width: embed {64, 72, 80}, mlp ratio {3.5, 4}, heads {3, 4}, depth {12, 13, 14}
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, embed_dim=80, depth=14,
                              num_heads=4)
    net = to_supernet(model, depth=(12, 13, 14), heads=(3, 4), mlp_ratio=(3.5, 4.0), embed_dim=(64, 72, 80),
                      importance=None)
    d = net.space.describe()
    assert d["depth"] == [12, 13, 14] and d["embed_dim"] == [64, 72, 80]
    assert d["blocks.13.attn.heads"] == [3, 4] and d["blocks.0.mlp.hidden"] == [280, 320]


def test_overrides_and_exclude_by_glob():
    model = create("vit_tiny_patch16_224", dict(img_size=32, depth=2))
    net = to_supernet(model, embed_dim=(0.5, 1.0), overrides={"blocks.*.mlp.hidden": [384]},
                      exclude=["embed_dim", "blocks.1.attn.heads"])
    d = net.space.describe()
    assert d["blocks.0.mlp.hidden"] == d["blocks.1.mlp.hidden"] == [384, 768]
    assert "embed_dim" not in d and "blocks.1.attn.heads" not in d


def test_homogeneous_export_is_what_timm_builds():
    model, net, _, x = converted(0)
    cfg = {k: min(v) if k.endswith("hidden") else max(v) for k, v in net.space.describe().items()}
    exported = net.export(cfg)
    args = timm.models.get_model_args(exported)
    assert args["mlp_ratio"] == 3.0 and args["depth"] == 3 and args["embed_dim"] == 192
    rebuilt = timm.create_model("vit_tiny_patch16_224", pretrained=False, **args)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in exported.state_dict().items()}


# -- errors: each message is checked, and a failed conversion leaves the model untouched -------------------------
def _snapshot(model: nn.Module):
    return ([type(m) for m in model.modules()], {k: v.clone() for k, v in model.state_dict().items()},
            dict(model.__dict__))


def _assert_untouched(model: nn.Module, snap) -> None:
    types, state, attrs = snap
    assert [type(m) for m in model.modules()] == types and get_supernet(model) is None
    assert "_pos_embed" not in model.__dict__ and set(model.__dict__) == set(attrs)
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())


def _vit(**kwargs) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    base = dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3)
    return VisionTransformer(**{**base, **kwargs})


def test_error_unsupported_block():
    from timm.models.vision_transformer import ResPostBlock

    model = _vit(block_fn=ResPostBlock)
    snap = _snapshot(model)
    with pytest.raises(ConversionError, match=r"`blocks.0` is a ResPostBlock; .*supports the pre-norm timm `Block`.*HINT"):
        to_supernet(model, adapter="timm-vit")
    _assert_untouched(model, snap)


def test_error_unsupported_attention():
    from timm.layers.attention import Attention

    class MyAttention(Attention):
        pass

    model = _vit(attn_layer=MyAttention)
    with pytest.raises(ConversionError, match=r"`blocks.0.attn` is a MyAttention; supported: .*HINT"):
        to_supernet(model, adapter="timm-vit")


def test_error_unsupported_mlp_leaves_model_untouched():
    from timm.layers import GatedMlp

    model = _vit()
    model.blocks[1].mlp = GatedMlp(32, 64)  # the first block converts fine, the second cannot
    snap = _snapshot(model)
    with pytest.raises(ConversionError, match=r"`blocks.1.mlp` is a GatedMlp; supported: Mlp, GluMlp.*HINT"):
        to_supernet(model, adapter="timm-vit", embed_dim=(16, 32))
    _assert_untouched(model, snap)


def test_error_mlp_ratio_above_full():
    model = _vit()
    snap = _snapshot(model)
    with pytest.raises(ConfigError, match=r"`mlp_ratio` values \[5.0\] give MLP hidden sizes \[160\] above the full "
                                          r"hidden 128 .*ratios must be <= 4.*HINT"):
        to_supernet(model, mlp_ratio=(3.0, 5.0))
    _assert_untouched(model, snap)


def test_error_embed_dim_with_attention_pool():
    model = _vit(global_pool="map")
    with pytest.raises(ConversionError, match=r"`embed_dim`=\(0.5, 1.0\) asks for an elastic embed dim, impossible "
                                              r"on this model: global_pool='map' uses an attention-pool head.*HINT"):
        to_supernet(model, adapter="timm-vit", embed_dim=(0.5, 1.0))
    with pytest.raises(ConversionError, match=r"an `overrides` entry for embed_dim asks .*HINT"):
        to_supernet(model, adapter="timm-vit", overrides={"embed_dim": [16]})
    net = to_supernet(model, adapter="timm-vit")  # the other dims still work
    assert "embed_dim" not in net.space and "depth" in net.space


def test_error_empty_blocks():
    with pytest.raises(ConversionError, match=r"`model.blocks` is Sequential with no blocks.*HINT"):
        to_supernet(_vit(depth=0))


def test_error_rebuild_without_architecture(tmp_path):
    net = to_supernet(_vit())  # built from the class: no timm model name recorded
    net.save_subnet(tmp_path / "sub", net.min_config())
    with pytest.raises(ExportError, match=r"`meta\['architecture'\]` is None.*HINT"):
        load_subnet(tmp_path / "sub")
    with pytest.raises(ExportError, match=r"records no timm model name"):
        TimmViTAdapter().build_original({"architecture": ""})
