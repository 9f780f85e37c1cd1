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

from lightning_elastic.adapters._hf import (
    AttnLayout,
    HFTransformerAdapter,
    LayerLayout,
    Layout,
    find_module,
    has_submodules,
    head_parts,
)
from lightning_elastic.adapters.base import Adapter
from lightning_elastic.core.registry import register_adapter

_BERT = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
         "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")
_DISTIL = ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "sa_layer_norm",
           "ffn.lin1", "ffn.lin2", "output_layer_norm")


def _bert_heads(attn: nn.Module, total: int) -> None:
    attn.num_attention_heads = total
    attn.all_head_size = total * attn.attention_head_size


def _distil_heads(attn: nn.Module, total: int) -> None:
    attn.n_heads = total


def bert_layout(model: nn.Module) -> Layout | None:
    """Where a BERT-like (or DistilBERT-like) encoder keeps things, or None."""
    base = getattr(model, "base_model", model)
    emb = getattr(base, "embeddings", None)
    if not isinstance(getattr(emb, "word_embeddings", None), nn.Embedding):
        return None
    prefix = find_module(model, base) or ""
    p = f"{prefix}." if prefix else ""
    encoder = getattr(base, "encoder", None)
    if isinstance(getattr(encoder, "layer", None), nn.ModuleList) and all(
            has_submodules(x, _BERT) for x in encoder.layer):
        layers_path, layers, names, set_heads = f"{p}encoder.layer", encoder.layer, _BERT, _bert_heads
    elif isinstance(getattr(getattr(base, "transformer", None), "layer", None), nn.ModuleList) and all(
            has_submodules(x, _DISTIL) for x in base.transformer.layer):
        layers_path, layers, names, set_heads = f"{p}transformer.layer", base.transformer.layer, _DISTIL, _distil_heads
    else:
        return None
    if len(layers) == 0:
        return None
    hidden = emb.word_embeddings.embedding_dim
    layer_list = []
    for i in range(len(layers)):
        lp = f"{layers_path}.{i}"
        q, k, v, o, ln1, mlp_in, mlp_out, ln2 = (f"{lp}.{n}" for n in names)
        attn_path = q.rpartition(".")[0]
        attn = model.get_submodule(attn_path)
        head_size = int(attn.attention_head_size)
        heads = model.get_submodule(q).out_features // head_size
        layer_list.append(LayerLayout(AttnLayout(attn_path, q, k, v, o, head_size, heads, heads, set_heads),
                                      [mlp_in], mlp_out, [ln1, ln2]))
    embeddings = [f"{p}embeddings.{n}" for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")
                  if isinstance(getattr(emb, n, None), nn.Embedding)]
    norms = [f"{p}embeddings.LayerNorm"] if isinstance(getattr(emb, "LayerNorm", None), nn.LayerNorm) else []
    blockers = []
    if getattr(emb, "embedding_size", hidden) != hidden or hasattr(base, "embeddings_project"):
        blockers.append(f"{p}embeddings_project")  # ELECTRA-small style factorised embeddings
    reads, writes, head_norms = head_parts(model, prefix, hidden)
    pooler = getattr(base, "pooler", None)
    dense = getattr(pooler, "dense", None)
    if isinstance(getattr(dense, "base_layer", dense), nn.Linear):  # a peft wrapper is not an nn.Linear
        reads.append(f"{p}pooler.dense")
        writes.append(f"{p}pooler.dense")
    return Layout("bert", layers_path, layer_list, hidden, embeddings, norms + head_norms, reads, writes, blockers, bare=not prefix)


class HFBertAdapter(HFTransformerAdapter, Adapter):
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
