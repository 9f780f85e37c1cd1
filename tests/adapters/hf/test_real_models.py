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
        if i == 1:
            net.save_subnet(tmp_path, cfg)
            plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
            with torch.no_grad():
                torch.testing.assert_close(plain(x).logits, expected, atol=1e-4, rtol=1e-4)
            assert plain.config.num_attention_heads == 6 and plain.config.num_key_value_heads == 3
