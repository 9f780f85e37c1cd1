"""Save and load exported subnets: safetensors + ``subnet.json`` (no pickle)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import load_file, save_file
from torch import nn

from lightning_elastic.core.config import SearchSpaceConfig
from lightning_elastic.core.errors import ExportError

if TYPE_CHECKING:
    from lightning_elastic.supernet.supernet import Supernet

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
INFO = "subnet.json"


def _contiguous_state(model: nn.Module) -> dict:
    # safetensors refuses shared storage: keep one copy per tensor (tied weights are re-tied by the model on load)
    state, seen = {}, {}
    for k, v in model.state_dict().items():
        key = (v.data_ptr(), v.shape, v.dtype) if v.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen[key] = k
        state[k] = v.detach().contiguous().clone()
    return state


def save_subnet(supernet: Supernet, directory: str | Path, cfg: Mapping[str, int] | None = None) -> nn.Module:
    """Export ``cfg`` from ``supernet`` and write it to ``directory``.

    Files: ``model.safetensors`` (weights), ``subnet.json`` (arch config, space config, adapter, model metadata),
    plus anything the adapter adds (e.g. an HF ``config.json`` for homogeneous subnets).

    Returns:
        The exported model.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = supernet.active_config if cfg is None else supernet.space.validate(cfg)
    exported = supernet.export(cfg)
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "adapter": supernet.adapter.name,
        "arch_config": dict(cfg),
        "space_config": supernet.config.to_dict(),
        "meta": supernet.meta,
        "model_class": f"{type(exported).__module__}.{type(exported).__qualname__}",
        "num_params": sum(p.numel() for p in exported.parameters()),
    }
    save_file(_contiguous_state(exported), str(directory / WEIGHTS))
    (directory / INFO).write_text(json.dumps(info, indent=2))
    # adapter files last so they win (an HF save_pretrained rewrites model.safetensors with the same keys)
    supernet.adapter.save(exported, supernet, dict(cfg), directory)
    return exported


def load_subnet(directory: str | Path) -> nn.Module:
    """Load a subnet written by :func:`save_subnet` as a plain model of the original class.

    Raises:
        ExportError: the folder has no ``subnet.json`` / weights, or they do not match.
    """
    from lightning_elastic.core.registry import get_adapter
    from lightning_elastic.supernet.supernet import to_supernet

    directory = Path(directory)
    info_path = directory / INFO
    if not info_path.is_file():
        raise ExportError(
            f"`directory` {str(directory)!r} has no {INFO}. HINT: pass a folder written by save_subnet / "
            "Supernet.save_subnet (HF subnets saved with save_pretrained load with from_pretrained too)."
        )
    info = json.loads(info_path.read_text())
    if info.get("format_version") != FORMAT_VERSION:
        raise ExportError(
            f"{INFO} in {str(directory)!r} has format_version {info.get('format_version')!r}; supported: "
            f"{FORMAT_VERSION}. HINT: load it with the lightning-elastic version that wrote it and save it again."
        )
    missing_keys = [k for k in ("adapter", "arch_config", "space_config", "meta") if k not in info]
    if missing_keys:
        raise ExportError(
            f"{INFO} in {str(directory)!r} lacks the keys {missing_keys}. HINT: pass a folder written by save_subnet."
        )
    adapter = get_adapter(info["adapter"])
    direct = adapter.load(directory, info)
    if direct is not None:
        return direct
    original = adapter.build_original(info["meta"])
    space_config = SearchSpaceConfig.from_dict({**info["space_config"], "importance": None})
    supernet = to_supernet(original, space_config, adapter=adapter)
    exported = supernet.export(info["arch_config"])
    if not (directory / WEIGHTS).is_file():
        raise ExportError(
            f"`directory` {str(directory)!r} has {INFO} but no {WEIGHTS}. HINT: copy the whole folder written by "
            "save_subnet."
        )
    state = load_file(str(directory / WEIGHTS))
    try:
        missing, unexpected = exported.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even with strict=False
        raise ExportError(
            f"weights in {str(directory)!r} do not fit the subnet {info['arch_config']}: {str(err).strip().rstrip('.')}. HINT: the weights "
            f"and {INFO} must come from the same save_subnet call."
        ) from err
    # tied weights were saved once: a missing key is fine only if it is tied to a present one
    real_missing = [k for k in missing if k not in _tied_keys(exported)]
    if real_missing or unexpected:
        raise ExportError(
            f"weights in {str(directory)!r} do not match the subnet: missing {real_missing[:5]}, unexpected "
            f"{unexpected[:5]}. HINT: the folder may have been written by another version."
        )
    return exported.eval()


def _tied_keys(model: nn.Module) -> set[str]:
    by_ptr: dict[int, list[str]] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        by_ptr.setdefault(v.data_ptr(), []).append(k)
    return {k for keys in by_ptr.values() if len(keys) > 1 for k in keys}
