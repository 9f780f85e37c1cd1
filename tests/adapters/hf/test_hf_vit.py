"""HF ViT (5.x layout) for InstaTune on ViT."""

from __future__ import annotations

import pytest

from lightning_elastic import ConversionError, SearchSpaceConfig, to_supernet
from tests.adapters.hf._tiny import (
    _vit,
)


def test_homogeneous_vit_saves_head_dim(tmp_path):
    from transformers import AutoModelForImageClassification

    net = to_supernet(_vit().eval(), SearchSpaceConfig(depth=None))
    net.save_subnet(tmp_path, net.min_config())
    plain = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert plain.config.num_attention_heads == 2 and plain.vit.layers[0].attention.head_dim == 8


def test_elastic_hidden_is_refused():
    with pytest.raises(ConversionError, match=r"`embed_dim`.*embed_dim=None.*HINT"):
        to_supernet(_vit(), SearchSpaceConfig(embed_dim=(0.5, 1.0)))
