"""Save and load exported subnets: safetensors + ``subnet.json`` (no pickle)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lightning_elastic.core.config import SearchSpaceConfig
from lightning_elastic.core.errors import ExportError
from lightning_elastic.supernet.calibration import ForwardFn

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


def save_subnet(model_or_supernet: nn.Module | Supernet, directory: str | Path, cfg: Mapping[str, int] | None = None,
                *, calibration_data: Any = None, calibration_batches: int = 10,
                forward_fn: ForwardFn | None = None) -> nn.Module:
    """Export ``cfg`` and write it to ``directory``, atomically: the folder is complete or absent.

    Files: ``model.safetensors`` (weights), ``subnet.json`` (arch config, space config, adapter, model metadata),
    plus anything the adapter adds (e.g. an HF ``config.json`` for subnets plain ``from_pretrained`` can load).
    Everything is written to a temporary folder beside ``directory`` and renamed into place; an existing subnet
    folder there is replaced only once the new one is complete.

    Args:
        model_or_supernet: a converted model or its :class:`Supernet`.
        directory: the folder to write (new, empty, or a folder written by an earlier ``save_subnet``).
        cfg: the subnet (default: the active one).
        calibration_data, calibration_batches, forward_fn: the BatchNorm calibration of :meth:`Supernet.export`
            (training batches; ``'current'`` inside a ``recalibrated_bn`` block; None warns for BatchNorm models).

    Returns:
        The exported model.

    Raises:
        ExportError: ``model_or_supernet`` is not converted; ``directory`` is a file or a folder holding other
            files. ConfigError: an invalid ``cfg`` or calibration argument. Nothing is written in these cases.
    """
    from lightning_elastic.supernet.supernet import require_supernet

    supernet = require_supernet(model_or_supernet)
    directory = Path(directory)
    _check_target(directory)
    cfg = supernet.active_config if cfg is None else supernet.space.validate(cfg)
    exported = supernet.export(cfg, calibration_data=calibration_data, calibration_batches=calibration_batches,
                               forward_fn=forward_fn)
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "adapter": supernet.adapter.name,
        "arch_config": dict(cfg),
        # with the layer orders in effect: load_subnet rebuilds the same layers without calibration data
        "space_config": supernet.state_config().to_dict(),
        "meta": supernet.meta,
        "model_class": f"{type(exported).__module__}.{type(exported).__qualname__}",
        "num_params": sum(p.numel() for p in exported.parameters()),
    }
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(directory, "partial")
    tmp.mkdir()  # not tempfile.mkdtemp: its 0o700 mode would become the saved folder's
    try:
        save_file(_contiguous_state(exported), str(tmp / WEIGHTS))
        (tmp / INFO).write_text(json.dumps(info, indent=2))
        # adapter files last so they win (an HF save_pretrained rewrites model.safetensors with the same keys)
        supernet.adapter.save(exported, supernet, dict(cfg), tmp)
        _move_into_place(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return exported


def _check_target(directory: Path) -> None:
    """Refuse to replace a file, or a folder holding anything but an earlier save (no data is ever lost)."""
    if directory.exists() and not directory.is_dir():
        raise ExportError(
            f"`directory` {str(directory)!r} is an existing file; allowed: a new folder, an empty one or one written "
            "by save_subnet. HINT: pick another path."
        )
    if directory.is_dir() and any(directory.iterdir()) and not (directory / INFO).is_file():
        names = sorted(p.name for p in directory.iterdir())
        raise ExportError(
            f"`directory` {str(directory)!r} holds files that are not a saved subnet ({names[:5]}); save_subnet "
            "replaces the whole folder, so it only writes into a new folder, an empty one or one written by "
            "save_subnet. HINT: pass a new folder, e.g. a subfolder of this one."
        )


def _sibling(directory: Path, tag: str) -> Path:
    """A free hidden name beside ``directory`` (same file system, so renames are atomic)."""
    while True:
        path = directory.parent / f".{directory.name}.{tag}-{uuid.uuid4().hex[:8]}"
        if not path.exists():
            return path


def _move_into_place(tmp: Path, directory: Path) -> None:
    """Rename the complete ``tmp`` folder to ``directory``; an existing one is moved aside first, then deleted."""
    if not directory.exists():
        tmp.rename(directory)
        return
    old = _sibling(directory, "old")
    directory.rename(old)
    try:
        tmp.rename(directory)
    except BaseException:
        old.rename(directory)  # put the previous subnet back
        raise
    shutil.rmtree(old, ignore_errors=True)


def load_subnet(directory: str | Path) -> nn.Module:
    """Load a subnet written by :func:`save_subnet` as a plain model of the original class (in eval mode).

    Raises:
        ExportError: the folder has no ``subnet.json`` / weights, a file is damaged (invalid JSON, corrupt or
            truncated safetensors), or the weights belong to a different model than ``subnet.json`` describes
            (the message lists the tensors that differ).
    """
    from lightning_elastic.core.registry import get_adapter
    from lightning_elastic.supernet.supernet import to_supernet

    directory = Path(directory)
    info = _read_info(directory)
    adapter = get_adapter(info["adapter"])
    try:
        direct = adapter.load(directory, info)
    except ExportError:
        raise
    except Exception as err:  # noqa: BLE001 - e.g. from_pretrained on a damaged folder: name the folder
        raise ExportError(
            f"adapter {adapter.name!r} could not load the subnet in {str(directory)!r}: {type(err).__name__}: {err}. "
            "HINT: the folder is damaged or incomplete; save the subnet again."
        ) from err
    if direct is not None:
        return direct
    if not (directory / WEIGHTS).is_file():
        raise ExportError(
            f"`directory` {str(directory)!r} has {INFO} but no {WEIGHTS}. HINT: copy the whole folder written by "
            "save_subnet."
        )
    state = _read_weights(directory / WEIGHTS)
    original = adapter.build_original(info["meta"])
    space_config = SearchSpaceConfig.from_dict({**info["space_config"], "importance": None})
    supernet = to_supernet(original, space_config, adapter=adapter)
    # the BN buffers are about to be replaced by the saved ones: no calibration here
    exported = supernet.export(info["arch_config"], calibration_data="current")
    _check_weights(exported, state, directory)
    exported.load_state_dict(state, strict=False)
    return exported.eval()


def _read_info(directory: Path) -> dict[str, Any]:
    info_path = directory / INFO
    if not info_path.is_file():
        raise ExportError(
            f"`directory` {str(directory)!r} has no {INFO}. HINT: pass a folder written by save_subnet / "
            "Supernet.save_subnet (HF subnets saved with save_pretrained load with from_pretrained too)."
        )
    try:
        info = json.loads(info_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(
            f"{INFO} in {str(directory)!r} is not valid JSON ({err}). HINT: the file is damaged; copy the folder "
            "written by save_subnet again, or save the subnet again."
        ) from err
    if not isinstance(info, dict):
        raise ExportError(
            f"{INFO} in {str(directory)!r} holds a JSON {type(info).__name__}; allowed: the JSON object save_subnet "
            "writes. HINT: the file is damaged or not from save_subnet; save the subnet again."
        )
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
    return info


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError (and OSError)
        raise ExportError(
            f"{path.name} in {str(path.parent)!r} is corrupt or truncated ({type(err).__name__}: {err}). HINT: copy "
            "the file again from the folder save_subnet wrote, or save the subnet again."
        ) from err


def _check_weights(exported: nn.Module, state: Mapping[str, torch.Tensor], directory: Path) -> None:
    """Raise unless ``state`` has exactly the tensors (names and shapes) of ``exported``."""
    expected = {k: tuple(v.shape) for k, v in exported.state_dict().items()}
    tied = _tied_keys(exported)  # tied weights were saved once: a missing key is fine if it is tied
    missing = [k for k in expected if k not in state and k not in tied]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs subnet {expected[k]}" for k in expected
              if k in state and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or shapes:
        raise ExportError(
            f"{WEIGHTS} in {str(directory)!r} does not match the subnet {INFO} describes: "
            f"{len(missing) + len(unexpected) + len(shapes)} tensors differ (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, shape mismatch {shapes[:5]}). These weights are from a different model (another "
            f"architecture or subnet) than {INFO}. HINT: copy {WEIGHTS} and {INFO} together from one folder written "
            "by save_subnet, or save the subnet again."
        )


def _tied_keys(model: nn.Module) -> set[str]:
    by_ptr: dict[int, list[str]] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        by_ptr.setdefault(v.data_ptr(), []).append(k)
    return {k for keys in by_ptr.values() if len(keys) > 1 for k in keys}
