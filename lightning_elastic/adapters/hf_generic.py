"""Any Hugging Face transformer: the :class:`~lightning_elastic.adapters.hf_layout.Layout` discovered from structure.

Registered after the family adapters (BERT, Llama, ViT), so it handles what they do not: GPT-2, OPT, GPT-NeoX, T5,
DeBERTa-v2, ModernBERT, CLIP, Swin, ConvNeXt, BART, …

Discovery (:func:`discover_layout`), touching nothing:
    stacks: the innermost ``nn.ModuleList`` s of blocks of one class, each block holding Linears (GPT-2's ``Conv1D``
        too); several stacks (T5's encoder and decoder, Swin's stages) get dims named after their paths.
    attention: a module with q/k/v children (``q_proj``, ``query``, ``q``, ``q_lin``, ``query_proj``, …) or a fused
        one (``c_attn``, ``qkv_proj``, ``Wqkv``: three equal segments; GPT-NeoX's ``query_key_value``: per head
        ``[3, head_dim]``), its output projection (``o_proj``, ``out_proj``, ``o``, ``dense``, ``c_proj``, ``Wo`` or
        BERT-style ``output.dense`` beside it); ``head_dim`` from the module's attributes (``head_dim``,
        ``attention_head_size``, ``head_size``, ``key_value_proj_dim``) or the config. More Linears with q's layout
        (DeBERTa's ``pos_*_proj``) and Embeddings with one column per head (T5's relative bias) follow the heads. A
        second attention in a block is cross-attention. Head-count attributes the module holds (``num_heads``,
        ``n_heads``, ``all_head_size``, ``inner_dim``, ``split_size``, …) follow every ``select``.
    MLP: the one Linear writing the residual width and the Linear(s) reading it into that MLP width (two for gate/up,
        one of twice the width for a fused GLU such as ModernBERT's ``Wi``).
Everything else holding parameters in a block must be a norm over the residual width: a tensor sized like the MLP
width elsewhere is an error naming that module. A submodule of an attention whose every Parameter has exactly one
axis of the head count (Swin's relative position bias table) is sliced along it by an
:class:`~lightning_elastic.ops.params.ElasticParams` op; any other parameters inside an attention (ALBERT's LayerNorm
there) keep that attention's heads fixed (an explicit ``heads`` request is then an error naming them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from lightning_elastic.adapters.hf_base import HFTransformerAdapter, find_module
from lightning_elastic.adapters.hf_layout import (
    AttnLayout,
    LayerLayout,
    Layout,
    Stack,
    features,
    is_lora_layer,
    is_rms_norm,
)
from lightning_elastic.adapters.registry import register_adapter
from lightning_elastic.core.errors import ConversionError
from lightning_elastic.ops.conv1d import is_conv1d

_Q = ("q_proj", "query", "q", "q_lin", "query_proj", "Wq")
_K = ("k_proj", "key", "k", "k_lin", "key_proj", "Wk")
_V = ("v_proj", "value", "v", "v_lin", "value_proj", "Wv")
_FUSED = ("qkv_proj", "c_attn", "Wqkv", "query_key_value")
_O = ("o_proj", "out_proj", "o", "out_lin", "dense", "c_proj", "Wo")
_INTERLEAVED = {"query_key_value": ("gpt_neox", "gpt_neox_japanese", "bloom")}  # per head [q, k, v]
_HEAD_DIM = ("head_dim", "attention_head_size", "head_size", "key_value_proj_dim")
_HEAD_COUNT = ("num_heads", "num_attention_heads", "n_heads", "n_head")
_HEAD_SIZE = ("all_head_size", "inner_dim", "split_size")
_MLP_KEYS = ("intermediate_size", "ffn_dim", "n_inner", "d_ff", "encoder_ffn_dim", "decoder_ffn_dim")
_HEAD_DIM_KEYS = ("head_dim", "d_kv", "attention_head_size")
_HEAD_DIM_FAMILY = {"deberta-v2": "attention_head_size"}  # read with getattr(config, ...) although not a default key


class _Blocked(Exception):
    """A block the discovery cannot describe; the message names the module."""


def _linear(module: nn.Module) -> bool:
    base = module.base_layer if is_lora_layer(module) else module
    return isinstance(base, nn.Linear) or is_conv1d(base)


def _walk(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    """``named_modules`` that treats a peft LoRA wrapper as one leaf."""
    yield prefix, module
    if is_lora_layer(module):
        return
    for name, child in module.named_children():
        yield from _walk(child, f"{prefix}.{name}" if prefix else name)


def _child(module: nn.Module, names: tuple[str, ...]) -> str | None:
    children = dict(module.named_children())
    return next((n for n in names if n in children and _linear(children[n])), None)


def _int_attr(module: nn.Module, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = module.__dict__.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _head_setter(attn: nn.Module, heads: int, head_dim: int, kv: int) -> Callable[[nn.Module, int], None] | None:
    """Binds the attention's cached head counts / sizes (those equal to the full values now) to the heads dim."""
    counts = [n for n in _HEAD_COUNT if attn.__dict__.get(n) == heads]
    sizes = [n for n in _HEAD_SIZE if attn.__dict__.get(n) == heads * head_dim]
    if kv == heads and attn.__dict__.get("num_key_value_heads") == heads:
        counts.append("num_key_value_heads")
    groups = kv < heads and attn.__dict__.get("num_key_value_groups") == heads // kv
    if not (counts or sizes or groups):
        return None

    def set_heads(module: nn.Module, total: int) -> None:
        for name in counts:
            setattr(module, name, total)
        for name in sizes:
            setattr(module, name, total * head_dim)
        if groups:
            module.num_key_value_groups = total // kv
    return set_heads


