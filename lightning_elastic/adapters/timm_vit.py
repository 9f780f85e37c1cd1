"""timm VisionTransformer family: ViT, DeiT (incl. distilled), register tokens, avg pooling, LayerScale, GLU MLPs.

Dimensions (AutoFormer-like):
    ``depth``: transformer blocks kept (trailing blocks are dropped; with calibration data the least influential,
        see ``SearchSpaceConfig.depth_importance``).
    ``blocks.{i}.attn.heads``: attention heads of block ``i`` (fused qkv rows and proj columns, ``head_dim`` fixed).
    ``blocks.{i}.mlp.hidden``: MLP hidden width of block ``i``, i.e. ``fc2``'s in-features (``fc1`` out; for
        GluMlp / SwiGLU both the gate and the value halves).
    ``embed_dim``: the width of the residual stream, one global dim (patch embedding, tokens, position embedding,
        every norm, LayerScale, the in-features of qkv / fc1 / head and the out-features of proj / fc2).

Defaults for ``'auto'``: depth ``{n-2..n}``, heads ``{H-2..H}`` (AutoFormer-S uses heads {5, 6, 7} of 7), MLP hidden
ratios ``(0.75, 0.875, 1.0)`` of the full hidden (AutoFormer's mlp ratios {3, 3.5, 4} for a ratio-4 model), embed dim
ratios ``(0.8, 0.9, 1.0)`` (AutoFormer-T: {192, 216, 240}). ``mlp_ratio`` (absolute ratios of the *full* embed dim,
e.g. ``(3.0, 3.5, 4.0)``) takes precedence over ``width``. ``embed_dim`` is off unless asked for.

AutoFormer-T as a space: build the supernet ``timm.create_model("vit_tiny_patch16_224", embed_dim=240, depth=14,
num_heads=4)`` and convert with ``SearchSpaceConfig(depth=(12, 13, 14), heads=(3, 4), mlp_ratio=(3.5, 4.0),
embed_dim=(192, 216, 240))``. One difference: AutoFormer's hidden is ``ratio × sampled embed dim``, here dims are
independent, so hidden choices are ``ratio × full embed dim``; for AutoFormer's exact products list them with
``overrides={"blocks.*.mlp.hidden": sorted({int(r * e) for r in ratios for e in embeds})}`` (a superset).

Why the embed dim uses a per-instance ``_pos_embed``: ``cls_token`` / ``reg_token`` / ``dist_token`` / ``pos_embed``
are Parameters of the model itself, read by ``VisionTransformer._pos_embed``. The adapter sets the instance attribute
``model._pos_embed`` to a ``functools.partial`` that runs the class's own ``_pos_embed`` on the zero-padded stream and
cuts the result back to the active width. Concatenating tokens and adding the position embedding act on each channel
independently, so this equals the sliced computation, and it keeps every timm variant (distilled, no_embed_class,
register tokens, dynamic image size) without copying timm code. Parameter names are unchanged, ``__class__`` is not
patched, and ``finalize_export`` deletes the attribute and slices the Parameters physically.
"""

from __future__ import annotations

import fnmatch
import json
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_elastic.adapters.base import Adapter, ConversionPlan, LayerStack
from lightning_elastic.adapters.kit import OpSpecs, couple_in, couple_out
from lightning_elastic.adapters.registry import register_adapter
from lightning_elastic.core.config import SearchSpaceConfig, resolve_choices
from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.core.errors import ConfigError, ConversionError, ExportError
from lightning_elastic.ops.base import Axis, ElasticOp, as_axis
from lightning_elastic.ops.depth import ElasticSequential
from lightning_elastic.ops.rmsnorm import ElasticRMSNorm

AUTO_MLP = (0.75, 0.875, 1.0)
AUTO_EMBED = (0.8, 0.9, 1.0)
_TOKENS = ("cls_token", "reg_token", "dist_token", "pos_embed")


def auto_depth(n: int) -> list[int]:
    """AutoFormer: drop up to two trailing blocks."""
    return list(range(max(1, n - 2), n + 1))


