"""Export: a plain model of the original class, with its own BatchNorm statistics and nothing of the supernet.

Steps (:func:`export_subnet`):

1. copy the converted model at the subnet, without what lightning-elastic hangs on it (the ``Supernet`` handle, its
   own forward hooks), so the copy cannot drag the supernet along;
2. BatchNorm models: estimate the copy's statistics for this subnet on ``calibration_data`` (only norm layers in
   train mode, at the subnet's input resolution). Weight sharing leaves the supernet's statistics a blend over all
   trained subnets, which can cost a CNN subnet most of its accuracy; without data the export warns loudly;
3. remove every attribute the conversion added to plain modules, swap each elastic op for its export (which keeps
   exactly the original module's ``__dict__`` keys), let the adapter fix sizes;
4. check the result: no elastic module, no attribute pointing at dims / axes / the supernet, no tensor storage
   shared with the supernet. A failure here is a bug, reported as :class:`ExportError`.
"""

from __future__ import annotations

import copy
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn

from lightning_elastic.adapters.base import SupernetView
from lightning_elastic.core.dims import ChannelGroup, ElasticDim
from lightning_elastic.core.errors import ConfigError, ExportError, UncalibratedExportWarning
from lightning_elastic.ops.base import Axis, ElasticOp
from lightning_elastic.ops.depth import _DepthMixin
from lightning_elastic.supernet.calibration import ForwardFn, batchnorm_modules, calibrate_bn_, default_forward
from lightning_elastic.supernet.resize import resized_inputs

#: ``calibration_data=CURRENT``: the BN buffers as they are now are already this subnet's own statistics
CURRENT = "current"
_HOOK_TABLES = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks",
                "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
                "_load_state_dict_post_hooks")
