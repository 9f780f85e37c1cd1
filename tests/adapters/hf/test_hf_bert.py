"""BERT-family encoders (BERT incl. MLM head with tied decoder, RoBERTa, DistilBERT)."""

from __future__ import annotations

import pytest
import torch

from lightning_elastic import SearchSpaceConfig, to_supernet
from tests.adapters.hf._tiny import (
    _bert,
    token_input,
)


def test_dims_and_attributes_follow_select():
    model = _bert("BertForSequenceClassification")().eval()
    net = to_supernet(model, SearchSpaceConfig(depth=(0.5, 1.0)))
    assert {"layers.depth", "layers.0.attn.heads", "layers.1.mlp.hidden"} <= set(net.space.names())
    attn = model.bert.encoder.layer[0].attention.self
    net.select({**net.max_config(), "layers.0.attn.heads": 2, "layers.depth": 1})
    assert attn.num_attention_heads == 2 and attn.all_head_size == 2 * attn.attention_head_size
    assert len(model.bert.encoder.layer) == 1
    assert type(model.bert.encoder.layer[0]).__name__ == "BertLayer"  # HF layer classes stay HF classes


def test_homogeneous_export_loads_with_plain_from_pretrained(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = _bert("BertForSequenceClassification")().eval()
    net = to_supernet(model, SearchSpaceConfig(depth=(0.5, 1.0), heads=None))
    cfg = {**net.min_config()}
    net.save_subnet(tmp_path, cfg)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert plain.config.num_hidden_layers == 1 and plain.config.intermediate_size == 32
    net.select(cfg)
    x = token_input()
    with torch.no_grad():
        torch.testing.assert_close(plain(**x).logits, model(**x).logits, atol=1e-5, rtol=1e-4)


def test_fewer_heads_fall_back_to_load_subnet(tmp_path):
    # BERT derives the head size from hidden_size / num_attention_heads: 2 heads of 8 cannot be said in a config
    model = _bert("BertModel")().eval()
    net = to_supernet(model, SearchSpaceConfig(depth=None, width=None, heads=(0.5, 1.0)))
    net.save_subnet(tmp_path, net.min_config())
    assert not (tmp_path / "config.json").exists() and (tmp_path / "subnet.json").exists()


def test_importance_ordered_depth_keeps_chosen_layers():
    from lightning_elastic.adapters.hf_bert import HFBertAdapter

    model = _bert("BertModel", num_hidden_layers=3)().eval()
    layers = list(model.encoder.layer)
    net = to_supernet(model, SearchSpaceConfig(depth=[1, 2, 3], width=None, heads=None),
                      adapter=HFBertAdapter(depth_order=[2, 0, 1]))
    net.select({"layers.depth": 2})
    assert list(model.encoder.layer) == [layers[0], layers[2]]  # kept in network order
    x = token_input()
    with torch.no_grad():
        expected = model(**x).last_hidden_state
    exported = net.export()
    assert exported.config.num_hidden_layers == 2
    torch.testing.assert_close(exported.encoder.layer[1].intermediate.dense.weight,
                               layers[2].intermediate.dense.weight)
    with torch.no_grad():
        torch.testing.assert_close(exported(**x).last_hidden_state, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("order", [[0, 0], [0, 2], [1], ["1", 0]])
def test_bad_depth_order_raises_before_any_change(order):
    from lightning_elastic import ConfigError
    from lightning_elastic.adapters.hf_bert import HFBertAdapter

    model = _bert("BertModel")()
    with pytest.raises(ConfigError, match=r"`depth_order` got .*2 layers; allowed: each of 0\.\.1.*HINT"):
        to_supernet(model, SearchSpaceConfig(depth=[1, 2]), adapter=HFBertAdapter(depth_order=order))
    assert not any(type(m).__name__.startswith("Elastic") for m in model.modules())
