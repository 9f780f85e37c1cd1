"""``to_supernet``: convert a model in place into a weight-sharing supernet.

The conversion runs in phases (like peft's injection): the adapter plans (touches nothing), the plan is checked and
overrides applied, importance is decided (a read-only pass over the calibration data, when there is any), every
replacement module is built, and only then are modules swapped and tensors reordered by importance. Any error before
the swap leaves the model exactly as it was; an error during the swap restores it.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from lightning_elastic.adapters.base import Adapter
from lightning_elastic.adapters.registry import get_adapter, matching_adapters, registered_adapters
from lightning_elastic.core.config import SearchSpaceConfig
from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.core.errors import ConfigError, ConversionError, UnsupportedModelError
from lightning_elastic.core.importance import apply_order, importance_order
from lightning_elastic.core.space import SearchSpace
from lightning_elastic.ops.depth import _DepthMixin
from lightning_elastic.supernet.calibration import ForwardFn
from lightning_elastic.supernet.canonical import attach_dead_when
from lightning_elastic.supernet.export import is_elastic
from lightning_elastic.supernet.importance import CALIBRATION_BATCHES, resolve_conversion_importance
from lightning_elastic.supernet.supernet import _ATTR, Supernet, get_supernet

_log = logging.getLogger(__name__)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _apply_overrides(dims: list[ElasticDim], config: SearchSpaceConfig) -> None:
    space = SearchSpace(dims)
    unmatched = [p for p in config.overrides if not space.match(p)]
    unmatched += [p for p in config.exclude if not space.match(p)]
    if unmatched:
        raise ConfigError(
            f"`overrides`/`exclude` patterns {unmatched} match no dimension of this model. "
            f"Dimensions: {space.names()[:12]}{' …' if len(space) > 12 else ''}. "
            "HINT: use exact names or globs such as 'blocks.*.mlp.hidden'."
        )
    for pattern, choices in config.overrides.items():
        for d in space.match(pattern):
            too_big = [c for c in choices if c > d.full]
            if too_big:
                raise ConfigError(
                    f"`overrides[{pattern!r}]` has {too_big} above the full size {d.full} of {d.name!r}. "
                    f"HINT: choices must be <= {d.full}."
                )
            d.choices = sorted(set(choices) | {d.full})
    for pattern in config.exclude:
        for d in space.match(pattern):
            d.choices = [d.full]


def to_supernet(model: nn.Module, config: SearchSpaceConfig | None = None, adapter: str | Adapter | None = None,
                *, calibration_data: Any = None, forward_fn: ForwardFn | None = None,
                calibration_batches: int = CALIBRATION_BATCHES, **kwargs: Any) -> Supernet:
    """Convert ``model`` in place into an elastic weight-sharing supernet.

    With ``calibration_data`` (a few real batches; pass them for every pretrained model) the defaults order channels,
    neurons and heads by activation importance and the layers of a transformer by block influence, so each smaller
    choice keeps what the pretrained model uses most (``SearchSpaceConfig.importance`` / ``depth_importance``).
    The batches are run once through the unconverted model, in eval mode and without gradients, before anything is
    changed; on SmolLM2-135M eight batches of 8 x 64 tokens cost a few seconds on two CPU cores.

    Args:
        model: a timm / torchvision CNN or ViT, a Hugging Face transformer, or a peft LoRA model over one (see the
            README's table of adapters).
        config: the search space to build; defaults to the family's paper space. Keyword arguments are a shortcut
            for ``SearchSpaceConfig(**kwargs)``.
        adapter: force an adapter (name or instance) instead of auto-detection; it must match the model. Without it
            the matching adapters are tried in registration order (family adapters first, ``generic`` last) and the
            first that can plan the model converts it.
        calibration_data: an iterable of batches of real inputs (a train dataloader, a list of tokenizer outputs),
            moved to the model's device; padding tokens (``attention_mask == 0``) are left out of every score.
        forward_fn: ``(model, batch) -> output``; default: a Tensor, the first element of a tuple, or dict keyword
            inputs without labels.
        calibration_batches: at most this many batches of ``calibration_data`` are used.

    Returns:
        The :class:`Supernet`; converting an already converted model returns its existing Supernet (idempotent).

    Raises:
        UnsupportedModelError: no adapter matches, or the forced ``adapter`` does not (the message lists those that
            do). ConversionError / ConfigError: the space does not fit the model, a data-driven importance has no
            data, or the model fails on a calibration batch. The model is unchanged then.

    Example:
        >>> net = to_supernet(timm.create_model("resnet18"), width=(0.5, 1.0))  # doctest: +SKIP
        >>> net.select(net.space.min_config())  # doctest: +SKIP
        >>> batches = [tok(t, return_tensors="pt", padding=True) for t in chunks]  # doctest: +SKIP
        >>> net = to_supernet(llm, SearchSpaceConfig(), calibration_data=batches)  # doctest: +SKIP
    """
    if config is not None and kwargs:
        raise ConfigError(
            f"pass either `config` or SearchSpaceConfig keyword arguments, not both; got config and {sorted(kwargs)}. "
            "HINT: put the keywords into the SearchSpaceConfig."
        )
    if config is None:
        config = SearchSpaceConfig(**kwargs)
    if not isinstance(config, SearchSpaceConfig):
        raise ConfigError(
            f"`config` must be a SearchSpaceConfig, got {type(config).__name__}. "
            "HINT: SearchSpaceConfig(width=(0.5, 1.0), depth='auto')."
        )
    if not isinstance(model, nn.Module):
        raise ConversionError(
            f"`model` must be a torch.nn.Module, got {type(model).__name__}. HINT: pass the backbone module, "
            "e.g. timm.create_model(...)."
        )
    existing = get_supernet(model)
    if existing is not None:
        if existing.config.to_dict() != config.to_dict():
            raise ConfigError(
                "`model` is already a supernet with a different space config. "
                "HINT: convert a fresh model, or reuse the existing space."
            )
        return existing
    # phase 1: plan (no change to the model)
    adapter, plan = _plan(model, config, adapter)
    extra = []
    if config.resolution is not None:
        extra.append(ElasticDim("resolution", config.resolution, max(config.resolution), kind="resolution"))
    _apply_overrides(plan.dims + extra, config)
    space = SearchSpace([d for d in plan.dims + extra if d.is_elastic])
    if len(space) == 0:
        raise ConversionError(
            f"the space config leaves no elastic dimension on this {type(model).__name__} "
            f"(adapter {adapter.name!r}). HINT: set width/depth/… to 'auto' or to several values."
        )
    names = set()
    for name, _ in plan.replacements:
        if name in names:
            raise ConversionError(
                f"adapter {adapter.name!r} planned two replacements for module {name!r}. HINT: merge the axes "
                "of one module with adapters.kit.OpSpecs so it gets a single replacement."
            )
        names.add(name)
        try:
            model.get_submodule(name)
        except AttributeError as err:
            raise ConversionError(
                f"adapter {adapter.name!r} planned a replacement for missing module {name!r}. HINT: the "
                "adapter does not fit this model variant; fix its plan()."
            ) from err
    stacks = {stack.path for stack in plan.layer_stacks.values()}
    if not stacks <= names:
        raise ConversionError(
            f"adapter {adapter.name!r} lists layer stacks {sorted(stacks - names)} that it does not replace. HINT: "
            "a layer stack's path must be a depth container the plan replaces; fix its plan()."
        )
    # every check of the config is done: decide importance last, it may run the model on the calibration data
    decided = resolve_conversion_importance(model, plan, space, config, calibration_data, forward_fn,
                                            calibration_batches)
    importance = decided.importance

    # phase 2: build every replacement (still no change to the model)
    built = [(name, model.get_submodule(name), factory(model.get_submodule(name))) for name, factory in plan.replacements]
    for name, _, new in built:
        if name in decided.orders:
            if not isinstance(new, _DepthMixin):
                raise ConversionError(
                    f"adapter {adapter.name!r} lists {name!r} as a layer stack, but replaces it with a "
                    f"{type(new).__name__}. HINT: replace it with ElasticModuleList / ElasticSequential.from_module."
                )
            new.order = list(decided.orders[name])  # the built container, not yet in the model
    # importance scores only read tensors, so a failing (custom) score function also leaves the model untouched
    orders = [(d, importance_order(d, importance)) for d in space
              if importance is not None and d.groups and d.kind in ("width", "heads", "rank")]

    # what each module holds before the swap: export removes whatever the conversion adds to plain modules
    before = {name: frozenset(m.__dict__) for name, m in model.named_modules()}

    # phase 3: swap, deepest first so parents adopt already-swapped children; undo on failure
    built.sort(key=lambda item: item[0].count("."), reverse=True)
    done: list[tuple[str, nn.Module]] = []
    try:
        for name, original, new in built:
            # a container built before its children were swapped must point to the swapped children
            for child_name in list(new._modules):
                full = f"{name}.{child_name}"
                swapped = model.get_submodule(full) if any(n == full for n, _ in done) else None
                if swapped is not None:
                    new._modules[child_name] = swapped
            _set_submodule(model, name, new)
            done.append((name, original))
        for fn in plan.after_apply:
            fn()
    except Exception as err:
        for name, original in reversed(done):
            _set_submodule(model, name, original)
        raise ConversionError(
            f"conversion failed and was rolled back: {err}. HINT: the model is unchanged; see the chained error."
        ) from err

    # phase 4: importance ordering (function-preserving permutations)
    for d, perms in orders:
        apply_order(d, perms)
    attach_dead_when(model, space)  # read-only: which dims the depths can remove (space.canonical)
    added = {name: frozenset(set(m.__dict__) - before[name]) for name, m in model.named_modules()
             if name in before and not is_elastic(m) and set(m.__dict__) - before[name]}
    supernet = Supernet(model, space, adapter, config, plan.meta, added_attributes=added,
                        layer_stacks={n: s.path for n, s in plan.layer_stacks.items()}, importance=decided)
    model.__dict__[_ATTR] = supernet
    return supernet


def _plan(model: nn.Module, config: SearchSpaceConfig, adapter: str | Adapter | None) -> tuple[Adapter, Any]:
    """Plan with the forced adapter, or with the first matching one that can: a family adapter that refuses a variant
    (ConversionError) hands the model to the next match, e.g. the generic graph adapter. If all refuse, the first
    refusal is raised with the others' reasons appended."""
    if adapter is not None:
        adapter = _resolve_adapter(model, adapter)
        return adapter, adapter.plan(model, config)
    refusals: list[tuple[Adapter, ConversionError]] = []
    for candidate in matching_adapters(model):
        try:
            plan = candidate.plan(model, config)
        except ConfigError:
            raise  # the user's space is wrong for this model: another adapter would only hide that
        except ConversionError as err:
            refusals.append((candidate, err))
            continue
        for refused, err in refusals:
            _log.info("adapter %r refused this %s (%s); converted with adapter %r", refused.name,
                      type(model).__name__, str(err).split(". HINT")[0], candidate.name)
        return candidate, plan
    first = refusals[0][1]
    if len(refusals) == 1:
        raise first
    also = "\n".join(f"  - adapter {a.name!r}: {err}" for a, err in refusals[1:])
    raise ConversionError(f"{first}\nEvery other matching adapter refused it too:\n{also}") from first


def _resolve_adapter(model: nn.Module, adapter: str | Adapter) -> Adapter:
    """The forced adapter, after checking that it handles ``model``."""
    if isinstance(adapter, str):
        adapter = get_adapter(adapter)
    elif not isinstance(adapter, Adapter):
        raise ConfigError(
            f"`adapter` got a {type(adapter).__name__}; allowed: None (auto-detect), a registered adapter name or an "
            f"Adapter instance. Registered: {sorted(registered_adapters())}. HINT: pass adapter=None."
        )
    if not _matches(adapter, model):
        fitting = [name for name, a in registered_adapters().items() if _matches(a, model)]
        raise UnsupportedModelError(
            f"`adapter` {adapter.name!r} cannot convert a {type(model).__module__}.{type(model).__name__}; it "
            f"supports: {adapter.supported or adapter.name}. Adapters that match this model: {fitting or 'none'}. "
            f"HINT: {f'pass adapter={fitting[0]!r}, or ' if fitting else ''}leave adapter=None to detect it."
        )
    return adapter


def _matches(adapter: Adapter, model: nn.Module) -> bool:
    try:
        return bool(adapter.matches(model))
    except Exception:  # noqa: BLE001 - an adapter that cannot even inspect the model does not match it
        return False
