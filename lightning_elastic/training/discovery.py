"""Which submodule of a LightningModule ``ElasticTraining`` converts (or finds already converted)."""

from __future__ import annotations

import lightning as L
from torch import nn

from lightning_elastic.adapters.base import Adapter
from lightning_elastic.adapters.registry import find_adapter, get_adapter
from lightning_elastic.core.errors import ConfigError, UnsupportedModelError
from lightning_elastic.supernet.supernet import find_supernet


def find_model(pl_module: L.LightningModule, model_attr: str | None, adapter: str | Adapter | None) -> nn.Module:
    """The network to train as a supernet.

    Args:
        pl_module: the user's module.
        model_attr: dotted submodule name, or None: an already converted submodule, else the first submodule that
            ``adapter`` (or, when None, any registered adapter) matches.
        adapter: a registered adapter name or instance, or None.

    Raises:
        ConfigError: ``model_attr`` names no submodule.
        UnsupportedModelError: no submodule can be converted.
    """
    if model_attr is not None:
        try:
            return pl_module.get_submodule(model_attr)
        except AttributeError as err:
            children = [n for n, _ in pl_module.named_children()]
            raise ConfigError(f"`model_attr` got {model_attr!r}, which is not a submodule of "
                              f"{type(pl_module).__name__}; its submodules: {children}. "
                              "HINT: name the attribute holding the network.") from err
    found = find_supernet(pl_module)
    if found is not None:
        return found[1].model
    forced = get_adapter(adapter) if isinstance(adapter, str) else adapter
    for _, module in pl_module.named_modules():
        if module is pl_module:
            continue
        if forced is not None:
            if forced.matches(module):
                return module
            continue
        try:
            find_adapter(module)
        except UnsupportedModelError:
            continue
        return module
    children = {n: type(m).__name__ for n, m in pl_module.named_children()}
    raise UnsupportedModelError(
        f"`model_attr`=None: no submodule of {type(pl_module).__name__} is a model a registered adapter can "
        f"convert (submodules: {children}). HINT: pass model_attr='...' for a supported model, or register an "
        "adapter with lightning_elastic.register_adapter.")
