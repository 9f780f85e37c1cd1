"""``Supernet``: drive a converted model (select, sample, export, save); :func:`get_supernet` and friends find it.

Models become supernets through :func:`lightning_elastic.supernet.convert.to_supernet`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_elastic.adapters.base import Adapter
from lightning_elastic.core.config import SearchSpaceConfig
from lightning_elastic.core.errors import ExportError
from lightning_elastic.core.files import check_target, write_folder
from lightning_elastic.core.space import ArchConfig, SearchSpace
from lightning_elastic.supernet.calibration import ForwardFn
from lightning_elastic.supernet.export import export_subnet
from lightning_elastic.supernet.importance import ConversionImportance

_ATTR = "_lightning_elastic_supernet"


def get_supernet(model: nn.Module) -> Supernet | None:
    """The :class:`Supernet` a model was converted into, or None for a plain (unconverted) model.

    Callers that need a supernet should use :func:`require_supernet`, which raises a clear error instead of
    returning None (``get_supernet(plain).export()`` fails with ``'NoneType' object has no attribute 'export'``).
    """
    return model.__dict__.get(_ATTR) if isinstance(model, nn.Module) else None


def require_supernet(model: nn.Module | Supernet) -> Supernet:
    """The :class:`Supernet` of a converted model (a ``Supernet`` is returned as is).

    Raises:
        ExportError: ``model`` was not converted with :func:`to_supernet` (the message names a converted submodule
            when there is one).
    """
    if isinstance(model, Supernet):
        return model
    if not isinstance(model, nn.Module):
        raise ExportError(
            f"`model` got a {type(model).__name__}; allowed: a model converted with to_supernet, or its Supernet. "
            "HINT: net = lightning_elastic.to_supernet(model, ...), then pass net or model."
        )
    net = get_supernet(model)
    if net is not None:
        return net
    inner = find_supernet(model)
    if inner is not None:
        raise ExportError(
            f"`model` is a {type(model).__name__} that was not converted itself, but its submodule {inner[0]!r} is. "
            f"HINT: pass model.{inner[0]} (or get_supernet(model.{inner[0]})), the converted module."
        )
    raise ExportError(
        f"`model` is a plain {type(model).__module__}.{type(model).__name__}, not a supernet: it was never converted. "
        "HINT: convert it first with net = lightning_elastic.to_supernet(model, ...), then export or save through net."
    )


def find_supernet(module: nn.Module) -> tuple[str, Supernet] | None:
    """The first converted submodule of ``module`` (itself included): ``(qualified name, Supernet)``, or None."""
    for name, sub in module.named_modules():
        net = get_supernet(sub)
        if net is not None:
            return name, net
    return None


class Supernet:
    """Handle on a converted model: select, sample and export subnets.

    The model itself stays the user's object (same class, same parameter names); this handle holds the space.
    """

    def __init__(self, model: nn.Module, space: SearchSpace, adapter: Adapter, config: SearchSpaceConfig,
                 meta: dict[str, Any], added_attributes: Mapping[str, frozenset[str]] | None = None,
                 layer_stacks: Mapping[str, str] | None = None,
                 importance: ConversionImportance | None = None) -> None:
        self.model = model
        self.space = space
        self.adapter = adapter
        #: the space config as given (``state_config()`` is the one that rebuilds this supernet without data)
        self.config = config
        self.meta = meta
        #: ``{module name: attribute names}`` the conversion added to plain (non-elastic) modules; export drops them
        self.added_attributes = dict(added_attributes or {})
        self._layer_stacks = dict(layer_stacks or {})  # {depth dim: container path} of reorderable depth dims
        #: the importance in effect, e.g. ``{"importance": "activation", "depth_importance": "influence"}``
        self.importance_used: dict[str, str] = dict(importance.used) if importance is not None else {}
        #: ``{depth dim: block influence of each layer}`` where it was measured at conversion
        self.layer_influence: dict[str, list[float]] = dict(importance.influence) if importance is not None else {}

    def __repr__(self) -> str:
        return (f"Supernet({type(self.model).__name__}, adapter={self.adapter.name!r}, dims={len(self.space)}, "
                f"subnets={self.space.num_subnets:.3g})")

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    # -- configs -------------------------------------------------------------------------------------------
    def select(self, cfg: Mapping[str, int], strict: bool = True) -> ArchConfig:
        """Activate the subnet ``cfg`` (validated as a whole first). Returns the complete config."""
        full = self.space.validate(cfg, strict=strict)
        self.space.apply(full)
        return full

    @property
    def active_config(self) -> ArchConfig:
        return self.space.active_config()

    def max_config(self) -> ArchConfig:
        return self.space.max_config()

    def min_config(self) -> ArchConfig:
        return self.space.min_config()

    def sample(self, generator: torch.Generator) -> ArchConfig:
        """A uniformly random canonical config (see :meth:`canonical`)."""
        return self.space.sample(generator)

    def canonical(self, cfg: Mapping[str, int]) -> ArchConfig:
        """``cfg`` with the dims of blocks its depths remove at their max: one config per network.

        ``select(canonical(cfg))`` runs the same network as ``select(cfg)``; :attr:`SearchSpace.dead_when` says which
        dims are dead when (computed at conversion from where each dim's tensors live and the layer orders).
        """
        return self.space.canonical(cfg)

    @contextmanager
    def subnet(self, cfg: Mapping[str, int], strict: bool = True) -> Iterator[ArchConfig]:
        """Context manager: activate ``cfg`` and restore the previous config on exit."""
        previous = self.active_config
        try:
            yield self.select(cfg, strict=strict)
        finally:
            self.space.apply(previous)

    def resolution(self, cfg: Mapping[str, int] | None = None) -> int | None:
        cfg = cfg if cfg is not None else self.active_config
        return cfg.get("resolution") if "resolution" in self.space else None

    def signature(self) -> str:
        """Identifies the space: dims, choices and, when not the first layers, the layer orders of depth dims (the
        same config names other layers under another order)."""
        orders = self.depth_orders(changed_only=True)
        return self.space.signature() + (f" depth_orders={json.dumps(orders, sort_keys=True)}" if orders else "")

    def depth_orders(self, changed_only: bool = False) -> dict[str, list[int]]:
        """``{depth dim: layer order}`` (most important first; depth ``d`` keeps ``sorted(order[:d])``) of the elastic
        depth dims whose layers can be reordered; ``changed_only`` leaves out those that keep the first layers."""
        orders = {}
        for name, path in self._layer_stacks.items():
            container = self.model.get_submodule(path)
            if name in self.space and (not changed_only or container.order != list(range(len(container.order)))):
                orders[name] = list(container.order)
        return orders

    def state_config(self) -> SearchSpaceConfig:
        """The space config that rebuilds this supernet without data: :attr:`config` with ``depth_importance``
        replaced by the layer orders in effect (None when every depth keeps its first layers). Checkpoints and
        ``subnet.json`` store it, so a reloaded supernet keeps the layers this one chose."""
        return SearchSpaceConfig.from_dict({**self.config.to_dict(),
                                            "depth_importance": self.depth_orders(changed_only=True) or None})

    # -- export --------------------------------------------------------------------------------------------
    def export(self, cfg: Mapping[str, int] | None = None, strict: bool = True, *, calibration_data: Any = None,
               calibration_batches: int = 10, forward_fn: ForwardFn | None = None) -> nn.Module:
        """A model of the original class with physically smaller tensors and no elastic ops.

        A BatchNorm model gets its own statistics: they are estimated on ``calibration_data`` for this subnet (only
        the norm layers in train mode, inputs resized to the subnet's ``resolution``), because the supernet's are a
        blend over every trained subnet. The calibration data should be a few batches of the *training*
        distribution: your train dataloader, or the fixed, seeded draw of training batches that ``SubnetSearch``
        and ``lightning-elastic export`` use (the same batches the search measured with).

        Args:
            cfg: the subnet (default: the active one).
            strict: reject unknown / missing dims in ``cfg``.
            calibration_data: an iterable of batches (moved to the model's device; fed by ``forward_fn``); or
                ``'current'`` when the BN buffers already hold this subnet's own statistics (exporting inside a
                ``recalibrated_bn`` block); or None: export with the supernet's statistics and an
                :class:`UncalibratedExportWarning`. Ignored for models without BatchNorm.
            calibration_batches: at most this many batches are used.
            forward_fn: ``(model, batch) -> output``; default: a Tensor, the first element of a tuple, or dict
                keyword inputs.

        Returns:
            A new, plain module (its modules hold what freshly built ones hold; nothing points back into the
            supernet); the supernet is left unchanged. Outputs equal the supernet's under ``cfg`` with the same
            BatchNorm statistics.

        Raises:
            ConfigError: an invalid ``cfg`` or calibration argument.

        Warns:
            UncalibratedExportWarning: a BatchNorm model exported without calibration data (or with empty data).
        """
        cfg = self.active_config if cfg is None else self.space.validate(cfg, strict=strict)
        return export_subnet(self, cfg, _ATTR, calibration_data, calibration_batches, forward_fn)

    def save_subnet(self, directory: str | Path, cfg: Mapping[str, int] | None = None, *,
                    calibration_data: Any = None, calibration_batches: int = 10,
                    forward_fn: ForwardFn | None = None) -> nn.Module:
        """Export ``cfg`` and write it to ``directory`` atomically; see :func:`lightning_elastic.save_subnet`."""
        directory = Path(directory)
        check_target(directory)  # before the export: nothing is done for a target that would be refused
        cfg = self.active_config if cfg is None else self.space.validate(cfg)
        exported = self.export(cfg, calibration_data=calibration_data, calibration_batches=calibration_batches,
                               forward_fn=forward_fn)
        info: dict[str, Any] = {
            "adapter": self.adapter.name,
            "arch_config": dict(cfg),
            # with the layer orders in effect: load_subnet rebuilds the same layers without calibration data
            "space_config": self.state_config().to_dict(),
            "meta": self.meta,
            "model_class": f"{type(exported).__module__}.{type(exported).__qualname__}",
            "num_params": sum(p.numel() for p in exported.parameters()),
        }
        write_folder(directory, exported, info, lambda tmp: self.adapter.save(exported, self, dict(cfg), tmp))
        return exported

    def state_info(self) -> dict[str, Any]:
        """JSON-serialisable description stored in checkpoints (adapter, space config, space signature)."""
        return {"adapter": self.adapter.name, "config": self.state_config().to_dict(), "signature": self.signature(),
                "meta": self.meta}
