"""Tiny config-built HF models and the checks every HF adapter case runs (peft-style TEST_CASES table)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_elastic import SearchSpaceConfig, load_subnet, to_supernet
from lightning_elastic.core.slicing import slice_axis
from lightning_elastic.ops.base import ElasticOp

VOCAB = 100
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def _bert(cls_name: str, config: str = "BertConfig", **extra):
    def build():
        import transformers

        return getattr(transformers, cls_name)(getattr(transformers, config)(vocab_size=VOCAB, **{**SMALL, **extra}))
    return build


def _decoder(cls_name: str, config: str, kv: int = 2, **extra):
    def build():
        import transformers

        return getattr(transformers, cls_name)(getattr(transformers, config)(
            vocab_size=VOCAB, num_key_value_heads=kv, **{**SMALL, **extra}))
    return build


def _phi3(kv: int = 4):
    """Phi-3: fused ``qkv_proj`` and ``gate_up_proj`` (its default token ids are outside the tiny vocabulary)."""
    return _decoder("Phi3ForCausalLM", "Phi3Config", kv=kv, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    return DistilBertForSequenceClassification(DistilBertConfig(vocab_size=VOCAB, dim=32, hidden_dim=64, n_layers=2,
                                                                n_heads=4))


def _opt():
    from transformers import OPTConfig, OPTForCausalLM

    return OPTForCausalLM(OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                    num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=64,
                                    pad_token_id=0, bos_token_id=1, eos_token_id=2))


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0,
                                      bos_token_id=1, eos_token_id=2))


def _vit():
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(**SMALL, image_size=16, patch_size=8, num_labels=3))


def _peft(build: Callable, **lora):
    def wrapped():
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(build(), LoraConfig(**lora))
        for name, p in model.named_parameters():
            if "lora_B" in name:  # peft initialises B to zero: make the adapters matter so checks can fail
                torch.nn.init.normal_(p, std=0.2)
        return model
    return wrapped


def token_input() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))}


def image_input() -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))}


@dataclass
class Case:
    id: str
    build: Callable[[], torch.nn.Module]
    space: dict[str, Any] = field(default_factory=dict)
    inputs: Callable[[], dict[str, torch.Tensor]] = token_input
    adapter: str = ""
    causal: bool = False
    kinds: tuple[str, ...] = ()  # the kinds of elastic dims the conversion must find (coverage table)
    plain: bool = False  # a homogeneous (depth + MLP) export saves as a plain HF folder (coverage table)


LLAMA_LORA = dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"])
TEST_CASES = [
    Case("bert", _bert("BertForSequenceClassification"), dict(depth=(0.5, 1.0), embed_dim=(0.5, 1.0)),
         adapter="hf-bert"),
    Case("bert-mlm", _bert("BertForMaskedLM"), dict(depth=None, embed_dim=(0.5, 1.0)), adapter="hf-bert"),
    Case("roberta", _bert("RobertaModel", "RobertaConfig"), dict(depth=(0.5, 1.0), embed_dim=(0.5, 1.0)),
         adapter="hf-bert"),
    Case("distilbert", _distilbert, dict(depth=(0.5, 1.0), embed_dim=(0.5, 1.0)), adapter="hf-bert"),
    Case("llama-gqa", _decoder("LlamaForCausalLM", "LlamaConfig", tie_word_embeddings=True),
         dict(depth=(0.5, 1.0), embed_dim=(0.5, 1.0)), adapter="hf-llama", causal=True),
    Case("llama-mha", _decoder("LlamaModel", "LlamaConfig", kv=4), dict(depth=(0.5, 1.0), embed_dim=(0.5, 1.0)),
         adapter="hf-llama"),
    Case("qwen2", _decoder("Qwen2ForCausalLM", "Qwen2Config"), dict(depth=(0.5, 1.0), embed_dim=(0.5, 1.0)),
         adapter="hf-llama", causal=True),
    Case("mistral", _decoder("MistralForCausalLM", "MistralConfig"), dict(depth=(0.5, 1.0)), adapter="hf-llama",
         causal=True),
    Case("phi3-fused", _phi3(),
         dict(depth=(0.5, 1.0), embed_dim=(0.5, 1.0)), adapter="hf-llama", causal=True),
    Case("phi3-fused-gqa", _phi3(kv=2), dict(depth=None), adapter="hf-llama", causal=True),
    Case("vit", _vit, dict(depth=(0.5, 1.0)), inputs=image_input, adapter="hf-vit"),
    Case("peft-llama", _peft(_decoder("LlamaForCausalLM", "LlamaConfig"), **LLAMA_LORA), dict(depth=None),
         adapter="peft-lora", causal=True),
    Case("peft-bert", _peft(_bert("BertForSequenceClassification"), r=8, target_modules=["query", "value", "dense"]),
         dict(depth=None, embed_dim=(0.5, 1.0)), adapter="peft-lora"),
    Case("peft-qwen2", _peft(_decoder("Qwen2ForCausalLM", "Qwen2Config"), r=8, lora_alpha=8, use_rslora=True,
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]),
         dict(depth=(0.5, 1.0), rank=[4, 8]), adapter="peft-lora", causal=True),
    Case("peft-distilbert", _peft(_distilbert, r=4, target_modules=["q_lin", "v_lin", "lin1", "lin2"]),
         dict(depth=None), adapter="peft-lora"),
    Case("peft-phi3-fused", _peft(_phi3(), r=4, target_modules=["qkv_proj", "gate_up_proj", "o_proj"]),
         dict(depth=None), adapter="peft-lora", causal=True),
    Case("peft-opt", _peft(_opt, r=4, target_modules=["q_proj", "v_proj", "fc1", "fc2"]), dict(depth=(0.5, 1.0)),
         adapter="peft-lora", causal=True),  # over the structure-discovered (hf-generic) layout
    Case("peft-gpt2", _peft(_gpt2, r=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True),
         dict(depth=(0.5, 1.0)), adapter="peft-lora", causal=True),  # LoRA on GPT-2's Conv1D
    Case("peft-vit", _peft(_vit, r=4, target_modules=["q_proj", "v_proj", "fc1", "fc2"]), dict(depth=(0.5, 1.0)),
         inputs=image_input, adapter="peft-lora"),
]


def cases(*prefixes: str) -> list:
    import pytest

    return [pytest.param(c, id=c.id) for c in TEST_CASES if c.id.startswith(prefixes)]


def output(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**inputs)
    for key in ("logits", "last_hidden_state"):
        if getattr(out, key, None) is not None:
            return getattr(out, key)
    raise AssertionError(f"no logits in {type(out).__name__}")


def converted(case: Case):
    torch.manual_seed(0)
    model = case.build().eval()
    original = copy.deepcopy(model)
    net = to_supernet(model, SearchSpaceConfig(**case.space))
    return original, model, net


def check_max_config_equals_original(case: Case) -> None:
    torch.manual_seed(0)
    model = case.build().eval()
    inputs = case.inputs()
    keys = list(model.state_dict())
    with torch.no_grad():
        ref = output(model, inputs)
    net = to_supernet(model, SearchSpaceConfig(**case.space))
    assert net.adapter.name == case.adapter
    assert list(model.state_dict()) == keys
    net.select(net.max_config())
    with torch.no_grad():
        torch.testing.assert_close(output(model, inputs), ref, atol=1e-5, rtol=1e-5)


def configs_to_check(net) -> list[dict[str, int]]:
    g = torch.Generator().manual_seed(1)
    return [net.min_config(), net.sample(g)]


def check_export_and_reload(case: Case, tmp_path) -> None:
    _, model, net = converted(case)
    inputs = case.inputs()
    for i, cfg in enumerate(configs_to_check(net)):
        assert json.loads(json.dumps(cfg)) == net.select(json.loads(json.dumps(cfg)))  # JSON round trip
        with torch.no_grad():
            expected = output(model, inputs)
        exported = net.export(cfg)
        assert not any(isinstance(m, ElasticOp) for m in exported.modules())
        with torch.no_grad():
            torch.testing.assert_close(output(exported, inputs), expected, atol=1e-5, rtol=1e-4)
        net.save_subnet(tmp_path / str(i), cfg)
        reloaded = load_subnet(tmp_path / str(i))
        with torch.no_grad():
            torch.testing.assert_close(output(reloaded, inputs), expected, atol=1e-5, rtol=1e-4)
        if case.causal:
            prompt = inputs["input_ids"][:1]
            kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
            assert torch.equal(model.generate(input_ids=prompt, **kwargs), exported.generate(input_ids=prompt,
                                                                                             **kwargs))


def check_grads_outside_slice(case: Case) -> None:
    _, model, net = converted(case)
    net.select(net.min_config())
    model.train()
    output(model, case.inputs()).float().pow(2).mean().backward()
    checked = 0
    for module in model.modules():
        if not isinstance(module, ElasticOp) or module.is_full():
            continue
        for name, specs in module._slices.items():
            p = getattr(module, name, None)
            if p is None or p.grad is None:
                continue
            sliced = p.grad
            for axis, ax in specs:
                sliced = slice_axis(sliced, axis, ax.dim.active, ax.dim.full, ax.unit, ax.segments)
            assert torch.allclose(sliced.abs().sum(), p.grad.abs().sum()), name
            checked += 1
    assert checked > 0
