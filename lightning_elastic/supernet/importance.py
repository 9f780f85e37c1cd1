"""Conversion-time importance: turn ``importance`` / ``depth_importance`` and the calibration data into a channel
score function and layer orders, with one read-only pass over a few batches, before any module is swapped.

Which layers a smaller depth keeps matters as much as how many: a pretrained transformer's layers are not equally
useful, and the last ones are rarely the least. With data, each layer of a reorderable stack (the adapters' ``plan``
lists them in ``ConversionPlan.layer_stacks``) is scored by ShortGPT's *block influence*: ``1 - mean cos(x_in,
x_out)`` of the hidden states entering and leaving it, over the real (non-padding) tokens. A layer whose residual
branch adds nothing scores 0 and is dropped first. One forward per batch scores every layer (skipping each layer in
turn, the alternative, costs one forward per layer). The same pass records the inputs of every Linear for
:class:`ActivationImportance`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_elastic.adapters.base import ConversionPlan, LayerStack
from lightning_elastic.core.config import SearchSpaceConfig
from lightning_elastic.core.errors import ConfigError, ConversionError, ElasticError
from lightning_elastic.core.importance import (
    ActivationImportance,
    ImportanceFn,
    real_tokens,
    resolve_importance,
    run_calibration,
)
from lightning_elastic.core.space import SearchSpace
from lightning_elastic.supernet.calibration import ForwardFn, default_forward
from lightning_elastic.supernet.export import _to_device

#: the default number of calibration batches ``to_supernet`` reads (a few suffice: the scores are averages)
CALIBRATION_BATCHES = 8


@dataclass
class ConversionImportance:
    """What :func:`resolve_conversion_importance` decided.

    Attributes:
        importance: the channel score function (None keeps the original order).
        orders: ``{container path: layer order}`` to give the built depth containers.
        influence: ``{depth dim: block influence per layer}`` where it was measured.
        used: the names in effect, e.g. ``{"importance": "activation", "depth_importance": "influence"}``.
        batches: how many calibration batches were run (0 when no pass was needed).
    """

    importance: ImportanceFn | None
    orders: dict[str, list[int]] = field(default_factory=dict)
    influence: dict[str, list[float]] = field(default_factory=dict)
    used: dict[str, str] = field(default_factory=dict)
    batches: int = 0


class BlockInfluence:
    """Records ShortGPT's block influence ``1 - mean cos(input, output)`` of every layer of some stacks.

    Args:
        stacks: ``{name: [layer modules]}``; each layer maps hidden states to hidden states of the same shape.
    """

    def __init__(self, stacks: dict[str, list[nn.Module]]) -> None:
        self.stacks = stacks
        self.mask: torch.Tensor | None = None
        self._sums = {name: [0.0] * len(layers) for name, layers in stacks.items()}
        self._counts = {name: [0] * len(layers) for name, layers in stacks.items()}
        self.problems: list[str] = []

    def attach(self, model: nn.Module) -> list[Any]:
        return [layer.register_forward_hook(partial(self._record, name, i), with_kwargs=True)
                for name, layers in self.stacks.items() for i, layer in enumerate(layers)]

    def _record(self, name: str, i: int, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        x = args[0] if args else kwargs.get("hidden_states")
        y = output[0] if isinstance(output, tuple | list) else output
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or x.shape != y.shape:
            shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in (x, y)]
            self.problems.append(f"{name}: layer {i} maps {shapes[0]} to {shapes[1]}")
            return
        cos = F.cosine_similarity(real_tokens(x.detach(), self.mask).float(),
                                  real_tokens(y.detach(), self.mask).float(), dim=-1)
        self._sums[name][i] += cos.sum().item()
        self._counts[name][i] += cos.numel()

    def scores(self) -> dict[str, list[float]]:
        """``{name: influence per layer}``; a layer that never ran (or saw no token) scores NaN."""
        return {name: [1.0 - s / c if c else float("nan") for s, c in zip(self._sums[name], self._counts[name])]
                for name in self.stacks}


def influence_order(influence: list[float], first: tuple[int, ...] = ()) -> list[int]:
    """Layer indices, most influential first (ties keep the earlier layer first), with ``first`` pinned in front."""
    ranked = sorted(range(len(influence)), key=lambda i: (-influence[i], i))
    return list(first) + [i for i in ranked if i not in first]


def _check_data(calibration_data: Any, calibration_batches: Any, forward_fn: Any) -> None:
    if isinstance(calibration_data, torch.Tensor) or isinstance(calibration_data, dict) or hasattr(
            calibration_data, "keys") or isinstance(calibration_data, str | bytes) or not (
            calibration_data is None or isinstance(calibration_data, Iterable)):
        what = (f"a Tensor of shape {tuple(calibration_data.shape)}" if isinstance(calibration_data, torch.Tensor)
                else f"a {type(calibration_data).__name__}")
        raise ConfigError(
            f"`calibration_data` got {what}; allowed: None or an iterable of batches (a single batch would be "
            "iterated key by key or sample by sample). HINT: wrap one batch in a list, calibration_data=[batch], "
            "or pass a few batches of your train dataloader."
        )
    if isinstance(calibration_batches, bool) or not isinstance(calibration_batches, int) or calibration_batches < 1:
        raise ConfigError(
            f"`calibration_batches` got {calibration_batches!r}; allowed: an integer >= 1. HINT: 4 to 16 batches "
            f"are enough for importance scores (default {CALIBRATION_BATCHES})."
        )
    if forward_fn is not None and not callable(forward_fn):
        raise ConfigError(
            f"`forward_fn` got {forward_fn!r}; allowed: None or a callable (model, batch) -> output. "
            "HINT: e.g. forward_fn=lambda model, batch: model(batch['pixel_values'])."
        )


def _check_order(name: str, order: list[int], n: int, stack: LayerStack) -> None:
    if sorted(order) != list(range(n)):
        raise ConfigError(
            f"`depth_importance[{name!r}]` got {order!r}, which is not an ordering of the {n} layers of {stack.path!r}; "
            f"allowed: each of 0..{n - 1} exactly once, most important first. HINT: e.g. "
            f"{list(stack.first) + [i for i in range(n - 1, -1, -1) if i not in stack.first]!r}."
        )
    if list(order[:len(stack.first)]) != list(stack.first):
        raise ConfigError(
            f"`depth_importance[{name!r}]` got {order!r}; this model needs layers {list(stack.first)} first (a "
            "decoder's KV cache reads the sequence length from layer 0). HINT: put them first, e.g. "
            f"{list(stack.first) + [i for i in order if i not in stack.first]!r}."
        )
    if stack.fixed and list(order) != list(range(n)):
        raise ConfigError(
            f"`depth_importance[{name!r}]` got {order!r}, but {stack.path!r} cannot be reordered: {stack.fixed}. "
            "HINT: drop `depth_importance` for this model, or set it to None."
        )
    if stack.order is not None and list(order) != list(stack.order):
        raise ConfigError(
            f"`depth_importance[{name!r}]` got {order!r}, but the adapter was built with depth_order="
            f"{stack.order!r}. HINT: give the order in one place only."
        )


def _depth_plan(model: nn.Module, plan: ConversionPlan, space: SearchSpace, config: SearchSpaceConfig,
                have_data: bool) -> tuple[dict[str, list[int]], dict[str, LayerStack]]:
    """``({container path: explicit order}, {depth dim: stack to measure})``; checks everything, runs nothing."""
    spec = config.depth_importance
    stacks = plan.layer_stacks
    elastic = {d.name for d in space if d.kind == "depth"}
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - set(stacks))
        if unknown:
            others = sorted(elastic - set(stacks))
            hint = (f"use those names, e.g. depth_importance={{{sorted(stacks)[0]!r}: [...]}}" if stacks else
                    "this adapter has no reorderable layers: drop `depth_importance`")
            raise ConfigError(
                f"`depth_importance` names {unknown}, which are not reorderable depth dimensions of this model; "
                f"allowed: {sorted(stacks)}" + (f" (the depth of {others} always drops trailing blocks)" if others
                                                 else "") + f". HINT: {hint}."
            )
    if spec == "influence":
        if not have_data:
            raise ConfigError(
                "`depth_importance`='influence' measures each layer on real data, but `calibration_data` is None; "
                "allowed without data: 'auto', None or an explicit {depth dim: order}. HINT: pass "
                "calibration_data=[a few batches] to to_supernet, or depth_importance='auto'."
            )
        unordered = sorted(elastic - set(stacks))
        if unordered:
            raise ConfigError(
                f"`depth_importance`='influence', but the depth dimensions {unordered[:4]} of this model cannot be "
                "reordered (its adapter lists no layer stack for them: they are not uniform residual layers). "
                "HINT: use depth_importance='auto' (influence where it applies) or None."
            )
    explicit, measure = {}, {}
    for name, stack in stacks.items():
        n = len(model.get_submodule(stack.path))
        if stack.fixed and stack.order is not None and list(stack.order) != list(range(n)):
            raise ConfigError(
                f"`depth_order` got {stack.order!r}, but {stack.path!r} cannot be reordered: {stack.fixed}. "
                "HINT: build the adapter without depth_order for this model."
            )
        if isinstance(spec, dict) and name in spec:
            _check_order(name, spec[name], n, stack)
            explicit[stack.path] = list(spec[name])
        elif spec == "influence":
            if stack.fixed:
                raise ConfigError(
                    f"`depth_importance`='influence', but {stack.path!r} cannot be reordered: {stack.fixed}. "
                    "HINT: depth_importance='auto' keeps the trailing-layer order here."
                )
            if stack.order is not None:
                raise ConfigError(
                    f"`depth_importance`='influence', but the adapter was built with depth_order={stack.order!r}. "
                    "HINT: give the order in one place only: drop the adapter's depth_order, or set "
                    "depth_importance=None."
                )
            if name in elastic:
                measure[name] = stack
        elif spec == "auto" and have_data and name in elastic and stack.order is None and not stack.fixed:
            measure[name] = stack
    return explicit, measure


def resolve_conversion_importance(model: nn.Module, plan: ConversionPlan, space: SearchSpace,
                                  config: SearchSpaceConfig, calibration_data: Any = None,
                                  forward_fn: ForwardFn | None = None,
                                  calibration_batches: int = CALIBRATION_BATCHES) -> ConversionImportance:
    """Decide the channel score function and the layer orders; run the calibration pass they need.

    Only reads ``model`` (eval mode, no gradients, training flags restored), so a failure leaves it untouched.

    Raises:
        ConfigError: a bad calibration argument, a data-driven choice without data, an invalid explicit order, or
            ``calibration_data`` that gives no batch. ConversionError: the model failed on a calibration batch.
    """
    _check_data(calibration_data, calibration_batches, forward_fn)
    have_data = calibration_data is not None
    name = config.importance
    if isinstance(name, ActivationImportance) and name.stats and not set(name.stats) & {id(m) for m in model.modules()}:
        # its statistics are keyed by module: scored on another object (a deepcopy), every group would fall back to L1
        raise ConfigError(
            "`importance` is an ActivationImportance recorded on another model (none of its modules belong to the "
            "model being converted), so it would silently fall back to L1. HINT: build it on the model you convert, "
            "or pass importance='activation' and calibration_data=... to to_supernet."
        )
    # 'auto' records activations only where a Linear reads a group (a CNN's widths are read by convolutions: L1)
    scored = any(isinstance(ct.module, nn.Linear) and ct.axis % ct.tensor.dim() == 1
                 for d in space if d.kind in ("width", "heads", "rank") for g in d.groups for ct in g.tensors)
    wanted = name == "activation" or (name == "auto" and scored)
    activation = ActivationImportance(None) if have_data and wanted else None
    importance = activation if activation is not None else resolve_importance(name)
    result = ConversionImportance(importance)
    result.used["importance"] = ("activation" if activation is not None else "custom" if callable(name) else
                                 "l1" if name == "auto" else str(name))
    explicit, measure = _depth_plan(model, plan, space, config, have_data)
    result.orders.update(explicit)
    influence = BlockInfluence({n: list(model.get_submodule(s.path)._modules.values()) for n, s in measure.items()})
    recorders = [r for r in (activation, influence if measure else None) if r is not None]
    if recorders:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        batches = (_to_device(b, device) for b in islice(calibration_data, calibration_batches))
        try:
            result.batches = run_calibration(model, batches, forward_fn or default_forward, recorders)
        except ElasticError:
            raise
        except Exception as err:
            raise ConversionError(
                f"running the model on `calibration_data` failed ({type(err).__name__}: {err}); nothing was "
                "converted. HINT: pass forward_fn=(model, batch) -> output that runs the model on one batch, e.g. "
                "forward_fn=lambda model, batch: model(**batch)."
            ) from err
        if result.batches == 0:
            raise ConfigError(
                "`calibration_data` gave no batch; allowed: an iterable of at least one batch, or None. HINT: check "
                "the dataloader is not empty, or pass calibration_data=None for data-free importance (L1)."
            )
        if influence.problems:
            raise ConversionError(
                f"block influence needs layers that map hidden states to the same shape, but {influence.problems[:3]}. "
                "HINT: pass depth_importance=None for this model."
            )
    for dim_name, stack in measure.items():
        scores = influence.scores()[dim_name]
        missing = [i for i, s in enumerate(scores) if s != s]  # NaN: the layer never ran on a real token
        if missing:
            raise ConversionError(
                f"layers {missing} of {stack.path!r} never ran on a real token of `calibration_data`, so their "
                "influence is unknown. HINT: pass batches with real tokens, or depth_importance=None."
            )
        result.influence[dim_name] = scores
        result.orders[stack.path] = influence_order(scores, stack.first)
    preset = any(s.order is not None for s in plan.layer_stacks.values())
    result.used["depth_importance"] = ("influence" if measure else "explicit" if explicit else
                                       "adapter order" if preset else "first layers")
    return result
