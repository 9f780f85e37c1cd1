"""peft LoRA supernets: elastic ranks plus elastic widths of the frozen base (LoNAS / Shears)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lightning_elastic import ConfigError, ConversionError, SearchSpaceConfig, load_subnet, to_supernet
from tests.adapters.hf._tiny import (
    LLAMA_LORA,
    _decoder,
    _peft,
    _phi3,
    output,
    token_input,
)

LLAMA = _decoder("LlamaForCausalLM", "LlamaConfig")


def test_rank_dims_and_frozen_base():
    model = _peft(LLAMA, **LLAMA_LORA)()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    net = to_supernet(model, SearchSpaceConfig(depth=None, rank=[8, 6, 4]))
    assert net.space["model.layers.0.self_attn.q_proj.rank"].choices == (4, 6, 8)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    assert all("lora_" in n for n in trainable)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(layer).__module__.startswith("peft")  # peft's layer class is kept, only inner Linears swapped
    assert type(layer.lora_A["default"]).__name__ == "ElasticLinear"


def _rank_only_cfg(net):
    return {**net.max_config(), **{k: v for k, v in net.min_config().items() if k.endswith(".rank")}}


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_adapter_folder_loads_on_original_base(tmp_path, rslora):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    base = LLAMA().eval()
    pristine = copy.deepcopy(base)
    model = get_peft_model(base, LoraConfig(**LLAMA_LORA, use_rslora=rslora)).eval()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    net = to_supernet(model, SearchSpaceConfig(depth=None))  # base dims exist and are importance-permuted
    cfg = _rank_only_cfg(net)
    net.save_subnet(tmp_path, cfg)
    adapter_cfg = (tmp_path / "peft_adapter" / "adapter_config.json").read_text()
    assert '"rank_pattern"' in adapter_cfg and '"model.layers.0.self_attn.q_proj": 4' in adapter_cfg
    plain = PeftModel.from_pretrained(pristine, tmp_path / "peft_adapter").eval()
    net.select(cfg)
    x = token_input()
    with torch.no_grad():
        torch.testing.assert_close(output(plain, x), output(model, x), atol=1e-5, rtol=1e-4)


def test_merged_export_is_native_and_smaller(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model = _peft(LLAMA, **LLAMA_LORA)().eval()
    net = to_supernet(model, SearchSpaceConfig(depth=None, heads=None))
    cfg = net.min_config()
    net.save_subnet(tmp_path, cfg)
    assert not (tmp_path / "peft_adapter").exists()  # the base is narrowed: only the merged model
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(plain) is LlamaForCausalLM and plain.config.intermediate_size == 32
    assert type(load_subnet(tmp_path)) is LlamaForCausalLM
    net.select(cfg)
    x = token_input()
    with torch.no_grad():
        torch.testing.assert_close(output(plain, x), output(model, x), atol=1e-5, rtol=1e-4)


def test_rank_above_r_raises():
    with pytest.raises(ConfigError, match=r"`rank` has \[16\] above the LoRA rank r=8.*HINT"):
        to_supernet(_peft(LLAMA, **LLAMA_LORA)(), SearchSpaceConfig(rank=[16, 8, 4]))


def test_rank_override_above_r_raises():
    with pytest.raises(ConfigError, match=r"above the full size 8.*HINT"):
        to_supernet(_peft(LLAMA, **LLAMA_LORA)(), SearchSpaceConfig(overrides={"*.q_proj.rank": [12, 8]}))


def test_lora_on_uncovered_module_raises():
    model = _peft(LLAMA, r=4, target_modules=["q_proj", "embed_tokens"])()
    with pytest.raises(ConversionError, match=r"does not cover.*embed_tokens.*HINT: restrict `target_modules`"):
        to_supernet(model)
    assert not any(type(m).__name__.startswith("Elastic") for m in model.modules())


def test_dora_raises():
    model = _peft(LLAMA, r=4, target_modules=["q_proj"], use_dora=True)()
    with pytest.raises(ConversionError, match=r"DoRA.*allowed: plain LoRA.*HINT"):
        to_supernet(model)


@pytest.mark.parametrize("rslora", [False, True])
def test_smaller_rank_is_a_truncation_with_the_trained_scaling(rslora):
    # LoNAS trains every rank with the max rank's scaling (alpha / r_max, or alpha / sqrt(r_max) with rslora)
    torch.manual_seed(0)
    model = _peft(LLAMA, **LLAMA_LORA, use_rslora=rslora)().eval()
    net = to_supernet(model, SearchSpaceConfig(depth=None, heads=None, width=None, rank=[4, 8]))
    name = "model.layers.0.self_attn.v_proj"
    net.select({**net.max_config(), f"{name}.rank": 4})
    layer = model.base_model.model.get_submodule(name)
    w, a, b = layer.base_layer.weight, layer.lora_A["default"].weight, layer.lora_B["default"].weight
    alpha, r_max = LLAMA_LORA["lora_alpha"], LLAMA_LORA["r"]
    scale = alpha / math.sqrt(r_max) if rslora else alpha / r_max
    x = torch.randn(3, w.shape[1])
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ w.T + scale * (x @ a[:4].T) @ b[:, :4].T, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(layer(x), x @ w.T, atol=1e-3)  # the adapter matters at rank 4


def test_training_step_changes_only_adapter_weights():
    model = _peft(LLAMA, **LLAMA_LORA)()
    net = to_supernet(model, SearchSpaceConfig(depth=None))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    net.select(net.sample(torch.Generator().manual_seed(3)))
    model.train()
    output(model, token_input()).float().pow(2).mean().backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all("lora_A" in n or "lora_B" in n for n in changed)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)


def test_peft_over_unsupported_model_raises():
    from peft import LoraConfig, get_peft_model
    from transformers import ResNetConfig, ResNetForImageClassification

    base = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["classifier.1"]))
    with pytest.raises(ConversionError, match=r"wraps a ResNetForImageClassification \(model_type 'resnet'\).*allowed.*HINT: regis"):
        to_supernet(model)
    assert not any(type(m).__name__.startswith("Elastic") for m in model.modules())


def test_fused_qkv_adapter_folder_loads_on_original_base(tmp_path):
    # lora_B of qkv_proj / gate_up_proj is permuted segment-wise with the base: the saved adapter must undo it
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    base = _phi3()().eval()
    pristine = copy.deepcopy(base)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["qkv_proj", "gate_up_proj", "o_proj"])).eval()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    net = to_supernet(model, SearchSpaceConfig(depth=None, rank=[2, 4]))
    cfg = _rank_only_cfg(net)
    net.save_subnet(tmp_path, cfg)
    plain = PeftModel.from_pretrained(pristine, tmp_path / "peft_adapter").eval()
    net.select(cfg)
    x = token_input()
    with torch.no_grad():
        torch.testing.assert_close(output(plain, x), output(model, x), atol=1e-5, rtol=1e-4)
