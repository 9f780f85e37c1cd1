"""Hugging Face ViT-style image encoders (ViT, DeiT: ``embeddings.patch_embeddings`` + one ``layers`` stack) for
InstaTune.

Thin over the structure discovery of :mod:`~lightning_elastic.adapters.hf_generic`: what the family adds is its name,
its paper space's depth default, and the config keys of its export (``head_dim`` written, so plain
``from_pretrained`` rebuilds a homogeneous subnet with fewer heads).

Dimensions: ``layers.depth`` (trailing layers dropped), ``layers.{i}.attn.heads`` and ``layers.{i}.mlp.hidden``.
The hidden size is not elastic: the class token and position embeddings are bare Parameters of the embeddings.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_elastic.adapters.hf_base import HFTransformerAdapter
from lightning_elastic.adapters.hf_generic import family_layout
from lightning_elastic.adapters.hf_layout import Layout
from lightning_elastic.adapters.registry import register_adapter


def vit_layout(model: nn.Module) -> Layout | None:
    """Where an HF ViT keeps things, or None."""
    base = getattr(model, "base_model", model)
    if not hasattr(getattr(base, "embeddings", None), "patch_embeddings"):
        return None
    layout = family_layout(model)
    if layout is None or any(la.attn is None or la.cross for la in layout.layer_list):
        return None  # Swin-like stages, ConvNeXt blocks: not this family
    layout.family = "vit"
    return layout


class HFViTAdapter(HFTransformerAdapter):
    name = "hf-vit"
    supported = ("transformers ViT / DeiT 5.x (model_type vit, deit; embeddings.patch_embeddings and one layers "
                 "stack): depth, heads, MLP")
    family = "vit"
    depth_auto = (0.5, 0.75, 1.0)

    def layout(self, model: nn.Module) -> Layout | None:
        return vit_layout(model)

    def update_config(self, config: Any, heads: int, mlp: int, hidden: int, layout: Layout) -> None:
        config.head_dim = layout.layer_list[0].attn.head_dim
        config.num_attention_heads, config.intermediate_size = heads, mlp


register_adapter(HFViTAdapter())
