"""Params and MACs from tables equal ``FlopCounterMode`` on the exported subnet, for every family, without a forward.

The reference is the model that ships: ``Supernet.export(cfg)`` (peft: merged), counted by one forward under
:func:`flop_counter` and by its ``parameters()``.
"""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from torch import nn

from lightning_elastic import ConfigError, SearchSpaceConfig, to_supernet
from lightning_elastic.search.costs import CostsFallbackWarning, count_costs, flop_counter
from tests._models import MLPBlock, TinyMLP, TinyMLPAdapter, tiny_resnet
from tests.adapters.hf import _tiny

IMAGE, TOKENS = torch.float32, torch.long


def shipped_costs(net, cfg, shape, dtype):
    """Params and MACs of the exported subnet, counted the slow, obvious way."""
    exported = net.export(cfg, calibration_data="current").eval()
    if hasattr(exported, "merge_and_unload"):  # peft: the merged model is what save_subnet ships
        exported = exported.merge_and_unload()
    if "resolution" in cfg:
        shape = (shape[0], cfg["resolution"], cfg["resolution"])
    x = torch.randn(1, *shape) if dtype.is_floating_point else torch.zeros(1, *shape, dtype=dtype)
    with flop_counter() as fc, torch.no_grad():
        exported(x)
    return {"params": float(sum(p.numel() for p in exported.parameters())), "macs": fc.get_total_flops() / 2}