def auto_heads(h: int) -> list[int]:
    """AutoFormer-like: up to two heads fewer than the full count."""
    return list(range(max(1, h - 2), h + 1))


class _ElasticLayerScale(nn.Module, ElasticOp):
    """timm ``LayerScale`` (a per-channel ``gamma``) with an elastic channel count; exports to the original class."""

    @classmethod
    def from_module(cls, module: nn.Module, axis: ElasticDim | Axis) -> _ElasticLayerScale:
        new = cls._adopt(module)
        new.axis = as_axis(axis)
        new._slices = {"gamma": [(0, new.axis)]}
        return new

    def forward(self, x):
        if self.is_full():
            return self._base_cls.forward(self, x)
        (gamma,) = self.sliced("gamma")
        return x.mul_(gamma) if getattr(self, "inplace", False) else x * gamma


def _sliced_pos_embed(model: nn.Module, embed: ElasticDim, x: torch.Tensor) -> torch.Tensor:
    """The class's own ``_pos_embed`` on the stream zero-padded to full width, cut back to the active width."""
    fn = type(model)._pos_embed
    if embed.active == embed.full:
        return fn(model, x)
    return fn(model, F.pad(x, (0, embed.full - x.shape[-1])))[..., : embed.active]


def _set_heads(attn: nn.Module, value: int) -> None:
    # a module-level function in a partial, so deepcopy/pickle of the supernet rebinds it to the copy
    attn.num_heads = value
    if hasattr(attn, "attn_dim"):
        attn.attn_dim = value * attn.head_dim


def _install_pos_embed(model: nn.Module, embed: ElasticDim) -> None:
    model.__dict__["_pos_embed"] = partial(_sliced_pos_embed, model, embed)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or "rmsnorm" in type(module).__name__.lower()


def _set_norm(specs: OpSpecs, plan: ConversionPlan, name: str, module: nn.Module, axis: ElasticDim | Axis) -> None:
    # timm's ``RmsNorm`` is not matched by the generic op_class (it looks for "RMSNorm"), so replace it here
    if isinstance(module, nn.LayerNorm):
        specs.set(name, axis=axis)
    else:
        plan.replace(name, partial(ElasticRMSNorm.from_module, axis=axis))


