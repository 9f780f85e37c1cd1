"""Rebuild a supernet from a Lightning checkpoint written while training with ``ElasticTraining``.

The checkpoint's callback state holds the space (adapter, ``SearchSpaceConfig``, signature) and which submodule was
converted. The module is converted first with importance ordering *off* — the saved weights are already ordered —
and then the weights are loaded, because conversion keeps parameter names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_elastic.core.config import SearchSpaceConfig
from lightning_elastic.core.errors import ConfigError
from lightning_elastic.supernet.supernet import Supernet, find_supernet, to_supernet


def load_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"`ckpt_path` {str(ckpt_path)!r} does not exist. HINT: pass a .ckpt written by `fit`.")
    return torch.load(path, map_location="cpu", weights_only=False)


def supernet_state(ckpt: dict[str, Any], ckpt_path: str | Path = "") -> dict[str, Any]:
    """The ``ElasticTraining`` state stored in a checkpoint (must contain ``supernet`` info)."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if isinstance(state, dict) and isinstance(state.get("supernet"), dict):
            return state
    raise ConfigError(
        f"`ckpt_path` {str(ckpt_path)!r} holds no supernet state (it was not trained with ElasticTraining). "
        "HINT: pass a checkpoint from `lightning-elastic fit` with the ElasticTraining callback."
    )


def restore_supernet(module: L.LightningModule, ckpt_path: str | Path) -> Supernet:
    """Convert ``module``'s model as stored in ``ckpt_path`` and load the trained weights into it.

    Returns:
        The supernet. Raises ConfigError for a missing file or a checkpoint without supernet state.
    """
    ckpt = load_checkpoint(ckpt_path)
    state = supernet_state(ckpt, ckpt_path)
    info = state["supernet"]
    found = find_supernet(module)
    if found is None:
        attr = state.get("model_attr") or ""
        target = module.get_submodule(attr) if attr else module
        config = SearchSpaceConfig.from_dict({**info["config"], "importance": None})
        supernet = to_supernet(target, config, adapter=info.get("adapter"))
    else:
        supernet = found[1]
    if supernet.signature() != info.get("signature"):
        raise ConfigError(
            f"the search space rebuilt from `ckpt_path` {str(ckpt_path)!r} differs from the one it was trained with. "
            "HINT: use the same model and recipe as in `fit`."
        )
    module.load_state_dict(ckpt["state_dict"])
    return supernet
