"""A homogeneous BERT subnet whose head count does not divide the hidden size (MiniLM: 9 of 12 heads at 384) saves
and loads; plain ``from_pretrained`` cannot express it, so the folder is written for ``load_subnet``."""

from __future__ import annotations

import pytest
import torch

from lightning_elastic import ExportError, SearchSpaceConfig, load_subnet, to_supernet
from lightning_elastic.adapters.hf_base import loadable_by_hf
from tests.adapters.hf._tiny import VOCAB, output, token_input


def _bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=VOCAB, hidden_size=48, num_attention_heads=12,
                                                    intermediate_size=96, num_hidden_layers=2)).eval()


def test_nine_of_twelve_heads_saves_and_loads(tmp_path):
    model = _bert()
    net = to_supernet(model, SearchSpaceConfig(depth=None))
    assert net.space["layers.0.attn.heads"].choices == (6, 9, 12)  # 9 is a default choice
    cfg = {**net.max_config(), "layers.0.attn.heads": 9, "layers.1.attn.heads": 9}
    inputs = token_input()
    with net.subnet(cfg), torch.no_grad():
        expected = output(model, inputs)
    exported = net.save_subnet(tmp_path / "minilm9", cfg)
    assert not loadable_by_hf(exported)  # BertConfig cannot say "9 heads of 4 at hidden 48": no crash, just False
    assert not (tmp_path / "minilm9" / "config.json").exists()
    with torch.no_grad():
        torch.testing.assert_close(output(load_subnet(tmp_path / "minilm9"), inputs), expected, rtol=1e-4,
                                   atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minilm9"]  # no temporary folder left behind


def test_damaged_hf_folder_names_the_folder(tmp_path):
    net = to_supernet(_bert(), SearchSpaceConfig(depth=None))
    net.save_subnet(tmp_path / "full", net.max_config())
    assert (tmp_path / "full" / "config.json").is_file()  # all heads: a plain from_pretrained folder
    weights = tmp_path / "full" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ExportError, match=r"adapter 'hf-bert' could not load the subnet in '.*full'.*HINT"):
        load_subnet(tmp_path / "full")
