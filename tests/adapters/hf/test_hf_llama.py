"""Llama-family decoders (Llama GQA/MHA, Qwen2, Mistral): shared checks plus GQA and depth specifics."""

from __future__ import annotations

import pytest
import torch

from lightning_elastic import ConfigError, SearchSpaceConfig, UnsupportedModelError, to_supernet
from lightning_elastic.adapters.hf_llama import HFLlamaAdapter
from tests.adapters.hf._tiny import (
    _decoder,
    _phi3,
    token_input,
)


def test_gqa_keeps_kv_heads_and_groups_in_sync():
    model = _decoder("LlamaForCausalLM", "LlamaConfig", kv=2)().eval()
    net = to_supernet(model, SearchSpaceConfig(depth=None, width=None))
    assert net.space["layers.0.attn.heads"].choices == (2, 4)  # multiples of the 2 KV heads
    attn = model.model.layers[0].self_attn
    net.select({**net.max_config(), "layers.0.attn.heads": 2})
    assert attn.num_key_value_groups == 1
    exported = net.export()
    assert exported.model.layers[0].self_attn.k_proj.out_features == attn.k_proj.weight.shape[0]  # KV kept
    assert exported.model.layers[0].self_attn.q_proj.out_features == 2 * attn.head_dim
    net.select(net.max_config())
    assert attn.num_key_value_groups == 2


def test_homogeneous_export_is_plain_hf(tmp_path):
    from transformers import AutoModelForCausalLM

    model = _decoder("LlamaForCausalLM", "LlamaConfig")().eval()
    net = to_supernet(model, SearchSpaceConfig(depth=(0.5, 1.0)))
    cfg = net.min_config()
    net.save_subnet(tmp_path, cfg)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # no lightning_elastic involved
    assert plain.config.num_hidden_layers == 1 and plain.config.num_attention_heads == 2
    assert plain.config.intermediate_size == 32 and plain.model.layers[0].self_attn.layer_idx == 0
    x = token_input()
    net.select(cfg)
    with torch.no_grad():
        torch.testing.assert_close(plain(**x).logits, model(**x).logits, atol=1e-5, rtol=1e-4)


def test_qwen2_export_keeps_layer_types():
    model = _decoder("Qwen2ForCausalLM", "Qwen2Config", num_hidden_layers=3)().eval()
    net = to_supernet(model, SearchSpaceConfig(depth=[2, 3]))
    exported = net.export({**net.max_config(), "layers.depth": 2})
    assert exported.config.num_hidden_layers == 2 and len(exported.config.layer_types) == 2


def test_gqa_breaking_heads_raise():
    model = _decoder("LlamaForCausalLM", "LlamaConfig", kv=2)()
    with pytest.raises(ConfigError, match=r"break grouped-query attention.*HINT"):
        to_supernet(model, SearchSpaceConfig(heads=[3, 4]))
    with pytest.raises(ConfigError, match=r"overrides\['layers.\*.attn.heads'\].*grouped-query.*HINT"):
        to_supernet(model, SearchSpaceConfig(overrides={"layers.*.attn.heads": [1, 4]}))
    assert not any(type(m).__name__.startswith("Elastic") for m in model.modules())  # untouched


def test_depth_order_must_start_with_layer_zero():
    with pytest.raises(ConfigError, match=r"`depth_order`.*layer 0.*HINT"):
        HFLlamaAdapter(depth_order=[1, 0])


def test_importance_ordered_depth():
    model = _decoder("LlamaForCausalLM", "LlamaConfig", num_hidden_layers=3)()
    net = to_supernet(model, SearchSpaceConfig(depth=[2, 3], width=None, heads=None),
                      adapter=HFLlamaAdapter(depth_order=[0, 2, 1]))
    net.select({"layers.depth": 2})
    exported = net.export()
    torch.testing.assert_close(exported.model.layers[1].mlp.up_proj.weight, model.model.layers.all_modules()[2]
                               .mlp.up_proj.weight)


def test_unsupported_hf_model_lists_model_types():
    from transformers import ResNetConfig, ResNetModel  # no block of the model holds a Linear

    model = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]))
    with pytest.raises(UnsupportedModelError, match=r"(?s)(?=.*ResNetModel)(?=.*llama, mistral, qwen2)(?=.*gpt2, opt)"
                                                    r".*HINT.*register_adapter"):
        to_supernet(model)