_HOOK_FLAGS = ("_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def is_elastic(module: nn.Module) -> bool:
    return isinstance(module, ElasticOp | _DepthMixin)


def check_calibration_args(calibration_data: Any, calibration_batches: Any, forward_fn: Any) -> None:
    """Validate the calibration arguments of ``export`` / ``save_subnet`` before anything is done.

    Raises:
        ConfigError: ``calibration_data`` is not None, ``'current'`` or an iterable of batches; ``calibration_batches``
            is not an integer >= 1 (checked when there are batches); ``forward_fn`` is not callable.
    """
    if isinstance(calibration_data, torch.Tensor):
        raise ConfigError(
            f"`calibration_data` got a Tensor of shape {tuple(calibration_data.shape)}; allowed: None, 'current' or an "
            "iterable of batches (iterating a Tensor would feed single samples). HINT: wrap one batch in a list, "
            "calibration_data=[x], or pass your train dataloader."
        )
    if isinstance(calibration_data, str | bytes) and calibration_data != CURRENT or not (
            calibration_data is None or isinstance(calibration_data, str | Iterable)):
        raise ConfigError(
            f"`calibration_data` got {calibration_data!r}; allowed: None (export with the supernet's BatchNorm "
            "statistics, with a warning), 'current' (the statistics as they are now are this subnet's own) or an "
            "iterable of batches. HINT: pass a few training batches, e.g. your train dataloader."
        )
    has_batches = not (calibration_data is None or isinstance(calibration_data, str))  # else the count is unused
    if has_batches and (isinstance(calibration_batches, bool) or not isinstance(calibration_batches, int)
                        or calibration_batches < 1):
        raise ConfigError(
            f"`calibration_batches` got {calibration_batches!r}; allowed: an integer >= 1. HINT: 10 to 50 batches "
            "are usually enough to estimate BatchNorm statistics."
        )
    if forward_fn is not None and not callable(forward_fn):
        raise ConfigError(
            f"`forward_fn` got {forward_fn!r}; allowed: None or a callable (model, batch) -> output. "
            "HINT: e.g. forward_fn=lambda model, batch: model(batch['image'])."
        )


def _own(fn: Any) -> bool:
    """Whether a hook was registered by lightning-elastic (the training tap, the search measurer …)."""
    target = fn.func if isinstance(fn, partial) else fn
    return str(getattr(target, "__module__", "") or "").startswith("lightning_elastic.")


@contextmanager
def own_state_detached(model: nn.Module, holder_attr: str) -> Iterator[None]:
    """Inside the block, ``model`` holds neither its ``Supernet`` handle nor lightning-elastic's hooks (restored
    after, in order), so a deepcopy made there copies the user's model only."""
    holder = model.__dict__.pop(holder_attr, None)
    saved: list[tuple[dict, dict]] = []
    for module in model.modules():
        own_ids = {i for t in _HOOK_TABLES for i, fn in getattr(module, t, {}).items() if _own(fn)}
        if not own_ids:
            continue
        for t in _HOOK_TABLES + _HOOK_FLAGS:
            table = getattr(module, t, None)
            if isinstance(table, dict) and own_ids & set(table):
                saved.append((table, dict(table)))
                for i in own_ids & set(table):
                    del table[i]
    try:
        yield
    finally:
        for table, content in saved:  # same dict objects: the RemovableHandles refer to them
            table.clear()
            table.update(content)
        if holder is not None:
            model.__dict__[holder_attr] = holder


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(_to_device(v, device) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside lightning-elastic."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def _warn_uncalibrated(model: nn.Module, cfg: Mapping[str, int], why: str) -> None:
    warnings.warn(UncalibratedExportWarning(
        f"exporting this {type(model).__name__} subnet with the supernet's BatchNorm running statistics ({why}): "
        "they are a blend over every subnet trained, not this subnet's own, so the export can be far less accurate "
        "than what validation and search measured. HINT: pass calibration_data=<training batches> (e.g. your "
        "train dataloader; `calibration_batches` of them are used) to Supernet.export / save_subnet, or export "
        "through SubnetSearch / `lightning-elastic export`, which calibrate on a fixed draw of training batches."
    ), stacklevel=user_stacklevel())


def export_subnet(supernet: SupernetView, cfg: Mapping[str, int], holder_attr: str, calibration_data: Any = None,
                  calibration_batches: int = 10, forward_fn: ForwardFn | None = None) -> nn.Module:
    """The plain export of ``cfg`` (already validated); see the module doc and :meth:`Supernet.export`."""
    check_calibration_args(calibration_data, calibration_batches, forward_fn)
    model = supernet.model  # ops' per-select caches are not deep-copied (``ops.base._Plan.__deepcopy__``)
    with supernet.subnet(cfg), own_state_detached(model, holder_attr):
        clone = copy.deepcopy(model)
    if batchnorm_modules(clone):
        if calibration_data is None:
            _warn_uncalibrated(model, cfg, "no `calibration_data` was given")
        elif calibration_data != CURRENT:
            device = next((p.device for p in clone.parameters()), torch.device("cpu"))
            batches = (_to_device(b, device) for b in calibration_data)
            with resized_inputs(clone, supernet.resolution(cfg)):
                used = calibrate_bn_(clone, batches, calibration_batches, forward_fn or default_forward)
            if used == 0:
                _warn_uncalibrated(model, cfg, "`calibration_data` gave no batches")
    for name, module in clone.named_modules():  # what the conversion added to plain modules
        for key in supernet.added_attributes.get(name, ()):
            if not is_elastic(module):
                module.__dict__.pop(key, None)
    exported = strip_elastic(clone)
    supernet.adapter.finalize_export(exported, supernet, dict(cfg))
    check_plain(exported, supernet)
    return exported


def strip_elastic(model: nn.Module) -> nn.Module:
    """Replace every elastic module (children first) by its plain export."""
    def visit(module: nn.Module) -> nn.Module:
        for name, child in list(module._modules.items()):
            if child is not None:
                module._modules[name] = visit(child)
        return module.export_module() if is_elastic(module) else module

    return visit(model)


_SUPERNET_TYPES: tuple[type, ...] = (ElasticDim, Axis, ChannelGroup, ElasticOp, _DepthMixin)


def _points_back(value: Any, kinds: tuple[type, ...], depth: int = 0) -> bool:
    """Whether ``value`` (or what it holds, two levels deep) is a piece of the supernet machinery: an instance of
    ``kinds`` (dims, axes, elastic modules, the supernet handle's class) or an object whose ``parent`` is a dim."""
    try:
        return _points_back_unsafe(value, kinds, depth)
    except Exception:  # noqa: BLE001 - an object that cannot be inspected (odd __getattr__) is not ours
        return False


def _points_back_unsafe(value: Any, kinds: tuple[type, ...], depth: int) -> bool:
    if isinstance(value, kinds) or isinstance(getattr(value, "parent", None), ElasticDim):
        return True
    if depth >= 2 or isinstance(value, nn.Module | torch.Tensor):
        return False
    if isinstance(value, partial):
        return any(_points_back(v, kinds, depth + 1) for v in (value.func, *value.args, *value.keywords.values()))
    if hasattr(value, "__self__") and callable(value):
        return _points_back(value.__self__, kinds, depth + 1)
    if isinstance(value, dict):
        return any(_points_back(v, kinds, depth + 1) for v in value.values())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_points_back(v, kinds, depth + 1) for v in value)
    return False


def check_plain(exported: nn.Module, supernet: SupernetView) -> None:
    """Raise :class:`ExportError` when ``exported`` still holds elastic modules, attributes pointing back into the
    supernet, or tensors sharing storage with it."""
    leftovers = [n for n, m in exported.named_modules() if is_elastic(m)]
    if leftovers:
        raise ExportError(
            f"export left elastic modules behind: {leftovers[:5]}. HINT: each elastic op needs an "
            "`export_module()`; this is a bug in the adapter or op."
        )
    kinds = _SUPERNET_TYPES + (type(supernet),)
    attrs = [f"{n or type(exported).__name__}.{k}" for n, m in exported.named_modules() for k, v in m.__dict__.items()
             if k not in ("_parameters", "_buffers", "_modules") and _points_back(v, kinds)]
    if attrs:
        raise ExportError(
            f"the export still holds attributes that point back into the supernet: {attrs[:5]}. HINT: this is a bug "
            f"in adapter {supernet.adapter.name!r}: remove them in `finalize_export`."
        )
    ours = {t.untyped_storage().data_ptr() for t in supernet.model.state_dict(keep_vars=True).values()
            if t is not None and t.numel() and t.device.type != "meta"}
    shared = [k for k, t in exported.state_dict(keep_vars=True).items()
              if t is not None and t.numel() and t.device.type != "meta" and t.untyped_storage().data_ptr() in ours]
    if shared:
        raise ExportError(
            f"exported tensors {shared[:5]} share storage with the supernet. HINT: this is a bug in adapter "
            f"{supernet.adapter.name!r}: copy them in `finalize_export`."
        )
