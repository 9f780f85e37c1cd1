from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_elastic import (
    ConfigError,
    ConversionError,
    ExportError,
    SearchSpaceConfig,
    find_supernet,
    get_supernet,
    to_supernet,
)
from lightning_elastic.adapters.base import ConversionPlan
from lightning_elastic.ops.base import ElasticOp
from lightning_elastic.ops.depth import ElasticSequential
from lightning_elastic.ops.linear import ElasticLinear
from tests._models import TinyMLP, TinyMLPAdapter, assert_same_state, snapshot


def convert(model=None, adapter=None, **kwargs):
    model = model if model is not None else TinyMLP()
    return model, to_supernet(model, SearchSpaceConfig(**kwargs), adapter=adapter or TinyMLPAdapter())


def test_max_config_equals_original_and_keys_unchanged():
    model = TinyMLP()
    ref = copy.deepcopy(model)
    x = torch.randn(5, 6)
    keys = list(model.state_dict())
    _, net = convert(model)
    assert list(model.state_dict()) == keys
    assert isinstance(model.blocks, ElasticSequential) and isinstance(model.blocks[0].fc1, ElasticLinear)
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-6)
    assert net.space.names() == ["blocks.depth", "blocks.0.hidden", "blocks.1.hidden", "blocks.2.hidden"]
    assert net.space.num_subnets == 3 * 3**3
    # a checkpoint of the original loads into the supernet (same names, same shapes)
    model.load_state_dict(ref.state_dict())


def test_idempotent_and_handles():
    model, net = convert()
    assert to_supernet(model, SearchSpaceConfig(), adapter=TinyMLPAdapter()) is net
    assert get_supernet(model) is net and get_supernet(TinyMLP()) is None
    wrapper = nn.Sequential(nn.Identity(), model)
    assert find_supernet(wrapper) == ("1", net) and find_supernet(nn.Linear(1, 1)) is None
    with pytest.raises(ConfigError, match=r"already a supernet with a different space config.*HINT"):
        to_supernet(model, SearchSpaceConfig(width=(0.5, 1.0)), adapter=TinyMLPAdapter())
    assert "TinyMLP" in repr(net) and "test-tiny-mlp" in repr(net)
    x = torch.randn(2, 6)
    assert torch.equal(net(x), model(x))


def test_argument_errors():
    with pytest.raises(ConfigError, match=r"either `config` or SearchSpaceConfig keyword arguments.*\['width'\].*HINT"):
        to_supernet(TinyMLP(), SearchSpaceConfig(), width=(0.5, 1.0))
    with pytest.raises(ConfigError, match=r"`config` must be a SearchSpaceConfig, got dict.*HINT"):
        to_supernet(TinyMLP(), {"width": (0.5, 1.0)})
    with pytest.raises(ConversionError, match=r"`model` must be a torch.nn.Module, got str.*HINT"):
        to_supernet("resnet18")
    with pytest.raises(ConversionError, match=r"leaves no elastic dimension on this TinyMLP.*HINT"):
        convert(width=None, depth=None)


def test_overrides_exclude_and_resolution():
    model, net = convert(overrides={"blocks.0.hidden": [2, 8]}, exclude=["blocks.1.*", "blocks.depth"],
                         resolution=(32, 48))
    assert net.space["blocks.0.hidden"].choices == (2, 8, 16)
    assert "blocks.1.hidden" not in net.space and "blocks.depth" not in net.space
    assert net.space["resolution"].choices == (32, 48)
    assert net.resolution({**net.max_config(), "resolution": 32}) == 32 and net.resolution() == 48


def test_unmatched_override_raises_before_any_change():
    model = TinyMLP()
    snap = snapshot(model)
    with pytest.raises(ConfigError, match=r"patterns \['nope\.\*', 'zz'\] match no dimension.*blocks\.depth.*HINT"):
        convert(model, overrides={"nope.*": [2]}, exclude=["zz"])
    assert_same_state(model, snap)
    assert get_supernet(model) is None and type(model.blocks) is nn.Sequential
    with pytest.raises(ConfigError, match=r"`overrides\['blocks\.0\.hidden'\]` has \[32\] above the full size 16.*HINT"):
        convert(model, overrides={"blocks.0.hidden": [4, 32]})
    assert type(model.blocks[0].fc1) is nn.Linear


def test_failing_factory_leaves_model_untouched():
    model = TinyMLP()
    snap = snapshot(model)
    modules = dict(model.named_modules())
    with pytest.raises(RuntimeError, match="factory failed on purpose"):
        convert(model, adapter=TinyMLPAdapter(fail_factory=True))
    assert dict(model.named_modules()) == modules and all(type(m) is not ElasticLinear for m in model.modules())
    assert_same_state(model, snap)
    assert get_supernet(model) is None


