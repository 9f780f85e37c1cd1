"""Save and load exported subnets: safetensors + ``subnet.json`` (no pickle; the format is :mod:`core.files`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from lightning_elastic.adapters.registry import get_adapter
from lightning_elastic.core.config import SearchSpaceConfig
from lightning_elastic.core.errors import ExportError
from lightning_elastic.core.files import (  # noqa: F401 - the format constants are part of this module's API
    FORMAT_VERSION,
    INFO,
    WEIGHTS,
    check_weights,
    read_info,
    read_weights,
)
from lightning_elastic.core.files import contiguous_state as _contiguous_state  # noqa: F401 - old private name
from lightning_elastic.supernet.calibration import ForwardFn
from lightning_elastic.supernet.convert import to_supernet
from lightning_elastic.supernet.supernet import Supernet, require_supernet


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
    return require_supernet(model_or_supernet).save_subnet(
        directory, cfg, calibration_data=calibration_data, calibration_batches=calibration_batches,
        forward_fn=forward_fn)


def load_subnet(directory: str | Path) -> nn.Module:
    """Load a subnet written by :func:`save_subnet` as a plain model of the original class (in eval mode).

    Raises:
        ExportError: the folder has no ``subnet.json`` / weights, a file is damaged (invalid JSON, corrupt or
            truncated safetensors), or the weights belong to a different model than ``subnet.json`` describes
            (the message lists the tensors that differ).
    """
    directory = Path(directory)
    info = read_info(directory)
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
    state = read_weights(directory / WEIGHTS)
    original = adapter.build_original(info["meta"])
    space_config = SearchSpaceConfig.from_dict({**info["space_config"], "importance": None})
    supernet = to_supernet(original, space_config, adapter=adapter)
    # the BN buffers are about to be replaced by the saved ones: no calibration here
    exported = supernet.export(info["arch_config"], calibration_data="current")
    check_weights(exported, state, directory)
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) == 1:  # a subnet saved in float64 / bfloat16 loads in that dtype, not the default one
        exported = exported.to(dtypes.pop())
    exported.load_state_dict(state, strict=False)
    return exported.eval()
