"""The subnet folder format: ``model.safetensors`` + ``subnet.json`` (no pickle), written atomically.

The one owner of the format: :func:`lightning_elastic.save_subnet` writes folders through :func:`write_folder`,
``load_subnet`` reads them with :func:`read_info` / :func:`read_weights` / :func:`check_weights`, and adapters that
write their own files (peft's merged weights) use the same constants and :func:`contiguous_state`. Plain
torch + safetensors, so every layer may import it.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lightning_elastic.core.errors import ExportError

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
INFO = "subnet.json"


def write_folder(directory: Path, model: nn.Module, info: dict[str, Any],
                 extra: Callable[[Path], None] | None = None) -> None:
    """Write ``model``'s weights, ``info`` (plus ``format_version``) and whatever ``extra(folder)`` adds to a
    temporary folder beside ``directory``, then rename it into place: the folder is complete or absent."""
    check_target(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling(directory, "partial")
    tmp.mkdir()  # not tempfile.mkdtemp: its 0o700 mode would become the saved folder's
    try:
        save_file(contiguous_state(model), str(tmp / WEIGHTS))
        (tmp / INFO).write_text(json.dumps({"format_version": FORMAT_VERSION, **info}, indent=2))
        if extra is not None:  # last, so its files win (an HF save_pretrained rewrites model.safetensors)
            extra(tmp)
        move_into_place(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def contiguous_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state_dict as contiguous copies, one per storage (what safetensors accepts)."""
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


def check_target(directory: Path) -> None:
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


def sibling(directory: Path, tag: str) -> Path:
    """A free hidden name beside ``directory`` (same file system, so renames are atomic)."""
    while True:
        path = directory.parent / f".{directory.name}.{tag}-{uuid.uuid4().hex[:8]}"
        if not path.exists():
            return path


def move_into_place(tmp: Path, directory: Path) -> None:
    """Rename the complete ``tmp`` folder to ``directory``; an existing one is moved aside first, then deleted."""
    if not directory.exists():
        tmp.rename(directory)
        return
    old = sibling(directory, "old")
    directory.rename(old)
    try:
        tmp.rename(directory)
    except BaseException:
        old.rename(directory)  # put the previous subnet back
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_info(directory: Path) -> dict[str, Any]:
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


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError (and OSError)
        raise ExportError(
            f"{path.name} in {str(path.parent)!r} is corrupt or truncated ({type(err).__name__}: {err}). HINT: copy "
            "the file again from the folder save_subnet wrote, or save the subnet again."
        ) from err


def check_weights(exported: nn.Module, state: Mapping[str, torch.Tensor], directory: Path) -> None:
    """Raise unless ``state`` has exactly the tensors (names and shapes) of ``exported``."""
    expected = {k: tuple(v.shape) for k, v in exported.state_dict().items()}
    tied = tied_keys(exported)  # tied weights were saved once: a missing key is fine if it is tied
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


def tied_keys(model: nn.Module) -> set[str]:
    by_ptr: dict[int, list[str]] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        by_ptr.setdefault(v.data_ptr(), []).append(k)
    return {k for keys in by_ptr.values() if len(keys) > 1 for k in keys}
