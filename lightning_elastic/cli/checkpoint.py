"""Checkpoints on the command line: read ``--ckpt_path`` once, check it against the recipe, rebuild the supernet.

LightningCLI reads the model hyperparameters stored in ``--ckpt_path`` and silently puts them over the recipe's
``model:`` section. For ``search`` and ``export`` that hides a wrong pairing (a recipe for resnet34, a resnet18
checkpoint): :func:`check_recipe_matches` refuses it, naming both values.

Rebuilding is :func:`lightning_elastic.search.checkpoint.restore_from_checkpoint` (shared with the Python search
API); the command line only adds a stricter check: the checkpoint must come from a run with ``ElasticTraining``,
because a recipe on the command line has no other way to say which search space the weights were trained with.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_elastic.core.errors import ConfigError
from lightning_elastic.search.checkpoint import load_checkpoint, restore_from_checkpoint, stored_state
from lightning_elastic.supernet.supernet import Supernet

_EXAMPLE = "outputs/quickstart/lightning_logs/version_0/checkpoints/last.ckpt"


def read_checkpoint(ckpt_path: str | Path) -> dict[str, Any] | None:
    """The loaded checkpoint at ``ckpt_path``, None when there is no such file (the subcommand reports that).

    Raises:
        ConfigError: a folder, or a file that is not a Lightning checkpoint (a recipe passed as ``--ckpt_path``).
    """
    path = Path(ckpt_path)
    if path.is_dir():
        found = sorted(path.rglob("*.ckpt"))
        raise ConfigError(
            f"`ckpt_path` {str(ckpt_path)!r} is a folder; allowed: a .ckpt file written by `fit`. HINT: "
            + (f"pass one of its checkpoints, e.g. {str(found[-1])!r}." if found else f"e.g. {_EXAMPLE}.")
        )
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... for a non-checkpoint file
        ckpt, reason = None, f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
    else:
        reason = f"it holds a {type(ckpt).__name__} without a 'state_dict'"
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(
            f"`ckpt_path` {str(ckpt_path)!r} is not a Lightning checkpoint ({reason}); allowed: a .ckpt file "
            f"written by `lightning-elastic fit`. HINT: a recipe goes to --config; pass e.g. --ckpt_path {_EXAMPLE}."
        )
    return ckpt


def _plain(value: Any) -> Any:
    """Namespaces to dicts and tuples to lists, recursively, so recipe values compare with stored ones."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _same_class(a: str, b: str) -> bool:
    def load(path: str) -> Any:
        module, _, name = path.rpartition(".")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError):
            return path

    return a == b or load(a) is load(b)


def check_recipe_matches(model_config: Any, hparams: Mapping[str, Any], ckpt_path: str | Path) -> None:
    """The recipe's ``model:`` section must describe the model the checkpoint was trained as.

    Args:
        model_config: the parsed ``model`` section (``class_path`` + ``init_args``).
        hparams: the checkpoint's ``hyper_parameters``.

    Raises:
        ConfigError: naming every differing value, as stored in the checkpoint and as given by the recipe.
    """
    ours = _plain(model_config)
    if not isinstance(ours, Mapping) or not hparams:
        return
    diffs = []
    stored_class, recipe_class = hparams.get("_class_path"), ours.get("class_path")
    if isinstance(stored_class, str) and isinstance(recipe_class, str) and not _same_class(stored_class, recipe_class):
        diffs.append(f"class_path {stored_class!r} in the checkpoint, {recipe_class!r} in the recipe")
    init = ours.get("init_args") or {}
    fixes = []
    for key, stored in hparams.items():
        if key.startswith("_") or key not in init:
            continue
        stored, given = _plain(stored), init[key]
        if isinstance(stored, str | int | float | bool | list | dict | None) and stored != given:
            diffs.append(f"{key}={stored!r} in the checkpoint, {key}={given!r} in the recipe")
            fixes.append(f"--model.init_args.{key}={stored}")
    if diffs:
        raise ConfigError(
            f"`ckpt_path` {str(ckpt_path)!r} was trained with another model than the recipe describes: "
            + "; ".join(diffs) + ". Rather than silently building the checkpoint's model (LightningCLI's default), "
            "the command stops. HINT: use the recipe and --model overrides the checkpoint was trained with"
            + (f" ({' '.join(fixes)})" if fixes else "") + ", or a checkpoint of the recipe's model."
        )


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
    ckpt = read_checkpoint(ckpt_path)
    if ckpt is None:
        ckpt = load_checkpoint(ckpt_path)  # raises its "does not exist" error
    supernet_state(ckpt, ckpt_path)
    return restore_from_checkpoint(module, ckpt, ckpt_path)
