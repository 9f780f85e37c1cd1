"""Rebuild a supernet from a Lightning checkpoint for ``lightning-elastic search`` / ``export``.

The work is :func:`lightning_elastic.search.checkpoint.restore_from_checkpoint` (shared with the Python search API);
the command line only adds a stricter check: the checkpoint must come from a run with ``ElasticTraining``, because a
recipe on the command line has no other way to say which search space the weights were trained with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from lightning_elastic.core.errors import ConfigError
from lightning_elastic.search.checkpoint import load_checkpoint, restore_from_checkpoint, stored_state
from lightning_elastic.supernet.supernet import Supernet


def supernet_state(ckpt: dict[str, Any], ckpt_path: str | Path = "") -> dict[str, Any]:
    """The ``ElasticTraining`` state stored in a checkpoint (must contain ``supernet`` info)."""
    state = stored_state(ckpt)
    if state is not None:
        return state
    raise ConfigError(
        f"`ckpt_path` {str(ckpt_path)!r} holds no supernet state (it was not trained with ElasticTraining). "
        "HINT: pass a checkpoint from `lightning-elastic fit` with the ElasticTraining callback."
    )


def restore_supernet(module: L.LightningModule, ckpt_path: str | Path) -> Supernet:
    """Convert ``module``'s model as stored in ``ckpt_path`` and load the trained weights into it.

    Raises:
        ConfigError: a missing file, a checkpoint without supernet state, or a space that differs from the trained one.
    """
    ckpt = load_checkpoint(ckpt_path)
    supernet_state(ckpt, ckpt_path)
    return restore_from_checkpoint(module, ckpt, ckpt_path)
