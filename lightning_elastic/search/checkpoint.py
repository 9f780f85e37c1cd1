"""Prepare a LightningModule for search: find its supernet, or rebuild it from an ``ElasticTraining`` checkpoint.

A checkpoint's ``ElasticTraining`` callback state holds ``{"supernet": Supernet.state_info(), "model_attr": ...}``
(the same format ``lightning_elastic.cli.checkpoint`` reads). The model is converted first with importance ordering
off (the saved weights are already ordered), then the weights are loaded: conversion keeps parameter names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lightning_elastic.core.config import SearchSpaceConfig
from lightning_elastic.core.errors import ConfigError
from lightning_elastic.supernet.convert import to_supernet
from lightning_elastic.supernet.supernet import Supernet, find_supernet


def stored_state(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The ``ElasticTraining`` state in a loaded checkpoint (it holds ``supernet`` info), or None."""
    for state in (ckpt.get("callbacks") or {}).values():
        if isinstance(state, dict) and isinstance(state.get("supernet"), dict):
            return state
    return None


def prepare_module(pl_module: Any, ckpt_path: str | Path | None = None,
                   space_config: SearchSpaceConfig | None = None) -> Supernet:
    """The supernet inside ``pl_module``, converting it and loading ``ckpt_path`` first when given.

    Raises:
        ConfigError: no supernet and no checkpoint, a missing file, a checkpoint without a stored space and no
            ``space_config``, or a rebuilt space that differs from the trained one.
    """
    if ckpt_path is None:
        found = find_supernet(pl_module)
        if found is None:
            raise ConfigError(
                f"`pl_module` ({type(pl_module).__name__}) holds no supernet and `ckpt_path` is None. HINT: search "
                "after training with ElasticTraining, or pass ckpt_path= a checkpoint of such a run."
            )
        return found[1]
    return restore_from_checkpoint(pl_module, load_checkpoint(ckpt_path), ckpt_path, space_config)


def load_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    """``torch.load`` a Lightning checkpoint on CPU; a clear error if the file is missing."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"`ckpt_path` {str(ckpt_path)!r} does not exist. HINT: pass a .ckpt written by `fit`.")
    return torch.load(path, map_location="cpu", weights_only=False)


def restore_from_checkpoint(pl_module: Any, ckpt: dict[str, Any], ckpt_path: str | Path = "",
                            space_config: SearchSpaceConfig | None = None) -> Supernet:
    """Convert ``pl_module`` as recorded in the loaded checkpoint ``ckpt`` and load its trained weights."""
    state = stored_state(ckpt)
    info = (state or {}).get("supernet")
    found = find_supernet(pl_module)
    if found is not None:
        supernet = found[1]
    else:
        if info is None and space_config is None:
            raise ConfigError(
                f"`ckpt_path` {str(ckpt_path)!r} stores no search space and `space_config` is None. "
                "HINT: pass space_config=SearchSpaceConfig(...) as used for training."
            )
        config = space_config if info is None else SearchSpaceConfig.from_dict(info["config"])
        config = SearchSpaceConfig.from_dict({**config.to_dict(), "importance": None})
        attr = (state or {}).get("model_attr") or ""
        target = pl_module.get_submodule(attr) if attr else _first_convertible(pl_module)
        supernet = to_supernet(target, config, adapter=(info or {}).get("adapter"))
    if info is not None and supernet.signature() != info.get("signature"):
        raise ConfigError(
            f"the search space rebuilt from `ckpt_path` {str(ckpt_path)!r} differs from the one it was trained "
            "with. HINT: use the same model and SearchSpaceConfig as in `fit`."
        )
    pl_module.load_state_dict(ckpt["state_dict"])
    return supernet


def _first_convertible(pl_module: Any) -> torch.nn.Module:
    from lightning_elastic.adapters.registry import find_adapter
    from lightning_elastic.core.errors import UnsupportedModelError

    for _, sub in pl_module.named_modules():
        try:
            find_adapter(sub)
        except UnsupportedModelError:
            continue
        return sub
    raise ConfigError(
        f"no submodule of `pl_module` ({type(pl_module).__name__}) is a supported model. "
        "HINT: pass a checkpoint written with ElasticTraining, which records the converted submodule."
    )