class TimmViTAdapter(Adapter):
    name = "timm-vit"
    supported = ("timm VisionTransformer / DeiT (incl. distilled) with Block + Attention and Mlp / GluMlp / SwiGLU: "
                 "depth, heads, MLP hidden, embed dim")

    def matches(self, model: nn.Module) -> bool:
        try:
            from timm.models.vision_transformer import VisionTransformer
        except ImportError:  # pragma: no cover
            return False
        return isinstance(model, VisionTransformer)

    # -- planning ------------------------------------------------------------------------------------------
    def plan(self, model: nn.Module, config: SearchSpaceConfig) -> ConversionPlan:
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, nn.Sequential) or len(blocks) == 0:
            raise ConversionError(
                f"`model.blocks` is {type(blocks).__name__} with no blocks; the timm-vit adapter needs a non-empty "
                "nn.Sequential of transformer blocks. HINT: build the model with depth >= 1."
            )
        mlp_kinds = [self._check_block(f"blocks.{i}", b) for i, b in enumerate(blocks)]
        plan = ConversionPlan(meta=self.describe(model))
        specs = OpSpecs(model)
        n = len(blocks)
        depth = ElasticDim("depth", auto_depth(n) if config.depth == "auto" else
                           resolve_choices(config.depth, n, None, "depth"), n, kind="depth")
        plan.dims.append(depth)
        plan.replace("blocks", lambda m, d=depth: ElasticSequential.from_module(m, d))
        plan.layer_stacks[depth.name] = LayerStack("blocks")  # pre-norm residual blocks: any subset can run
        embed = self._plan_embed(model, config, plan, specs)
        for i, (block, kind) in enumerate(zip(blocks, mlp_kinds)):
            self._plan_heads(f"blocks.{i}", block.attn, config, plan, specs)
            self._plan_mlp(f"blocks.{i}", block.mlp, kind, model, config, plan, specs)
        specs.emit(plan)
        if embed is not None:
            # last, so a failure in an earlier after_apply step cannot leave it behind
            plan.after_apply.append(partial(_install_pos_embed, model, embed))
        return plan

    def _check_block(self, prefix: str, block: nn.Module) -> str:
        from timm.layers import GluMlp, Mlp, SwiGLU
        from timm.layers.attention import Attention
        from timm.models.vision_transformer import Block

        if type(block) is not Block:
            raise ConversionError(
                f"`{prefix}` is a {type(block).__name__}; the timm-vit adapter supports the pre-norm timm `Block` "
                "(attn + mlp with residuals). HINT: register an adapter for this block type, or use a ViT built with "
                "the default block_fn."
            )
        if type(block.attn) is not Attention:
            raise ConversionError(
                f"`{prefix}.attn` is a {type(block.attn).__name__}; supported: timm.layers.Attention (fused qkv). "
                "HINT: register an adapter for this attention type."
            )
        mlp = block.mlp
        for kind, cls, linears in (("glu", GluMlp, ("fc1", "fc2")), ("swiglu", SwiGLU, ("fc1_g", "fc1_x", "fc2")),
                                   ("mlp", Mlp, ("fc1", "fc2"))):
            if type(mlp) is cls and all(isinstance(getattr(mlp, n, None), nn.Linear) for n in linears):
                return kind
        raise ConversionError(
            f"`{prefix}.mlp` is a {type(mlp).__name__}; supported: Mlp, GluMlp / SwiGLUPacked and SwiGLU with "
            "nn.Linear layers. HINT: register an adapter for this MLP type."
        )

    def _embed_requested(self, config: SearchSpaceConfig, choices: list[int]) -> bool:
        return len(choices) > 1 or any(fnmatch.fnmatchcase("embed_dim", p) for p in config.overrides)

    def _plan_embed(self, model: nn.Module, config: SearchSpaceConfig, plan: ConversionPlan,
                    specs: OpSpecs) -> ElasticDim | None:
        pe = model.patch_embed
        proj = getattr(pe, "proj", None)
        full = model.embed_dim
        choices = resolve_choices(config.embed_dim, full, AUTO_EMBED, "embed_dim")
        problems = []
        if not isinstance(proj, nn.Conv2d) or proj.out_channels != full:
            problems.append(f"patch_embed.proj is {type(proj).__name__} (need an nn.Conv2d with {full} outputs)")
        if getattr(model, "attn_pool", None) is not None:
            problems.append(f"global_pool={model.global_pool!r} uses an attention-pool head")
        norms = {n: _maybe(model, n) for n in ("patch_embed.norm", "norm_pre", "norm", "fc_norm")}
        problems += [f"{n} is a {type(m).__name__}" for n, m in norms.items()
                     if m is not None and not isinstance(m, nn.Identity) and not _is_norm(m)]
        if problems:
            if self._embed_requested(config, choices):
                asked = f"`embed_dim`={config.embed_dim!r}" if len(choices) > 1 else "an `overrides` entry for embed_dim"
                raise ConversionError(
                    f"{asked} asks for an elastic embed dim, impossible on this model: {'; '.join(problems)}. "
                    "Supported: a Conv2d patch embedding, LayerNorm/RMSNorm norms and token/avg pooling. "
                    "HINT: pass embed_dim=None and no embed_dim override (depth, heads and MLP hidden stay elastic)."
                )
            return None
        embed = ElasticDim("embed_dim", choices, full, kind="width")
        plan.dims.append(embed)
        group = embed.couple()
        specs.set("patch_embed.proj", out_axis=embed)
        couple_out(group, proj)
        for name, module in norms.items():
            if module is not None and _is_norm(module):
                _set_norm(specs, plan, name, module, embed)
                couple_out(group, module)
        for name in _TOKENS:
            if isinstance(getattr(model, name, None), nn.Parameter):
                group.add(model, name, 2, scores=False)
        for name in ("head", "head_dist"):
            module = getattr(model, name, None)
            if isinstance(module, nn.Linear):
                specs.set(name, in_axis=embed)
                couple_in(group, module, scores=True)
        for i, block in enumerate(model.blocks):
            p = f"blocks.{i}"
            for norm in ("norm1", "norm2"):
                _set_norm(specs, plan, f"{p}.{norm}", getattr(block, norm), embed)
                couple_out(group, getattr(block, norm))
            for name in ("attn.qkv", "attn.gate", "mlp.fc1", "mlp.fc1_g", "mlp.fc1_x"):
                module = _maybe(block, name)
                if isinstance(module, nn.Linear):
                    specs.set(f"{p}.{name}", in_axis=embed)
                    couple_in(group, module, scores=True)
            for name in ("attn.proj", "mlp.fc2"):
                specs.set(f"{p}.{name}", out_axis=embed)
                couple_out(group, block.get_submodule(name))
            for name in ("ls1", "ls2"):
                ls = getattr(block, name)
                if isinstance(getattr(ls, "gamma", None), nn.Parameter):
                    group.add(ls, "gamma", 0, scores=False)
                    plan.replace(f"{p}.{name}", partial(_ElasticLayerScale.from_module, axis=embed))
        return embed

    def _plan_heads(self, prefix: str, attn: nn.Module, config: SearchSpaceConfig, plan: ConversionPlan,
                    specs: OpSpecs) -> None:
        full, hd = attn.num_heads, attn.head_dim
        choices = auto_heads(full) if config.heads == "auto" else resolve_choices(config.heads, full, None, "heads")
        heads = ElasticDim(f"{prefix}.attn.heads", choices, full, kind="heads")
        plan.dims.append(heads)
        group = heads.couple()
        qkv_axis, axis = Axis(heads, unit=hd, segments=3), Axis(heads, unit=hd)
        specs.set(f"{prefix}.attn.qkv", out_axis=qkv_axis)
        couple_out(group, attn.qkv, qkv_axis)
        specs.set(f"{prefix}.attn.proj", in_axis=axis)
        couple_in(group, attn.proj, axis, scores=True)
        if isinstance(getattr(attn, "gate", None), nn.Linear):
            specs.set(f"{prefix}.attn.gate", out_axis=axis)
            couple_out(group, attn.gate, axis)
        if _is_norm(attn.norm):  # scale_attn_norm: a norm over heads * head_dim
            _set_norm(specs, plan, f"{prefix}.attn.norm", attn.norm, axis)
            couple_out(group, attn.norm, axis)
        plan.after_apply.insert(0, partial(heads.on_change, partial(_set_heads, attn)))

    def _plan_mlp(self, prefix: str, mlp: nn.Module, kind: str, model: nn.Module, config: SearchSpaceConfig,
                  plan: ConversionPlan, specs: OpSpecs) -> None:
        full = mlp.fc2.in_features
        if config.mlp_ratio is not None:
            wanted = {r: int(round(r * model.embed_dim)) for r in config.mlp_ratio}
            too_big = {r: h for r, h in wanted.items() if h > full}
            if too_big:
                raise ConfigError(
                    f"`mlp_ratio` values {sorted(too_big)} give MLP hidden sizes {sorted(too_big.values())} above the "
                    f"full hidden {full} of `{prefix}.mlp.hidden` (embed dim {model.embed_dim}, so ratios must be <= "
                    f"{full / model.embed_dim:g}). HINT: drop them, or build the supernet with a larger mlp_ratio."
                )
            choices = resolve_choices(sorted(wanted.values()), full, None, "mlp_ratio")
        else:
            choices = resolve_choices(config.width, full, AUTO_MLP, "width")
        hidden = ElasticDim(f"{prefix}.mlp.hidden", choices, full, kind="width")
        plan.dims.append(hidden)
        group = hidden.couple()
        fc1s = {"glu": [("fc1", 2)], "swiglu": [("fc1_g", 1), ("fc1_x", 1)], "mlp": [("fc1", 1)]}[kind]
        for name, segments in fc1s:
            axis = Axis(hidden, segments=segments)
            specs.set(f"{prefix}.mlp.{name}", out_axis=axis)
            couple_out(group, getattr(mlp, name), axis)
        specs.set(f"{prefix}.mlp.fc2", in_axis=hidden)
        couple_in(group, mlp.fc2, scores=True)
        if _is_norm(mlp.norm):  # scale_mlp_norm
            _set_norm(specs, plan, f"{prefix}.mlp.norm", mlp.norm, hidden)
            couple_out(group, mlp.norm)

    # -- export / rebuild ----------------------------------------------------------------------------------
    def finalize_export(self, model: nn.Module, supernet, cfg: dict[str, int]) -> None:
        model.__dict__.pop("_pos_embed", None)
        e = model.patch_embed.proj.out_channels if isinstance(getattr(model.patch_embed, "proj", None),
                                                               nn.Conv2d) else model.embed_dim
        with torch.no_grad():
            for name in _TOKENS:
                p = getattr(model, name, None)
                if isinstance(p, nn.Parameter) and p.shape[-1] != e:
                    setattr(model, name, nn.Parameter(p[..., :e].clone(), requires_grad=p.requires_grad))
        model.embed_dim = model.num_features = model.head_hidden_size = e
        for m in model.modules():
            if type(m).__name__ == "Attention" and hasattr(m, "qkv"):
                _set_heads(m, m.qkv.out_features // (3 * m.head_dim))
            elif "RmsNorm" in type(m).__name__ and hasattr(m, "normalized_shape"):
                m.normalized_shape = tuple(m.weight.shape)  # ElasticRMSNorm only updates nn.RMSNorm's
        depth = len(model.blocks)
        if isinstance(getattr(model, "feature_info", None), list):
            model.feature_info = [dict(f, num_chs=e) for f in model.feature_info[:depth]]
        args = self._timm_args(model)
        if args is not None and isinstance(getattr(model, "_model_args", None), dict):
            model._model_args = {**model._model_args, **args}

    @staticmethod
    def _timm_args(model: nn.Module) -> dict[str, Any] | None:
        """``timm.create_model`` kwargs giving this shape, when the subnet is homogeneous and timm can express it."""
        blocks = list(model.blocks)
        e = model.embed_dim
        heads = {b.attn.num_heads for b in blocks}
        hidden = {b.mlp.fc1.out_features if hasattr(b.mlp, "fc1") else b.mlp.fc1_x.out_features for b in blocks}
        if len(heads) != 1 or len(hidden) != 1:
            return None
        h, m = heads.pop(), hidden.pop()
        if e % h or e // h != blocks[0].attn.head_dim or int(e * (m / e)) != m:
            return None
        return {"depth": len(blocks), "embed_dim": e, "num_heads": h, "mlp_ratio": m / e}

    def describe(self, model: nn.Module) -> dict[str, Any]:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        try:
            from timm.models import get_model_args

            args = get_model_args(model)
        except (ImportError, ValueError):  # pragma: no cover - older timm
            args = {}
        args = {k: list(v) if isinstance(v, tuple) else v for k, v in args.items() if _jsonable(v)}
        img = getattr(model.patch_embed, "img_size", None)
        return {
            "library": "timm",
            "architecture": cfg.get("architecture"),
            "num_classes": model.num_classes,
            "in_chans": getattr(model, "in_chans", 3),
            "img_size": list(img) if img is not None else None,
            "model_args": args,
        }

    def build_original(self, meta: dict[str, Any]) -> nn.Module:
        import timm

        if not meta.get("architecture"):
            raise ExportError(
                f"`meta['architecture']` is {meta.get('architecture')!r}: the subnet records no timm model name, so "
                "it cannot be rebuilt. HINT: create the supernet with timm.create_model(name, ...) (not the class "
                "directly), or load the weights into a model you build yourself."
            )
        kwargs = dict(meta.get("model_args") or {})
        for key in ("num_classes", "in_chans", "img_size"):
            if meta.get(key) is not None:
                kwargs.setdefault(key, meta[key])
        return timm.create_model(meta["architecture"], pretrained=False, **kwargs)


def _maybe(module: nn.Module, name: str) -> nn.Module | None:
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


register_adapter(TimmViTAdapter())