FAMILIES = {
    "timm-resnet": (lambda: tiny_resnet(), dict(width=(0.5, 1.0), depth="auto", resolution=(24, 32)), (3, 32, 32),
                    IMAGE),
    "timm-mobilenetv3": (lambda: timm.create_model("mobilenetv3_small_050", num_classes=5),
                         dict(kernel=(3, 5), resolution=(32, 48)), (3, 48, 48), IMAGE),
    "timm-efficientnet-ofa-kernel": (lambda: timm.create_model("tinynet_e", num_classes=5),
                                     dict(kernel=(3, 5), kernel_transform=True, depth="auto", resolution=(24, 32)),
                                     (3, 32, 32), IMAGE),
    "timm-vit": (lambda: timm.create_model("test_vit", num_classes=5, img_size=32), dict(embed_dim=(0.5, 1.0)),
                 (3, 32, 32), IMAGE),
    "hf-bert": (_tiny._bert("BertForSequenceClassification"), dict(depth=(0.5, 1.0), embed_dim=(0.5, 1.0)), (7,),
                TOKENS),
    "hf-llama-gqa": (_tiny._decoder("LlamaForCausalLM", "LlamaConfig", tie_word_embeddings=True),
                     dict(depth=(0.5, 1.0), embed_dim=(0.5, 1.0)), (7,), TOKENS),
    "hf-vit": (_tiny._vit, dict(depth=(0.5, 1.0)), (3, 16, 16), IMAGE),
    "peft-lora-llama": (_tiny._peft(_tiny._decoder("LlamaForCausalLM", "LlamaConfig"), **_tiny.LLAMA_LORA),
                        dict(depth=(0.5, 1.0), rank=(0.5, 1.0)), (7,), TOKENS),
    "peft-lora-bert": (_tiny._peft(_tiny._bert("BertForSequenceClassification"), r=8,
                                   target_modules=["query", "value", "dense"]),
                       dict(depth=None, embed_dim=(0.5, 1.0)), (7,), TOKENS),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_costs_equal_flop_counter_on_the_exported_subnet(family):
    build, space, shape, dtype = FAMILIES[family]
    torch.manual_seed(0)
    net = to_supernet(build().eval(), SearchSpaceConfig(**space))
    gen = torch.Generator().manual_seed(1)
    configs = [net.max_config(), net.min_config(), net.sample(gen), net.sample(gen)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CostsFallbackWarning)  # the tables describe every built-in family
        got = [count_costs(net, cfg, shape, dtype) for cfg in configs]
    assert got == [shipped_costs(net, cfg, shape, dtype) for cfg in configs]
    assert got[1]["macs"] < got[0]["macs"] and got[1]["params"] < got[0]["params"]


def test_costs_are_priced_without_running_the_model_or_touching_the_rng():
    net = to_supernet(tiny_resnet(), SearchSpaceConfig(width=(0.5, 1.0), depth="auto"))
    gen = torch.Generator().manual_seed(0)
    configs = [net.sample(gen) for _ in range(20)]
    rng = torch.random.get_rng_state()
    first = count_costs(net, configs[0], (3, 32, 32))  # builds the tables (a few traced forwards)
    assert torch.equal(rng, torch.random.get_rng_state())  # training's random stream is left alone

    def refuse(*_):
        raise AssertionError("the model ran")

    handle = net.model.register_forward_pre_hook(refuse)
    try:
        priced = [count_costs(net, cfg, (3, 32, 32)) for cfg in configs]
    finally:
        handle.remove()
    assert priced[0] == first
    assert priced == [shipped_costs(net, cfg, (3, 32, 32), IMAGE) for cfg in configs[:3]] + priced[3:]


def test_a_subnet_has_the_same_macs_on_every_device():
    """``FlopCounterMode`` alone counts no attention on CPU (its SDPA kernel has no formula) but does on meta/CUDA."""
    build = _tiny._decoder("LlamaForCausalLM", "LlamaConfig")
    space = SearchSpaceConfig(depth=(0.5, 1.0), embed_dim=(0.5, 1.0), importance=None)
    torch.manual_seed(0)
    cpu = to_supernet(build(), space)
    with torch.device("meta"):
        meta = to_supernet(build(), space)
    for cfg in (cpu.max_config(), cpu.min_config()):
        assert count_costs(cpu, cfg, (7,), TOKENS) == count_costs(meta, cfg, (7,), TOKENS)


class LoopingBlock(MLPBlock):
    """Runs one extra matmul per 8 hidden units: how many ops run depends on a dim, which no table describes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        for _ in range(h.shape[-1] // 8):
            h = h @ torch.full((h.shape[-1], h.shape[-1]), 1.0 / h.shape[-1])
        return x + self.fc2(h)


def test_a_model_the_tables_cannot_describe_is_counted_exactly_by_tracing_with_one_warning():
    torch.manual_seed(0)
    model = TinyMLP(hidden=16)
    model.blocks = nn.Sequential(*[LoopingBlock(8, 16) for _ in range(3)])
    net = to_supernet(model, SearchSpaceConfig(width=(0.5, 1.0), depth=(2, 3)), adapter=TinyMLPAdapter())
    gen = torch.Generator().manual_seed(0)
    configs = [net.max_config(), net.min_config(), net.sample(gen)]
    with pytest.warns(CostsFallbackWarning, match=r"counted with a traced forward per config .* because .*HINT"):
        first = count_costs(net, configs[0], (6,))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CostsFallbackWarning)  # said once
        rest = [count_costs(net, cfg, (6,)) for cfg in configs[1:]]
    assert [first, *rest] == [shipped_costs(net, cfg, (6,), IMAGE) for cfg in configs]


def test_an_invalid_config_is_refused():
    net = to_supernet(tiny_resnet(), SearchSpaceConfig(width=(0.5, 1.0), depth=None))
    count_costs(net, net.max_config(), (3, 32, 32))
    bad = {**net.max_config(), "layer1.0.width": 5}
    with pytest.raises(ConfigError, match=r"layer1.0.width=5 not in choices .*HINT"):
        count_costs(net, bad, (3, 32, 32))
    with pytest.raises(ConfigError, match=r"missing keys \['layer1.0.width'\].*HINT"):
        count_costs(net, {k: v for k, v in net.max_config().items() if k != "layer1.0.width"}, (3, 32, 32))
