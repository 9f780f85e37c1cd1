"""Hugging Face ViT (transformers 5.x layout: ``layers[*].attention.{q,k,v,o}_proj``, ``mlp.fc1/fc2``) for InstaTune.

Dimensions: ``layers.depth`` (trailing layers dropped), ``layers.{i}.attn.heads`` and ``layers.{i}.mlp.hidden``.
The hidden size is not elastic: the class token and position embeddings are bare Parameters of the embeddings.
Homogeneous subnets save with ``head_dim`` written into the config, so plain ``from_pretrained`` rebuilds them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_elastic.adapters._hf import AttnLayout, HFTransformerAdapter, LayerLayout, Layout, find_module
from lightning_elastic.adapters.base import Adapter
from lightning_elastic.core.registry import register_adapter

_LAYER = ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj", "mlp.fc1", "mlp.fc2",
          "layernorm_before", "layernorm_after")


def _set_heads(attn: nn.Module, total: int) -> None:
    attn.num_attention_heads = total


def vit_layout(model: nn.Module) -> Layout | None:
    """Where an HF ViT keeps things, or None."""
    base = getattr(model, "base_model", model)
    layers = getattr(base, "layers", None)
    if not (isinstance(layers, nn.ModuleList) and len(layers) and hasattr(getattr(base, "embeddings", None),
                                                                           "patch_embeddings")):
        return None
    try:
        for layer in layers:
            for path in _LAYER:
                layer.get_submodule(path)
    except AttributeError:
        return None
    prefix = find_module(model, base) or ""
    p = f"{prefix}." if prefix else ""
    layer_list = []
    for i, layer in enumerate(layers):
        lp = f"{p}layers.{i}"
        head_dim = int(layer.attention.head_dim)
        heads = layer.attention.q_proj.out_features // head_dim
        layer_list.append(LayerLayout(
            AttnLayout(f"{lp}.attention", *(f"{lp}.attention.{x}_proj" for x in "qkvo"), head_dim, heads, heads,
                       _set_heads),
            [f"{lp}.mlp.fc1"], f"{lp}.mlp.fc2", [f"{lp}.layernorm_before", f"{lp}.layernorm_after"]))
    hidden = layers[0].attention.o_proj.out_features
    return Layout("vit", f"{p}layers", layer_list, hidden, hidden_blockers=[f"{p}embeddings"])


class HFViTAdapter(HFTransformerAdapter, Adapter):
    name = "hf-vit"
    supported = "transformers ViT 5.x (model_type vit; layers[*].attention.q_proj, mlp.fc1): depth, heads, MLP"
    family = "vit"
    depth_auto = (0.5, 0.75, 1.0)

    def layout(self, model: nn.Module) -> Layout | None:
        return vit_layout(model)

    def update_config(self, config: Any, heads: int, mlp: int, hidden: int, layout: Layout) -> None:
        config.head_dim = layout.layer_list[0].attn.head_dim
        config.num_attention_heads, config.intermediate_size = heads, mlp


register_adapter(HFViTAdapter())
