"""The one coverage table of transformers model types (tiny configs: hidden 32, 2 layers): each converts with
elastic depth, heads and MLP width where the architecture has them, and passes the adapter contract (max config ==
original, export == supernet and reload, zero gradients outside the slice: ``check_adapter``); a homogeneous depth + MLP subnet saves as
a plain HF folder where the model's config can express it. Unconvertible blocks raise an error naming the module."""

from __future__ import annotations

import pytest
import torch

from lightning_elastic import ConversionError, SearchSpaceConfig, load_subnet, to_supernet
from lightning_elastic.testing import check_adapter
from tests.adapters.hf._tiny import (
    SMALL,
    VOCAB,
    Case,
    _bert,
    _decoder,
    _distilbert,
    _phi3,
    _vit,
    check_export_and_reload,
    image_input,
    output,
    token_input,
)

TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
ALL = ("depth", "heads", "width")


def _hf(cls_name: str, config: str, **kwargs):
    def build():
        import transformers

        return getattr(transformers, cls_name)(getattr(transformers, config)(**kwargs))
    return build


def seq2seq_input() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(3, VOCAB, (2, 7), generator=g),
            "decoder_input_ids": torch.randint(3, VOCAB, (2, 5), generator=g)}


def audio_input() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"input_features": torch.randn(2, 8, 16, generator=g),
            "decoder_input_ids": torch.randint(3, VOCAB, (2, 5), generator=g)}


_SEQ2SEQ = dict(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, **TOKENS)
SPACE = dict(depth=(0.5, 1.0))
COVERAGE = [
    # encoders
    Case("bert", _bert("BertForSequenceClassification"), SPACE, adapter="hf-bert", kinds=ALL, plain=True),
    Case("roberta", _bert("RobertaForSequenceClassification", "RobertaConfig"), SPACE, adapter="hf-bert", kinds=ALL,
         plain=True),
    Case("distilbert", _distilbert, SPACE, adapter="hf-bert", kinds=ALL, plain=True),
    Case("electra", _bert("ElectraForSequenceClassification", "ElectraConfig", embedding_size=16), SPACE,
         adapter="hf-bert", kinds=ALL, plain=True),
    # one layer shared by every position (no depth); a LayerNorm inside the attention keeps its heads
    Case("albert", _bert("AlbertForSequenceClassification", "AlbertConfig", embedding_size=16), SPACE,
         adapter="hf-generic", kinds=("width",), plain=True),
    Case("deberta-v2", _bert("DebertaV2ForSequenceClassification", "DebertaV2Config", relative_attention=True,
                             pos_att_type=["p2c", "c2p"], position_buckets=8, max_relative_positions=16), SPACE,
         adapter="hf-generic", kinds=ALL, plain=True),
    Case("modernbert", _hf("ModernBertForSequenceClassification", "ModernBertConfig", vocab_size=VOCAB, **SMALL,
                           **TOKENS, cls_token_id=1, sep_token_id=2), SPACE, adapter="hf-generic", kinds=ALL,
         plain=True),
    # decoders
    Case("gpt2", _hf("GPT2LMHeadModel", "GPT2Config", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                     n_positions=64, **TOKENS), SPACE, adapter="hf-generic", causal=True, kinds=ALL, plain=True),
    Case("opt", _hf("OPTForCausalLM", "OPTConfig", vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                    num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=64, **TOKENS), SPACE,
         adapter="hf-generic", causal=True, kinds=ALL, plain=True),
    Case("gpt-neox", _hf("GPTNeoXForCausalLM", "GPTNeoXConfig", vocab_size=VOCAB, **SMALL, **TOKENS), SPACE,
         adapter="hf-generic", causal=True, kinds=ALL, plain=True),
    Case("llama", _decoder("LlamaForCausalLM", "LlamaConfig"), SPACE, adapter="hf-llama", causal=True, kinds=ALL,
         plain=True),
    Case("qwen2", _decoder("Qwen2ForCausalLM", "Qwen2Config"), SPACE, adapter="hf-llama", causal=True, kinds=ALL,
         plain=True),
    Case("gemma", _decoder("GemmaForCausalLM", "GemmaConfig", head_dim=16, **TOKENS), SPACE, adapter="hf-llama",
         causal=True, kinds=ALL, plain=True),
    Case("phi3", _phi3(kv=2), SPACE, adapter="hf-llama", causal=True, kinds=ALL, plain=True),
    # encoder-decoders: one depth per stack, T5's heads shared per stack (layer 0's relative bias feeds every layer)
    Case("t5", _hf("T5ForConditionalGeneration", "T5Config", vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64,
                   num_layers=2, num_heads=4, decoder_start_token_id=0, **TOKENS), SPACE, seq2seq_input,
         adapter="hf-generic", kinds=ALL, plain=True),
    Case("bart", _hf("BartForConditionalGeneration", "BartConfig", max_position_embeddings=64, **_SEQ2SEQ), SPACE,
         seq2seq_input, adapter="hf-generic", kinds=ALL, plain=True),
    Case("whisper", _hf("WhisperForConditionalGeneration", "WhisperConfig", num_mel_bins=8, max_source_positions=8,
                        max_target_positions=16, decoder_start_token_id=1, **_SEQ2SEQ), SPACE, audio_input,
         adapter="hf-generic", kinds=ALL, plain=True),
    # vision
    Case("vit", _vit, SPACE, image_input, adapter="hf-vit", kinds=ALL, plain=True),
    Case("deit", _hf("DeiTForImageClassification", "DeiTConfig", image_size=16, patch_size=8, num_labels=3, **SMALL),
         SPACE, image_input, adapter="hf-vit", kinds=ALL, plain=True),
    Case("clip-vision", _hf("CLIPVisionModel", "CLIPVisionConfig", image_size=16, patch_size=8, **SMALL), SPACE,
         image_input, adapter="hf-generic", kinds=ALL, plain=True),
    # per-stage stacks; Swin's relative position bias table (a column per head) follows the heads
    Case("swin", _hf("SwinForImageClassification", "SwinConfig", image_size=16, patch_size=2, embed_dim=16,
                     depths=[2, 2], num_heads=[2, 4], window_size=2, num_labels=3), SPACE, image_input,
         adapter="hf-generic", kinds=ALL),
    Case("convnext", _hf("ConvNextForImageClassification", "ConvNextConfig", hidden_sizes=[16, 32], depths=[2, 2],
                         num_stages=2, num_labels=3), SPACE, image_input, adapter="hf-generic",
         kinds=("depth", "width")),
]
CASES = [pytest.param(c, id=c.id) for c in COVERAGE]