def test_failing_importance_leaves_model_untouched():
    model = TinyMLP()
    snap = snapshot(model)
    with pytest.raises(ConfigError, match="`importance` returned"):
        convert(model, importance=lambda group, n: torch.zeros(n + 1))
    assert_same_state(model, snap)
    assert type(model.blocks) is nn.Sequential


class BadPlanAdapter(TinyMLPAdapter):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def plan(self, model, config) -> ConversionPlan:
        plan = super().plan(model, config)
        if self.mode == "twice":
            plan.replace("blocks.0.fc1", lambda m: m)
        elif self.mode == "missing":
            plan.replace("blocks.7", lambda m: m)
        elif self.mode == "after":
            plan.after_apply.append(lambda: (_ for _ in ()).throw(RuntimeError("after_apply broke")))
        elif self.mode == "leftover":
            class Sticky(ElasticLinear):
                def export_module(self):
                    return self

            plan.replacements = [(n, f) for n, f in plan.replacements if n != "head"]
            plan.replace("head", lambda m: Sticky.from_module(m))
        return plan


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        ("twice", r"planned two replacements for module 'blocks\.0\.fc1'.*HINT"),
        ("missing", r"planned a replacement for missing module 'blocks\.7'.*HINT"),
        ("after", r"conversion failed and was rolled back: after_apply broke.*HINT"),
    ],
)
def test_bad_plans_are_refused_and_rolled_back(mode, match):
    model = TinyMLP()
    snap = snapshot(model)
    modules = dict(model.named_modules())
    with pytest.raises(ConversionError, match=match):
        convert(model, adapter=BadPlanAdapter(mode))
    assert dict(model.named_modules()) == modules
    assert_same_state(model, snap)


def test_export_leftover_error():
    _, net = convert(adapter=BadPlanAdapter("leftover"))
    with pytest.raises(ExportError, match=r"export left elastic modules behind: \['head'\].*HINT"):
        net.export()


def test_select_validates_whole_config():
    model, net = convert()
    with pytest.raises(ConfigError) as err:
        net.select({"blocks.depth": 5, "blocks.0.hidden": 3, "extra": 1})
    msg = str(err.value)
    assert "unknown keys ['extra']" in msg and "missing keys ['blocks.1.hidden', 'blocks.2.hidden']" in msg
    assert "blocks.depth=5 not in choices [1, 2, 3]" in msg and "blocks.0.hidden=3 not in choices" in msg
    assert net.active_config == net.max_config()  # nothing applied
    full = net.select({"blocks.depth": 1}, strict=False)
    assert full == {**net.max_config(), "blocks.depth": 1} == net.active_config


def test_subnet_context_restores_even_on_error():
    model, net = convert()
    net.select(net.min_config())
    with net.subnet(net.max_config()) as cfg:
        assert cfg == net.active_config == net.max_config()
    assert net.active_config == net.min_config()
    with pytest.raises(KeyError):
        with net.subnet({"blocks.depth": 2}, strict=False):
            raise KeyError("inside")
    assert net.active_config == net.min_config()


def test_export_equals_supernet_and_leaves_it_unchanged():
    model, net = convert()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6)
    for cfg in [net.min_config(), net.max_config()] + [net.sample(g) for _ in range(6)]:
        snap = snapshot(model)
        before = net.active_config
        exported = net.export(cfg)
        assert net.active_config == before
        assert_same_state(model, snap)
        assert all(not isinstance(m, ElasticOp | ElasticSequential) for m in exported.modules())
        assert type(exported) is TinyMLP and get_supernet(exported) is None
        with net.subnet(cfg):
            expected = model(x)
        torch.testing.assert_close(exported(x), expected, rtol=0, atol=1e-6)
        n_hidden = sum(cfg[f"blocks.{i}.hidden"] for i in range(cfg["blocks.depth"]))
        dim, d_in, d_out = 8, 6, 4
        analytic = d_in * dim + dim + cfg["blocks.depth"] * dim + n_hidden * (2 * dim + 1) + dim * d_out + d_out
        assert sum(p.numel() for p in exported.parameters()) == analytic


def test_state_info_is_json():
    import json

    _, net = convert()
    info = json.loads(json.dumps(net.state_info()))
    assert info["adapter"] == "test-tiny-mlp" and info["signature"] == net.signature()


def test_export_after_load_state_dict():
    # a no-grad forward at a subnet caches sliced views; load_state_dict (a checkpoint restore) then makes those views
    # ones that deepcopy refuses, and export deep-copies the model: it must drop the caches first
    model, net = convert()
    x = torch.randn(4, 6)
    cfg = net.min_config()
    with torch.no_grad(), net.subnet(cfg):
        expected = model(x)
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    exported = net.export(cfg)
    torch.testing.assert_close(exported(x), expected, rtol=0, atol=1e-6)