def test_activation_importance_orders_mlp_by_calibration_activations():
    from lightning_elastic.core.importance import ActivationImportance

    model = _decoder("LlamaForCausalLM", "LlamaConfig")().eval()
    x = token_input()
    seen = {}
    down = model.model.layers[0].mlp.down_proj

    def record(module, args) -> None:  # returns None: a pre-hook that returns a value replaces the layer's input
        seen.setdefault("x", args[0].detach().abs().mean(dim=(0, 1)))

    hook = down.register_forward_pre_hook(record)
    with torch.no_grad():
        ref = model(**x).logits
    hook.remove()
    expected = torch.argsort(seen["x"] * down.weight.detach().norm(dim=0), descending=True, stable=True)
    net = to_supernet(model, SearchSpaceConfig(depth=None, importance=ActivationImportance(model, x)))
    assert torch.equal(net.space["layers.0.mlp.hidden"].importance[0], expected)
    with torch.no_grad():
        torch.testing.assert_close(model(**x).logits, ref, atol=1e-5, rtol=1e-5)  # still function-preserving


def test_phi3_fused_qkv_heads_per_layer_and_plain_export(tmp_path):
    from transformers import AutoModelForCausalLM

    model = _phi3()().eval()
    net = to_supernet(model, SearchSpaceConfig(depth=None, width=None))
    assert net.space["layers.0.attn.heads"].choices == (2, 3, 4)
    x = token_input()
    net.select({"layers.0.attn.heads": 2, "layers.1.attn.heads": 3})
    assert model.config.num_attention_heads == 4  # per-layer heads never touch the shared model config
    with torch.no_grad():
        expected = model(**x).logits
    exported = net.export()
    assert [m.self_attn.qkv_proj.out_features for m in exported.model.layers] == [3 * 2 * 8, 3 * 3 * 8]  # q, k, v
    with torch.no_grad():
        torch.testing.assert_close(exported(**x).logits, expected, atol=1e-5, rtol=1e-4)
    cfg = {"layers.0.attn.heads": 3, "layers.1.attn.heads": 3}
    net.save_subnet(tmp_path, cfg)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # plain transformers, shared config again
    assert plain.config.num_attention_heads == 3 and plain.config.num_key_value_heads == 3
    net.select(cfg)
    with torch.no_grad():
        torch.testing.assert_close(plain(**x).logits, model(**x).logits, atol=1e-5, rtol=1e-4)


def test_phi3_fused_qkv_with_gqa_has_elastic_heads(tmp_path):
    from transformers import AutoModelForCausalLM

    model = _phi3(kv=2)().eval()
    net = to_supernet(model, SearchSpaceConfig(depth=None, width=None))
    assert net.space["layers.0.attn.heads"].choices == (2, 4)  # multiples of the 2 KV heads
    x = token_input()
    cfg = {"layers.0.attn.heads": 2, "layers.1.attn.heads": 2}
    net.select(cfg)
    model.train()
    model(**x).logits.pow(2).mean().backward()
    qkv = model.model.layers[0].self_attn.qkv_proj
    hd = model.model.layers[0].self_attn.head_dim
    q_grad = qkv.weight.grad[: 4 * hd].view(2, 2, hd, -1)  # [KV group, head in group, ...]
    assert q_grad[:, 1].abs().sum() == 0 and q_grad[:, 0].abs().sum() > 0  # the 2nd head of each group is off
    assert qkv.weight.grad[4 * hd:].abs().sum() > 0  # k and v rows all train
    model.eval()
    with torch.no_grad():
        expected = model(**x).logits
    exported = net.export(cfg)
    assert exported.model.layers[0].self_attn.qkv_proj.out_features == (2 + 2 * 2) * hd  # q: 2 heads, k/v: 2 each
    with torch.no_grad():
        torch.testing.assert_close(exported(**x).logits, expected, atol=1e-5, rtol=1e-4)
    net.save_subnet(tmp_path, cfg)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert plain.config.num_attention_heads == 2 and plain.config.num_key_value_heads == 2
    with torch.no_grad():
        torch.testing.assert_close(plain(**x).logits, expected, atol=1e-5, rtol=1e-4)