def test_table_covers_the_issue():
    assert len(COVERAGE) >= 12 + 6
    assert {"gpt2", "opt", "gpt-neox", "t5", "deberta-v2", "modernbert", "phi3"} <= {c.id for c in COVERAGE}


@pytest.mark.parametrize("case", CASES)
def test_adapter_contract(case: Case):
    report = check_adapter(case.build, case.inputs(), config=case.space, num_configs=2)
    assert report.supernet.adapter.name == case.adapter
    assert report.grads_checked > 0


@pytest.mark.parametrize("case", CASES)
def test_elastic_kinds_and_smaller_export(case: Case):
    torch.manual_seed(0)
    model = case.build().eval()
    full = sum(p.numel() for p in model.parameters())
    net = to_supernet(model, SearchSpaceConfig(**case.space))
    assert sorted({d.kind for d in net.space}) == sorted(case.kinds)
    exported = net.export(net.min_config())
    assert type(exported) is type(model)
    assert sum(p.numel() for p in exported.parameters()) < full


@pytest.mark.parametrize("case", CASES)
def test_export_and_reload(case: Case, tmp_path):
    check_export_and_reload(case, tmp_path)


@pytest.mark.parametrize("case", CASES)
def test_homogeneous_subnet_is_plain_hf(case: Case, tmp_path):
    torch.manual_seed(0)
    model = case.build().eval()
    net = to_supernet(model, SearchSpaceConfig(**case.space))
    cfg = {k: (net.space[k].choices[0] if net.space[k].kind in ("depth", "width") else v)
           for k, v in net.max_config().items()}
    net.save_subnet(tmp_path, cfg)
    assert (tmp_path / "config.json").is_file() == case.plain
    reloaded = type(model).from_pretrained(tmp_path).eval() if case.plain else load_subnet(tmp_path)
    net.select(cfg)
    inputs = case.inputs()
    with torch.no_grad():
        torch.testing.assert_close(output(reloaded, inputs), output(model, inputs), atol=1e-5, rtol=1e-4)


def test_unconvertible_block_names_the_module():
    from transformers import MambaConfig, MambaForCausalLM

    model = MambaForCausalLM(MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=4))
    with pytest.raises(ConversionError, match=r"(?s)MambaForCausalLM.*'backbone\.layers\.0'.*mixer\.x_proj.*allowed.*"
                                              r"HINT: register an adapter"):
        to_supernet(model)
    assert not any(type(m).__name__.startswith("Elastic") for m in model.modules())


def test_explicit_heads_name_the_blocking_module():
    model = COVERAGE[[c.id for c in COVERAGE].index("albert")].build()
    with pytest.raises(ConversionError, match=r"(?s)`heads`=\(0\.5, 1\.0\).*'albert\.encoder.*attention\.LayerNorm'.*"
                                              r"allowed: heads=None.*HINT: pass heads=None"):
        to_supernet(model, SearchSpaceConfig(heads=[0.5, 1.0]))
    assert not any(type(m).__name__.startswith("Elastic") for m in model.modules())


def test_swin_bias_table_follows_the_heads():
    torch.manual_seed(0)
    model = COVERAGE[[c.id for c in COVERAGE].index("swin")].build().eval()
    net = to_supernet(model, SearchSpaceConfig(depth=None, width=None))
    name = "encoder.layers.1.blocks.0.attn.heads"
    net.select({**net.max_config(), name: 2})  # 2 of the stage's 4 heads
    with torch.no_grad():
        expected = model(**image_input()).logits
    exported = net.export()
    attn = exported.swin.encoder.layers[1].blocks[0].attention
    assert attn.relative_position_bias.relative_position_bias_table.shape[1] == 2
    assert attn.q_proj.out_features == 2 * 8 and attn.o_proj.in_features == 2 * 8  # 2 heads of 32 / 4
    with torch.no_grad():
        torch.testing.assert_close(exported(**image_input()).logits, expected, atol=1e-5, rtol=1e-4)


def test_token_inputs_fit_vocab():
    assert int(token_input()["input_ids"].max()) < VOCAB


def test_family_adapters_win_whatever_the_registration_order():
    from lightning_elastic.adapters.registry import register_adapter, registered_adapters, unregister_adapter

    before = registered_adapters()
    tail = list(before)[list(before).index("hf-llama"):]
    unregister_adapter("hf-llama")
    try:
        register_adapter(before["hf-llama"])  # now after hf-generic, as when hf_generic is imported first
        model = _decoder("LlamaForCausalLM", "LlamaConfig")()
        assert to_supernet(model, SearchSpaceConfig(depth=None)).adapter.name == "hf-llama"
    finally:
        for name in tail:  # restore the registration order for the tests that follow
            unregister_adapter(name)
            register_adapter(before[name])
        assert list(registered_adapters()) == list(before)
