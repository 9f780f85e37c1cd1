"""Real pretrained models, offline: MiniLM (BERT) and SmolLM2-135M (Llama with GQA). Marked slow; run in CI."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_elastic import SearchSpaceConfig, load_subnet, to_supernet

pytestmark = pytest.mark.slow


def test_minilm_convert_select_export_reload(minilm_path, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path)
    model = AutoModel.from_pretrained(minilm_path).eval()
    batch = tok(["a quiet, moving film", "the plot is thin and the jokes fall flat"], padding=True,
                return_tensors="pt")
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
    net = to_supernet(model, SearchSpaceConfig(embed_dim=(0.5, 1.0)))
    assert net.space["layers.depth"].choices == (3, 4, 6) and net.space["hidden"].choices == (192, 384)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).last_hidden_state, ref, atol=1e-5, rtol=1e-4)
    g = torch.Generator().manual_seed(0)
    for i, cfg in enumerate([net.min_config(), net.sample(g)]):
        net.select(cfg)
        with torch.no_grad():
            expected = model(**batch).last_hidden_state
        exported = net.export(cfg)
        net.save_subnet(tmp_path / str(i), cfg)
        reloaded = load_subnet(tmp_path / str(i))
        with torch.no_grad():
            torch.testing.assert_close(exported(**batch).last_hidden_state, expected, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(reloaded(**batch).last_hidden_state, expected, atol=1e-5, rtol=1e-4)
        assert sum(p.numel() for p in exported.parameters()) < sum(p.numel() for p in model.parameters())
    # homogeneous, with all heads and the full hidden size: a plain transformers folder
    homogeneous = {k: (v if k == "hidden" or k.endswith(".heads") else net.space[k].choices[0])
                   for k, v in net.max_config().items()}
    net.select(homogeneous)
    with torch.no_grad():
        expected = model(**batch).last_hidden_state
    net.save_subnet(tmp_path / "plain", homogeneous)
    plain = AutoModel.from_pretrained(tmp_path / "plain").eval()
    assert plain.config.num_hidden_layers == 3 and plain.config.intermediate_size < model.config.intermediate_size
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).last_hidden_state, expected, atol=1e-5, rtol=1e-4)


def test_smollm2_convert_select_export_generate(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM

    model = copy.deepcopy(smollm2)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # real GQA
    x = torch.tensor([[1, 504, 3458, 282, 4911, 314, 253, 1345]])
    with torch.no_grad():
        ref = model(x).logits
    net = to_supernet(model, SearchSpaceConfig(depth=(0.8, 1.0)))
    assert net.space["layers.0.attn.heads"].choices == (6, 9)  # 3 KV heads: whole groups only
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, ref, atol=1e-4, rtol=1e-4)
    homogeneous = {k: (v if k == "layers.depth" else net.space[k].choices[-2]) for k, v in net.max_config().items()}
    for i, cfg in enumerate([net.sample(torch.Generator().manual_seed(0)), homogeneous]):
        net.select(cfg)
        with torch.no_grad():
            expected = model(x).logits
        exported = net.export(cfg)
        with torch.no_grad():
            torch.testing.assert_close(exported(x).logits, expected, atol=1e-4, rtol=1e-4)
        kwargs = dict(max_new_tokens=4, do_sample=False)
        assert torch.equal(model.generate(x, **kwargs), exported.generate(x, **kwargs))
        net.save_subnet(tmp_path / str(i), cfg)
        if i == 0:  # heterogeneous: no HF config.json, lightning_elastic.load_subnet rebuilds it
            assert not (tmp_path / "0" / "config.json").exists()
            reloaded = load_subnet(tmp_path / "0")
        else:
            reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "1").eval()  # plain transformers
            assert reloaded.config.num_attention_heads == 6 and reloaded.config.num_key_value_heads == 3
        with torch.no_grad():
            torch.testing.assert_close(reloaded(x).logits, expected, atol=1e-4, rtol=1e-4)
        del exported, reloaded


def test_smollm2_lora_supernet_exports_adapter_and_merged_model(smollm2, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(copy.deepcopy(smollm2), LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"])).eval()
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: make the adapters change the output
            torch.nn.init.normal_(p, std=0.02)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    net = to_supernet(model, SearchSpaceConfig(depth=None, rank=[4, 8]))
    assert net.space["model.layers.3.mlp.down_proj.rank"].choices == (4, 8)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable  # base stays frozen
    x = torch.tensor([[1, 504, 3458, 282, 4911, 314, 253, 1345]])

    # (a) ranks only: a standard peft adapter folder, loaded by plain peft onto the untouched base
    ranks = {k: (4 if k.endswith(".rank") else v) for k, v in net.max_config().items()}
    net.select(ranks)
    with torch.no_grad():
        expected = model(input_ids=x).logits
    net.save_subnet(tmp_path / "ranks", ranks)
    plain = PeftModel.from_pretrained(copy.deepcopy(smollm2), tmp_path / "ranks" / "peft_adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=x).logits, expected, atol=1e-4, rtol=1e-4)
    del plain

    # (b) narrowed base: a merged, physically smaller native LlamaForCausalLM
    small = net.min_config()
    net.select(small)
    with torch.no_grad():
        expected = model(input_ids=x).logits
        with model.disable_adapter():
            base_only = model(input_ids=x).logits
    # merging (W + s B A) rounds differently from W x + s B (A x) over 30 layers: ~1e-3 on logits of size ~20,
    # while the adapters themselves move the logits far more than that
    assert (expected - base_only).abs().max() > 0.1
    net.save_subnet(tmp_path / "small", small)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "small").eval()
    assert type(merged) is LlamaForCausalLM
    assert sum(p.numel() for p in merged.parameters()) < 0.8 * sum(p.numel() for p in smollm2.parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x).logits, expected, atol=5e-3, rtol=1e-3)
