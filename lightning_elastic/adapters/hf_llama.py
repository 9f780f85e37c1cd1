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
three (q, k, v), so a LoRA ``lora_B`` on them is sliced the same way. With GQA, the q rows of ``qkv_proj`` lose query
heads per KV group and the k/v rows stay (:mod:`~lightning_elastic.adapters.hf_fused`; those heads keep their order). Phi-3's attention reads the query width from
``self.config.num_attention_heads``, a config shared by all layers: on the first ``select`` each attention gets its
own shallow copy of the config (heads can differ per layer); a homogeneous export shares the model's config again.
With GQA and a LoRA on ``qkv_proj``, its heads stay at full size (``lora_B`` cannot follow the uneven segments).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from lightning_elastic.adapters._hf import OWN_CONFIG
from lightning_elastic.adapters.hf_base import (
    HFTransformerAdapter,
    has_submodules,
)
from lightning_elastic.adapters.hf_generic import family_layout
from lightning_elastic.adapters.hf_layout import Layout
from lightning_elastic.adapters.registry import register_adapter
from lightning_elastic.core.errors import ConfigError

_LAYER = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
          "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")
_FUSED = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj", "input_layernorm",
          "post_attention_layernorm")


def llama_layout(model: nn.Module) -> Layout | None:
    """Where a Llama-like model keeps things, or None when ``model`` is not one (the structure discovery of
    :mod:`~lightning_elastic.adapters.hf_generic`, with the family's head binding for fused attention and Gemma's
    hidden-size blocker)."""
    base = getattr(model, "base_model", model)
    layers = getattr(base, "layers", None)
    if not (isinstance(getattr(base, "embed_tokens", None), nn.Embedding) and isinstance(layers, nn.ModuleList)
            and hasattr(base, "norm") and len(layers) > 0):
        return None
    if not all(has_submodules(layer, _LAYER) or has_submodules(layer, _FUSED) for layer in layers):
        return None
    layout = family_layout(model, layers)
    if layout is None:
        return None
    for la in layout.layer_list:
        if la.attn is not None and la.attn.fused:
            la.attn.head_attrs = _set_fused_heads  # Phi-3 reads the query width from its config
    model_type = getattr(model.config, "model_type", "")
    if model_type.startswith("gemma"):
        # Gemma scales embeddings by sqrt(hidden_size) and uses (1 + weight) norms: no elastic hidden size there
        layout.hidden_blockers.append(model_type)
    layout.family, layout.causal = "llama", True
    return layout


def _set_fused_heads(attn: nn.Module, total: int) -> None:
    """Phi-3: the query width is read from ``self.config``; without GQA q, k and v lose the same heads, with GQA
    every KV head stays and ``num_key_value_groups`` follows."""
    if not attn.__dict__.get(OWN_CONFIG, False):
        attn.config = copy.copy(attn.config)  # per-layer heads: the model's config is shared by every layer
        attn.__dict__[OWN_CONFIG] = True
    full = attn.o_proj.weight.shape[1] // int(attn.head_dim)
    kv = (attn.qkv_proj.weight.shape[0] // int(attn.head_dim) - full) // 2
    attn.config.num_attention_heads = total
    if kv < full:
        attn.num_key_value_groups = total // kv
    else:
        attn.num_key_value_heads = total
        attn.num_key_value_groups = 1


class HFLlamaAdapter(HFTransformerAdapter):
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
