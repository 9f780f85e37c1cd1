"""An exported model is plain (DESIGN "An exported module is plain"): every module's ``__dict__`` holds exactly what a
freshly built module of its class holds, nothing points back into the supernet, and ``torch.save(exported)`` is
about the size of its state_dict (before, axes and dims kept the supernet's full-size tensors reachable)."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import timm
import torch
from torch import nn

from lightning_elastic import SearchSpaceConfig, to_supernet
from tests._models import tiny_resnet
from tests.adapters.hf._tiny import TEST_CASES, image_input, output, token_input


def _timm(name: str, **kwargs) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=5, **kwargs)


def _hf(case_id: str) -> Callable[[], nn.Module]:
    return next(c.build for c in TEST_CASES if c.id == case_id)


def _image(px: int) -> Callable[[nn.Module], object]:
    return lambda m: m(torch.randn(2, 3, px, px))


def _hf_forward(inputs: Callable) -> Callable[[nn.Module], object]:
    return lambda m: output(m, inputs())


# id, builder, space, forward: one per family (and per op the family brings: kernel transforms, Conv2dSame,
# LayerScale and the ViT position-embedding hook, fused Phi-3 attention with per-layer configs, peft LoRA)
FAMILIES = [
    ("timm-resnet", lambda: tiny_resnet("bottleneck", layers=(3, 2, 2, 2)), {}, _image(32)),
    ("timm-mobilenetv3", _timm("mobilenetv3_small_050"), dict(kernel_transform=True), _image(32)),
    ("timm-efficientnet-same", _timm("tf_mobilenetv3_small_minimal_100"), {}, _image(32)),
    ("timm-vit", _timm("vit_small_patch16_224", img_size=32, depth=3, embed_dim=48, num_heads=3, init_values=1e-5,
                       patch_size=8), dict(embed_dim=(0.5, 1.0)), _image(32)),
    ("hf-bert", _hf("bert"), dict(depth=(0.5, 1.0), embed_dim=(0.5, 1.0)), _hf_forward(token_input)),
    ("hf-llama", _hf("llama-gqa"), dict(depth=(0.5, 1.0), embed_dim=(0.5, 1.0)), _hf_forward(token_input)),
    ("hf-phi3-fused", _hf("phi3-fused"), dict(depth=None), _hf_forward(token_input)),
    ("hf-vit", _hf("vit"), dict(depth=(0.5, 1.0)), _hf_forward(image_input)),
    ("peft-lora", _hf("peft-llama"), dict(depth=None), _hf_forward(token_input)),
]


def _heterogeneous(net) -> dict[str, int]:
    """The min config with the first elastic per-layer dim at full size: layers differ (per-layer configs stay)."""
    cfg = net.min_config()
    per_layer = next((d for d in net.space if d.kind in ("heads", "width") and d.name.startswith(("layers.0",
                                                                                                 "blocks.0"))), None)
    if per_layer is not None:
        cfg[per_layer.name] = per_layer.full
    return cfg


def assert_plain(exported: nn.Module, fresh: nn.Module) -> None:
    reference = dict(fresh.named_modules())
    for name, module in exported.named_modules():
        ref = reference.get(name)
        assert ref is not None and type(ref) is type(module), name
        assert set(module.__dict__) == set(ref.__dict__), (name, set(module.__dict__) ^ set(ref.__dict__))


@pytest.mark.parametrize(("build", "space", "forward"), [pytest.param(b, s, f, id=i) for i, b, s, f in FAMILIES])
def test_exported_modules_hold_what_fresh_ones_hold(build, space, forward):
    torch.manual_seed(0)
    model = build().eval()
    fresh = build()
    net = to_supernet(model, SearchSpaceConfig(**space))
    forward(model)  # a forward before export: lazily built per-select state must not leak either
    for cfg in (net.min_config(), _heterogeneous(net)):
        net.select(cfg)
        with torch.no_grad():
            forward(model)
        exported = net.export(cfg, calibration_data="current")
        assert_plain(exported, fresh)
        with torch.no_grad():
            forward(exported)


def _size(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return len(buf.getvalue())


def test_saved_export_is_the_size_of_its_state_dict():
    # a ResNet-50 layout (Bottleneck 3-4-6-3) at a quarter of the width
    model = tiny_resnet("bottleneck", layers=(3, 4, 6, 3), channels=(32, 64, 128, 256))
    net = to_supernet(model, SearchSpaceConfig(width=(0.5, 1.0)))
    exported = net.export(net.min_config(), calibration_data="current")
    state = _size(exported.state_dict())
    assert state < 0.75 * _size(model.state_dict())  # the subnet really is smaller
    assert _size(exported) < 1.05 * state + 200_000  # module structure only on top of the tensors


CALLS: list[int] = []


def _users_hook(*args) -> None:
    CALLS.append(1)


def test_lightning_elastic_hooks_stay_with_the_supernet():
    from lightning_elastic.training.tap import ModelTap

    model = tiny_resnet().eval()
    net = to_supernet(model, SearchSpaceConfig(width=(0.5, 1.0), resolution=(16, 32)))
    tap = ModelTap(net)  # as during ElasticTraining: resizes inputs and captures outputs
    CALLS.clear()
    model.register_forward_hook(_users_hook)  # the user's own hook travels with the model
    exported = net.export(net.min_config(), calibration_data="current")
    assert not exported._forward_pre_hooks and not exported._forward_pre_hooks_with_kwargs
    assert len(exported._forward_hooks) == 1 and not exported._forward_hooks_with_kwargs
    assert _size(exported) < 1.05 * _size(exported.state_dict()) + 200_000  # no copy of the tap or the supernet
    exported(torch.randn(1, 3, 16, 16))
    assert CALLS == [1]
    tap.capturing = True
    model(torch.randn(1, 3, 32, 32))  # the supernet keeps its hooks, in order
    assert tap.output is not None and CALLS == [1, 1]
    assert len(model._forward_pre_hooks) == 1 and len(model._forward_hooks) == 2
