"""Where a transformers model keeps things: :class:`Layout` (layer stacks, per layer its attention projections, MLP
and norms, plus embeddings, final norms and heads), written by a family adapter or discovered by
:mod:`~lightning_elastic.adapters.hf_generic`; :func:`lightning_elastic.adapters._hf.plan_layout` turns one into dims
and op specs. Also the structural tests the layouts rest on (peft LoRA wrapper, RMS norm, Linear / Conv1D sizes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from lightning_elastic.ops.conv1d import is_conv1d


@dataclass
class AttnLayout:
    module: str  # the attention module (its size attributes are kept in sync)
    q: str
    k: str
    v: str
    o: str
    head_dim: int
    num_heads: int
    num_kv: int
    head_attrs: Callable[[nn.Module, int], None] | None = None  # fn(attn_module, active_total_heads)
    interleaved: bool = False  # a fused qkv laid out per head, [heads, 3, head_dim] (GPT-NeoX), not [3, heads, ...]
    extra_out: list[str] = field(default_factory=list)  # more Linears with q's head layout (DeBERTa pos_*_proj)
    head_tables: list[str] = field(default_factory=list)  # Embeddings with one column per head (T5 relative bias)
    heads_blocker: str | None = None  # why the heads cannot be elastic (parameters no head axis explains), or None
    head_params: list[tuple[str, str, int]] = field(default_factory=list)  # (module, Parameter, head axis): Swin's
    # relative position bias table, sliced by an ElasticParams op

    @property
    def fused(self) -> bool:
        """One Linear computes q, k and v (``qkv_proj``): its output is three equal segments when ``num_kv ==
        num_heads``; with GQA the k/v parts are smaller, so its heads stay at full size."""
        return self.q == self.k == self.v

    def prefixed(self, p: Callable[[str], str]) -> AttnLayout:
        return AttnLayout(p(self.module), p(self.q), p(self.k), p(self.v), p(self.o), self.head_dim, self.num_heads,
                          self.num_kv, self.head_attrs, self.interleaved, [p(x) for x in self.extra_out],
                          [p(x) for x in self.head_tables], self.heads_blocker,
                          [(p(m), n, a) for m, n, a in self.head_params])


@dataclass
class LayerLayout:
    attn: AttnLayout | None  # None for attention-free blocks (ConvNeXt)
    mlp_in: list[str]  # Linear(s) producing the MLP hidden (gate, up / intermediate.dense / fc1)
    mlp_out: str  # Linear consuming it
    norms: list[str]  # residual-stream norms inside the layer
    mlp_segments: int = 1  # 2 for a fused gate/up Linear (Phi-3's ``gate_up_proj``: gate half, then up half)
    cross: AttnLayout | None = None  # cross-attention of an encoder-decoder's decoder layer

    @property
    def attns(self) -> list[tuple[str, AttnLayout]]:
        return [(n, a) for n, a in (("attn", self.attn), ("cross_attn", self.cross)) if a is not None]

    def prefixed(self, p: Callable[[str], str]) -> LayerLayout:
        return LayerLayout(self.attn and self.attn.prefixed(p), [p(m) for m in self.mlp_in], p(self.mlp_out),
                           [p(n) for n in self.norms], self.mlp_segments, self.cross and self.cross.prefixed(p))


@dataclass
class Stack:
    """One list of residual layers: its dims are named ``{name}.depth``, ``{name}.{i}.attn.heads`` …"""

    name: str
    path: str
    layer_list: list[LayerLayout]
    causal: bool = False
    shared_heads: bool = False  # one heads dim for every layer (T5 hands layer 0's position bias to all layers)


@dataclass
class Layout:
    """Where a family keeps things. Paths are qualified names inside the model handed to :func:`plan_layout`.

    ``layers`` / ``layer_list`` are the first (usually only) layer stack, named ``layers``; ``more_stacks`` holds the
    others (an encoder-decoder's decoder, a hierarchical model's later stages).
    """

    family: str
    layers: str
    layer_list: list[LayerLayout]
    hidden: int
    embeddings: list[str] = field(default_factory=list)  # nn.Embedding with the hidden size on axis 1
    norms: list[str] = field(default_factory=list)  # residual-stream norms outside the layers
    reads: list[str] = field(default_factory=list)  # Linears reading the residual stream (heads, pooler)
    writes: list[str] = field(default_factory=list)  # Linears writing it (pooler)
    hidden_blockers: list[str] = field(default_factory=list)  # modules that make an elastic hidden size impossible
    causal: bool = False
    bare: bool = False  # the model outputs hidden states itself: hidden channels must keep their order
    stack_name: str = "layers"
    shared_heads: bool = False
    more_stacks: list[Stack] = field(default_factory=list)

    @property
    def stacks(self) -> list[Stack]:
        return [Stack(self.stack_name, self.layers, self.layer_list, self.causal, self.shared_heads),
                *self.more_stacks]

    def prefixed(self, prefix: str) -> Layout:
        """The same layout seen from a wrapper (``prefix`` such as ``'base_model.model.'``)."""
        def p(path: str) -> str:
            return prefix + path

        more = [Stack(s.name, p(s.path), [la.prefixed(p) for la in s.layer_list], s.causal, s.shared_heads)
                for s in self.more_stacks]
        return Layout(self.family, p(self.layers), [la.prefixed(p) for la in self.layer_list], self.hidden,
                      [p(e) for e in self.embeddings], [p(n) for n in self.norms], [p(r) for r in self.reads],
                      [p(w) for w in self.writes], list(self.hidden_blockers), self.causal, self.bare,
                      self.stack_name, self.shared_heads, more)


def is_lora_layer(module: nn.Module) -> bool:
    """A peft LoRA wrapper (``lora.Linear`` & co.), recognised by structure so peft need not be imported."""
    return hasattr(module, "base_layer") and hasattr(module, "lora_A") and hasattr(module, "lora_B")


def is_rms_norm(module: nn.Module) -> bool:
    """An RMS norm of any class: a 1-D ``weight``, no ``bias`` and an ``eps`` / ``variance_epsilon``."""
    weight = getattr(module, "weight", None)
    return (not isinstance(module, nn.LayerNorm) and isinstance(weight, nn.Parameter) and weight.dim() == 1
            and getattr(module, "bias", None) is None and "norm" in type(module).__name__.lower()
            and (hasattr(module, "variance_epsilon") or hasattr(module, "eps")))


def features(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a Linear, a GPT-style Conv1D or a peft wrapper around either."""
    module = module.base_layer if is_lora_layer(module) else module
    if is_conv1d(module):
        return module.nx, module.nf
    return module.in_features, module.out_features