def _attention(model: nn.Module, path: str, attn: nn.Module, model_type: str, config: Any) -> AttnLayout:
    fused = _child(attn, _FUSED)
    q, k, v = _child(attn, _Q), _child(attn, _K), _child(attn, _V)
    used = {fused} if fused else {q, k, v}
    o = next((n for n in _O if n not in used and _child(attn, (n,))), None)
    o_path = f"{path}.{o}" if o else None
    parent = path.rpartition(".")[0]
    if o_path is None and parent:
        try:
            if _linear(model.get_submodule(f"{parent}.output.dense")):
                o_path = f"{parent}.output.dense"  # BERT style: attention.self + attention.output.dense
        except AttributeError:
            pass
    if o_path is None:
        raise _Blocked(f"attention {path!r} ({type(attn).__name__}) has no output projection named one of {_O}")
    o_in, hidden = features(model.get_submodule(o_path))
    head_dim = _int_attr(attn, _HEAD_DIM)
    if head_dim is None:
        count = _int_attr(attn, _HEAD_COUNT) or getattr(config, "num_attention_heads", None)
        head_dim = o_in // count if isinstance(count, int) and count and o_in % count == 0 else None
    if not head_dim or o_in % head_dim:
        raise _Blocked(f"attention {path!r} ({type(attn).__name__}): cannot tell its head size (no attribute among "
                       f"{_HEAD_DIM}, and `config.num_attention_heads` does not divide {o_in})")
    heads = o_in // head_dim
    interleaved = False
    if fused:
        q = k = v = f"{path}.{fused}"
        out = features(model.get_submodule(q))[1]
        if fused in _INTERLEAVED:
            if model_type not in _INTERLEAVED[fused] or out != 3 * o_in:
                raise _Blocked(f"{q!r}: fused `{fused}` of model_type {model_type!r} has no known q/k/v layout")
            interleaved, kv = True, heads
        elif (out - o_in) % (2 * head_dim) == 0 and out > o_in:
            kv = (out - o_in) // (2 * head_dim)
        else:
            raise _Blocked(f"{q!r}: {out} fused outputs do not split into q, k and v of {heads} heads of {head_dim}")
    else:
        q, k, v = f"{path}.{q}", f"{path}.{k}", f"{path}.{v}"
        kv = features(model.get_submodule(k))[1] // head_dim
        if features(model.get_submodule(q))[1] != o_in or features(model.get_submodule(v))[1] != kv * head_dim:
            raise _Blocked(f"attention {path!r}: q/k/v widths do not match {heads} heads of {head_dim}")
    known = {q, k, v, o_path}
    extra, tables, params, blocker = [], [], [], None
    for name, module in _walk(attn, path):
        if name in known:
            continue
        if _linear(module) and features(module) == (hidden, o_in) and not fused:
            extra.append(name)  # DeBERTa's pos_key_proj / pos_query_proj: the same head layout as q
        elif isinstance(module, nn.Embedding) and module.embedding_dim == heads:
            tables.append(name)  # T5's relative attention bias: one column per head
        elif any(True for _ in module.parameters(recurse=False)) and not is_lora_layer(module):
            own = list(module.named_parameters(recurse=False))
            axes = [[i for i, n in enumerate(p.shape) if n == heads] for _, p in own]
            if (name != path and heads != hidden and not isinstance(module, nn.Linear | nn.LayerNorm)
                    and all(len(a) == 1 for a in axes)):
                params += [(name, pname, a[0]) for (pname, _), a in zip(own, axes)]  # one column per head (Swin)
            else:
                blocker = blocker or (f"{name!r} ({type(module).__name__}) holds parameters "
                                      f"{[n for n, _ in own][:3]} the heads cannot slice")
    return AttnLayout(path, q, k, v, o_path, head_dim, heads, kv, _head_setter(attn, heads, head_dim, kv), interleaved,
                      extra, tables, blocker, params)


