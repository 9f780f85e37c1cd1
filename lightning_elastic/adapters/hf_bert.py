"""Hugging Face BERT-family encoders (BERT, RoBERTa, XLM-R, ELECTRA-style; DistilBERT) — InstaTune / DynaBERT spaces.

Matched by structure, not class name: a base model with ``embeddings.word_embeddings`` and either
``encoder.layer[*]`` with ``attention.self.{query,key,value}`` / ``attention.output.dense`` / ``intermediate.dense`` /
``output.dense`` (BERT layout, HF 4.5x and 5.x), or ``transformer.layer[*]`` with ``attention.{q,k,v,out}_lin`` /
``ffn.lin1/lin2`` (DistilBERT layout). Any ``*For*`` head on top is handled: its Linears that read the hidden size
are narrowed with it.

Dimensions: ``layers.depth`` (trailing layers dropped), ``layers.{i}.attn.heads``, ``layers.{i}.mlp.hidden`` and,
with ``embed_dim`` set, ``hidden`` (embeddings, every residual-stream Linear and LayerNorm, pooler, heads).

Export: plain ``from_pretrained`` needs ``hidden_size / num_attention_heads`` to be the head size, so a homogeneous
subnet with all heads (and full hidden size) saves as an HF folder; fewer heads load with ``load_subnet``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_elastic.adapters.hf_base import HFTransformerAdapter, find_module, has_submodules
from lightning_elastic.adapters.hf_generic import family_layout
from lightning_elastic.adapters.hf_layout import Layout
from lightning_elastic.adapters.registry import register_adapter

_BERT = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
         "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")
_DISTIL = ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "sa_layer_norm",
           "ffn.lin1", "ffn.lin2", "output_layer_norm")


def bert_layout(model: nn.Module) -> Layout | None:
    """Where a BERT-like (or DistilBERT-like) encoder keeps things, or None (the structure discovery of
    :mod:`~lightning_elastic.adapters.hf_generic`, gated on the family's names, plus ELECTRA's blocker)."""
    base = getattr(model, "base_model", model)
    emb = getattr(base, "embeddings", None)
    if not isinstance(getattr(emb, "word_embeddings", None), nn.Embedding):
        return None
    encoder = getattr(base, "encoder", None)
    if isinstance(getattr(encoder, "layer", None), nn.ModuleList) and all(
            has_submodules(x, _BERT) for x in encoder.layer):
        layers = encoder.layer
    elif isinstance(getattr(getattr(base, "transformer", None), "layer", None), nn.ModuleList) and all(
            has_submodules(x, _DISTIL) for x in base.transformer.layer):
        layers = base.transformer.layer
    else:
        return None
    if len(layers) == 0:
        return None
    layout = family_layout(model, layers)
    if layout is None:
        return None
    if getattr(emb, "embedding_size", layout.hidden) != layout.hidden or hasattr(base, "embeddings_project"):
        prefix = find_module(model, base) or ""
        layout.hidden_blockers.append(f"{prefix}.embeddings_project" if prefix else "embeddings_project")  # ELECTRA
    layout.family = "bert"
    return layout


class HFBertAdapter(HFTransformerAdapter):
    """Adapter for BERT-like HF encoders; ``HFBertAdapter(depth_order=[...])`` orders depth by importance."""

    name = "hf-bert"
    supported = ("transformers encoders with encoder.layer[*].attention.self.{query,key,value} or DistilBERT's "
                 "transformer.layer (model_type bert, roberta, xlm-roberta, electra, distilbert, …): depth, heads, "
                 "MLP, hidden")
    family = "bert"
    depth_auto = (0.5, 0.75, 1.0)

    def layout(self, model: nn.Module) -> Layout | None:
        return bert_layout(model)

    def update_config(self, config: Any, heads: int, mlp: int, hidden: int, layout: Layout) -> None:
        if getattr(config, "model_type", "") == "distilbert":
            config.n_heads, config.hidden_dim, config.dim = heads, mlp, hidden
        else:
            config.num_attention_heads, config.intermediate_size, config.hidden_size = heads, mlp, hidden


register_adapter(HFBertAdapter())
