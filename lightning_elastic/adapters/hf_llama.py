"""Hugging Face Llama-family decoders (Llama, Mistral, Qwen2, Qwen3, Phi-3 …; ``*ForCausalLM`` and base models).

Matched by structure: a base model with ``embed_tokens``, a ``layers`` ModuleList and a final ``norm``, each layer with
``self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj`` and ``input_layernorm``/``post_attention_layernorm``; or the
fused Phi-3 layout ``self_attn.qkv_proj`` / ``mlp.gate_up_proj``.

Dimensions (see :mod:`lightning_elastic.adapters._hf`): ``layers.depth``, ``layers.{i}.attn.heads``,
``layers.{i}.mlp.hidden`` and, with ``embed_dim`` set, ``hidden``.

Grouped-query attention: all KV heads are kept and every KV group loses the same number of query heads, so a head
count must be a multiple of ``num_key_value_heads`` (``num_key_value_groups`` follows on every ``select``);
``head_dim`` is never sliced because RoPE rotates inside it. Without GQA (``num_key_value_heads == num_heads``)
whole heads (q, k, v) are dropped. Depth keeps layer 0 first: the KV cache reads its length from layer 0.

Fused Phi-3 layout: ``gate_up_proj`` is sliced as two segments (gate half, up half) and, without GQA, ``qkv_proj`` as
three (q, k, v), so a LoRA ``lora_B`` on them is sliced the same way. Phi-3's attention reads the query width from
``self.config.num_attention_heads``, a config shared by all layers: on the first ``select`` each attention gets its
own shallow copy of the config (heads can differ per layer); a homogeneous export shares the model's config again.
With GQA the k/v parts of ``qkv_proj`` are smaller than q, so there its heads stay at full size.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from lightning_elastic.adapters._hf import (
    OWN_CONFIG,
    AttnLayout,
    HFTransformerAdapter,
    LayerLayout,
    Layout,
    base_linear,
    find_module,
    has_submodules,
    head_parts,
)
from lightning_elastic.adapters.base import Adapter
from lightning_elastic.core.errors import ConfigError
from lightning_elastic.core.registry import register_adapter

_LAYER = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
          "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")
_FUSED = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj", "input_layernorm",
          "post_attention_layernorm")


def llama_layout(model: nn.Module) -> Layout | None:
    """Where a Llama-like model keeps things, or None when ``model`` is not one."""
    base = getattr(model, "base_model", model)
    layers = getattr(base, "layers", None)
    if not (isinstance(getattr(base, "embed_tokens", None), nn.Embedding) and isinstance(layers, nn.ModuleList)
            and hasattr(base, "norm") and len(layers) > 0):
        return None
    if all(has_submodules(layer, _LAYER) for layer in layers):
        fused = False
    elif all(has_submodules(layer, _FUSED) for layer in layers):
        fused = True
    else:
        return None
    prefix = find_module(model, base)
    p = f"{prefix}." if prefix else ""
    layer_list = [_layer_layout(layer, f"{p}layers.{i}", fused) for i, layer in enumerate(layers)]
    hidden = base.embed_tokens.embedding_dim
    reads, writes, head_norms = head_parts(model, prefix or "", hidden)
    model_type = getattr(model.config, "model_type", "")
    # Gemma scales embeddings by sqrt(hidden_size) and uses (1 + weight) norms: no elastic hidden size there
    blockers = [model_type] if model_type.startswith("gemma") else []
    return Layout("llama", f"{p}layers", layer_list, hidden, [f"{p}embed_tokens"], [f"{p}norm", *head_norms],
                  reads, writes, blockers, causal=True, bare=not prefix)


def _layer_layout(layer: nn.Module, lp: str, fused: bool) -> LayerLayout:
    attn = layer.self_attn
    head_dim = int(attn.head_dim)
    num_heads = base_linear(attn, "o_proj").in_features // head_dim
    norms = [f"{lp}.input_layernorm", f"{lp}.post_attention_layernorm"]
    if fused:
        num_kv = (base_linear(attn, "qkv_proj").out_features // head_dim - num_heads) // 2
        qkv = f"{lp}.self_attn.qkv_proj"
        return LayerLayout(AttnLayout(f"{lp}.self_attn", qkv, qkv, qkv, f"{lp}.self_attn.o_proj", head_dim, num_heads,
                                      num_kv, _set_fused_heads),
                           [f"{lp}.mlp.gate_up_proj"], f"{lp}.mlp.down_proj", norms, mlp_segments=2)
    num_kv = base_linear(attn, "k_proj").out_features // head_dim
    return LayerLayout(
        AttnLayout(f"{lp}.self_attn", *(f"{lp}.self_attn.{x}_proj" for x in "qkvo"), head_dim, num_heads, num_kv,
                   _set_heads),
        [f"{lp}.mlp.gate_proj", f"{lp}.mlp.up_proj"], f"{lp}.mlp.down_proj", norms)


def _set_fused_heads(attn: nn.Module, total: int) -> None:
    """Phi-3 (no GQA): q, k and v lose the same heads; the query width is read from ``self.config``."""
    if not attn.__dict__.get(OWN_CONFIG, False):
        attn.config = copy.copy(attn.config)  # per-layer heads: the model's config is shared by every layer
        attn.__dict__[OWN_CONFIG] = True
    attn.config.num_attention_heads = total
    attn.num_key_value_heads = total
    attn.num_key_value_groups = 1


def _set_heads(attn: nn.Module, total: int) -> None:
    kv = base_linear(attn, "k_proj").out_features // int(attn.head_dim)
    full = base_linear(attn, "q_proj").out_features // int(attn.head_dim)
    if kv < full:
        attn.num_key_value_groups = total // kv
    if hasattr(attn, "num_heads"):
        attn.num_heads = total


class HFLlamaAdapter(HFTransformerAdapter, Adapter):
    """Adapter for Llama-like HF decoders; ``HFLlamaAdapter(depth_order=[0, 3, 1, 2])`` orders depth by importance."""

    name = "hf-llama"
    supported = ("transformers decoders with layers[*].self_attn.{q,k,v,o}_proj + mlp.{gate,up,down}_proj "
                 "(model_type llama, mistral, qwen2, qwen3, …) or the fused qkv_proj / gate_up_proj layout (phi3): depth, "
                 "GQA-aware query heads, MLP, hidden")
    family = "llama"
    depth_auto = (0.75, 1.0)

    def __init__(self, depth_order: list[int] | None = None) -> None:
        if depth_order is not None and (not depth_order or depth_order[0] != 0):
            raise ConfigError(
                f"`depth_order` got {depth_order!r}; for decoders it must start with layer 0 (the KV cache reads the "
                "sequence length from layer 0). HINT: put 0 first, e.g. [0, 5, 3, …]."
            )
        super().__init__(depth_order)

    def layout(self, model: nn.Module) -> Layout | None:
        return llama_layout(model)

    def update_config(self, config: Any, heads: int, mlp: int, hidden: int, layout: Layout) -> None:
        at = layout.layer_list[0].attn
        config.head_dim = at.head_dim  # explicit: hidden_size // num_attention_heads no longer gives it
        if getattr(config, "num_key_value_heads", None) == getattr(config, "num_attention_heads", None):
            config.num_key_value_heads = heads  # MHA: whole heads were dropped
        config.num_attention_heads = heads
        config.intermediate_size = mlp
        config.hidden_size = hidden


register_adapter(HFLlamaAdapter())