def _layer(model: nn.Module, lp: str, layer: nn.Module, model_type: str, config: Any) -> tuple[LayerLayout, list[str]]:
    """The layout of one block and the modules in it that block an elastic hidden size."""
    found = []
    for name, module in _walk(layer, lp):
        if any(name.startswith(f"{a}.") for a, _ in found) or is_lora_layer(module) or module is layer:
            continue
        if _child(module, _FUSED) or (_child(module, _Q) and _child(module, _K) and _child(module, _V)):
            found.append((name, module))
    if len(found) > 2:
        raise _Blocked(f"block {lp!r} has {len(found)} attention modules {[a for a, _ in found]}, more than self- "
                       "and cross-attention")
    attns = [_attention(model, name, module, model_type, config) for name, module in found]
    inside = [f"{a.module}." for a in attns]
    taken = {p for a in attns for p in (a.q, a.k, a.v, a.o, *a.extra_out, *a.head_tables)}
    rest = [(n, m) for n, m in _walk(layer, lp) if _linear(m) and n not in taken
            and not any(n.startswith(p) for p in inside)]
    if attns:
        hidden = features(model.get_submodule(attns[0].o))[1]
        outs = [n for n, m in rest if features(m)[1] == hidden]
    else:  # attention-free block (ConvNeXt): the Linear pair that returns to its input width
        outs = [n for n, m in rest if any(features(m) == features(x)[::-1] for _, x in rest)]
        outs = [n for n in outs if features(model.get_submodule(n))[0] > features(model.get_submodule(n))[1]]
        hidden = features(model.get_submodule(outs[0]))[1] if len(outs) == 1 else 0
    if len(outs) != 1:
        raise _Blocked(f"block {lp!r}: cannot tell its MLP output (one Linear writing the residual width) among "
                       f"{outs or [n for n, _ in rest]}")
    mlp_out = outs[0]
    width = features(model.get_submodule(mlp_out))[0]
    ins = [n for n, m in rest if n != mlp_out and features(m)[0] == hidden and features(m)[1] in (width, 2 * width)]
    segments = {features(model.get_submodule(n))[1] // width for n in ins}
    left = [n for n, _ in rest if n not in ins and n != mlp_out]
    if not ins or len(segments) != 1 or (2 in segments and len(ins) != 1) or left:
        raise _Blocked(f"block {lp!r}: Linears {left or ins} are neither attention nor a {hidden} -> {width} -> "
                       f"{hidden} MLP")
    known = taken | {mlp_out, *ins}
    norms, hidden_blockers = [], []
    for name, module in _walk(layer, lp):
        params = [p for p in module.parameters(recurse=False)]
        if name in known or not params or any(name.startswith(p) for p in inside) or is_lora_layer(module):
            continue
        if isinstance(module, nn.LayerNorm) and tuple(module.normalized_shape) == (hidden,) or (
                is_rms_norm(module) and module.weight.shape == (hidden,)):
            norms.append(name)
            continue
        if width != hidden and any(width in p.shape for p in params):
            raise _Blocked(f"{name!r} ({type(module).__name__}) holds tensors of the MLP width {width} outside the "
                           "MLP Linears")
        hidden_blockers.append(name)
    cross = attns[1] if len(attns) == 2 else None
    return LayerLayout(attns[0] if attns else None, ins, mlp_out, norms, segments.pop(), cross), hidden_blockers


def _stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Innermost ModuleLists of same-class blocks that hold Linears."""
    found = []
    for name, module in model.named_modules():
        blocks = list(module._modules.values())  # every block, also of a converted (depth-elastic) list
        if (isinstance(module, nn.ModuleList) and blocks and len({type(m) for m in blocks}) == 1
                and sum(1 for _, m in _walk(blocks[0], "") if _linear(m)) >= 2
                and not any(is_lora_layer(p) for p in _parents(model, name))):
            found.append((name, module))
    return [(n, m) for n, m in found if not any(o.startswith(f"{n}.") for o, _ in found)]


def _parents(model: nn.Module, name: str) -> list[nn.Module]:
    parts = name.split(".")
    return [model.get_submodule(".".join(parts[:i])) for i in range(1, len(parts))]


def family_layout(model: nn.Module, layers: nn.Module | None = None) -> Layout | None:
    """The discovered layout if it is one stack (found at ``layers`` when given), else None: what a family adapter's
    ``layout`` starts from. Anything else is left to ``hf-generic``, whose error explains what blocks it."""
    try:
        layout = discover_layout(model)
    except ConversionError:
        return None
    if layout is None or layout.more_stacks:
        return None
    if layers is not None and find_module(model, layers) != layout.layers:
        return None
    return layout


def discover_layout(model: nn.Module) -> Layout | None:
    """The layout of any HF transformer, found from structure (see the module doc); None without a layer stack.

    Raises:
        ConversionError: a stack was found but one of its blocks cannot be described; the message names the module.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "model_type"):
        return None
    stacks = _stacks(model)
    if not stacks:
        return None
    model_type = str(config.model_type)
    base = getattr(model, "base_model", model)
    prefix = find_module(model, base) or ""
    built, hidden_blockers = [], []
    for path, layers in stacks:
        layer_list = []
        for i, layer in enumerate(layers._modules.values()):
            try:
                la, blockers = _layer(model, f"{path}.{i}", layer, model_type, config)
            except _Blocked as err:
                raise ConversionError(
                    f"the generic transformers adapter cannot convert {type(model).__name__} (model_type "
                    f"{model_type!r}): {err}; allowed: blocks of attention (q/k/v or fused qkv, an output projection) "
                    "plus a Linear MLP and norms. HINT: register an adapter with a `layout(model)` for this family "
                    "(see lightning_elastic/adapters/hf_llama.py)."
                ) from None
            layer_list.append(la)
            hidden_blockers += blockers
        name = "layers" if len(stacks) == 1 else path[len(prefix) + 1:] if prefix and path.startswith(prefix) else path
        causal = "decoder" in path or any(getattr(model.get_submodule(at.module), "is_causal", False) is True
                                          for _, at in layer_list[0].attns)
        shared = any(la.attn is not None and la.attn.head_tables for la in layer_list) and not all(
            la.attn is not None and la.attn.head_tables for la in layer_list)
        built.append(Stack(name, path, layer_list, causal, shared))
    first = built[0]
    hidden = features(model.get_submodule(first.layer_list[0].mlp_out))[1]
    reads, writes, norms, embeddings = [], [], [], []
    if len(built) > 1:
        hidden_blockers.append(f"{len(built)} layer stacks ({[s.path for s in built]})")
    else:
        _outside(model, first.path, hidden, reads, writes, norms, embeddings, hidden_blockers)
    return Layout("generic", first.path, first.layer_list, hidden, embeddings, norms, reads, writes, hidden_blockers,
                  first.causal, base is model, first.name, first.shared_heads, built[1:])


def _outside(model: nn.Module, stack: str, hidden: int, reads: list[str], writes: list[str], norms: list[str],
             embeddings: list[str], blockers: list[str]) -> None:
    """Sort the modules outside the layer stack that touch the hidden width (embeddings, norms, heads)."""
    for name, module in _walk(model, ""):
        if name == stack or name.startswith(f"{stack}.") or any(is_lora_layer(p) for p in _parents(model, name)):
            continue
        params = list(module.parameters(recurse=False)) if not is_lora_layer(module) else [module.base_layer.weight]
        if not params or not any(hidden in p.shape for p in params):
            continue
        if isinstance(module, nn.Embedding) and module.embedding_dim == hidden:
            embeddings.append(name)
        elif (isinstance(module, nn.LayerNorm) and tuple(module.normalized_shape) == (hidden,)) or (
                is_rms_norm(module) and module.weight.shape == (hidden,)):
            norms.append(name)
        elif _linear(module):
            fin, fout = features(module)
            if fin == hidden:
                reads.append(name)
            if fout == hidden:
                writes.append(name)
        else:
            blockers.append(name)


class HFGenericAdapter(HFTransformerAdapter):
    """Any transformers model whose blocks are attention + MLP (+ norms); the family adapters take precedence."""

    name = "hf-generic"
    supported = ("any other transformers model built from blocks of attention (q/k/v or fused qkv + output "
                 "projection) and a Linear MLP (model_type gpt2, opt, gpt_neox, t5, deberta-v2, modernbert, clip, "
                 "swin, convnext, bart, …): depth per layer stack, heads, MLP, hidden (one stack)")
    family = "generic"
    depth_auto = (0.5, 0.75, 1.0)

    fallback = True

    def matches(self, model: nn.Module) -> bool:
        if type(model).__module__.startswith("peft.") or not hasattr(model, "config"):
            return False
        from lightning_elastic.adapters.registry import registered_adapters

        # family adapters win whatever the import (registration) order
        if any(isinstance(a, HFTransformerAdapter) and not a.fallback and a.matches(model)
               for a in registered_adapters().values()):
            return False
        try:
            return self.layout(model) is not None
        except ConversionError:
            return True  # ours to explain: plan() raises the error naming the module

    def layout(self, model: nn.Module) -> Layout | None:
        return discover_layout(model)

    def update_config(self, config: Any, heads: int, mlp: int, hidden: int, layout: Layout) -> None:
        keys = config.to_dict()
        if heads:
            config.num_attention_heads = heads  # attribute_map: n_head (GPT-2), num_heads (T5), …
            at = next(la.attn for s in layout.stacks for la in s.layer_list if la.attn is not None)
            for key in _HEAD_DIM_KEYS:
                if key in keys or _HEAD_DIM_FAMILY.get(config.model_type) == key:
                    setattr(config, key, at.head_dim)
        for key in _MLP_KEYS:
            if key in keys and (keys[key] is None or isinstance(keys[key], int)):
                setattr(config, key, mlp)
        if isinstance(getattr(config, "hidden_size", None), int):
            config.hidden_size = hidden

    def update_depths(self, config: Any, layout: Layout, kept: dict[str, list[int]]) -> None:
        if len(kept) == 1:
            return super().update_depths(config, layout, kept)
        counts = {name: len(v) for name, v in kept.items()}
        enc = [n for name, n in counts.items() if "encoder" in name]
        dec = [n for name, n in counts.items() if "decoder" in name]
        keys = config.to_dict()
        if len(enc) == 1 and len(dec) == 1:
            for key, value in (("num_layers", enc[0]), ("num_decoder_layers", dec[0]), ("encoder_layers", enc[0]),
                               ("decoder_layers", dec[0])):
                if key in keys:
                    setattr(config, key, value)
        elif isinstance(keys.get("depths"), list) and len(keys["depths"]) == len(counts):
            config.depths = list(counts.values())


register_adapter(HFGenericAdapter())
