"""``ElasticParams``: any module whose own forward reads its Parameters by attribute, with sliced Parameters.

Used by the generic (graph-based) conversion for modules that have no dedicated op: ``nn.GroupNorm`` / timm
``GroupNormAct``, timm ``LayerNorm2d``, ``LayerScale``, a ConvNeXt block's ``gamma``, Swin's relative position bias
table. The op is a subclass of the module's own class (made once per class), so the module's own ``forward`` runs;
``self.weight`` etc. resolve through ``nn.Module.__getattr__`` (Parameters live in ``_parameters``, not in
``__dict__``), which this op overrides to return the active slices. Size attributes the forward reads
(``normalized_shape``, ``num_channels``, ``num_features``) are served from the active sizes the same way. State-dict
keys are unchanged; export returns the original class with physically smaller tensors.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_elastic.core.slicing import slice_axis
from lightning_elastic.ops.base import Axis, ElasticOp, as_axis

#: size attributes an elastic module's forward may read, served from the active size of the named tensor's axis 0
SIZE_ATTRS = ("normalized_shape", "num_channels", "num_features")

_CLASSES: dict[type, type] = {}


def _getattr(self: nn.Module, name: str) -> Any:
    state = self.__dict__
    slices = state.get("_slices")
    if slices is not None:
        if name in slices and (name in state["_parameters"] or name in state["_buffers"]):
            plan = self._plan()
            return self._raw(name) if plan.full else self._sliced(plan, (name,))[0]
        sizes = state.get("_size_attrs")
        if sizes and name in sizes:
            tensor, template = sizes[name]
            n = _getattr(self, tensor).shape[0]
            return (n,) if isinstance(template, tuple) else n
    return nn.Module.__getattr__(self, name)


def elastic_class(base: type) -> type:
    """The ``ElasticParams`` subclass of ``base`` (one per class, so ``isinstance`` checks keep working)."""
    cls = _CLASSES.get(base)
    if cls is None:
        cls = type(f"ElasticParams{base.__name__}", (base, ElasticParams), {"__getattr__": _getattr,
                                                                           "__module__": __name__})
        _CLASSES[base] = cls
    return cls


class ElasticParams(ElasticOp):
    """Mixin of the per-class elastic subclasses built by :func:`elastic_class`; construct with :meth:`wrap`."""

    @classmethod
    def wrap(cls, module: nn.Module, slices: dict[str, list[tuple[int, Axis]]]) -> nn.Module:
        """An elastic copy of ``module`` (same tensors) slicing ``{tensor name: [(axis, dim or Axis), ...]}``."""
        new = elastic_class(type(module))._adopt(module)
        new._slices = {name: [(ax, as_axis(a)) for ax, a in specs] for name, specs in slices.items()}
        sizes = {}
        first = next(iter(new._slices))
        for attr in SIZE_ATTRS:
            value = new.__dict__.get(attr)
            full = getattr(module, first).shape[0]
            if value == full or value == (full,):
                sizes[attr] = (first, value)
                del new.__dict__[attr]  # served by __getattr__ from the active size
        new.__dict__["_size_attrs"] = sizes
        return new

    def _raw(self, name: str):
        state = self.__dict__
        return state["_parameters"][name] if name in state["_parameters"] else state["_buffers"].get(name)

    def _slice(self, name: str):
        tensor = self._raw(name)
        if tensor is None:
            return None
        for axis, ax in self._slices.get(name, ()):
            tensor = slice_axis(tensor, axis, ax.dim.active, ax.dim.full, ax.unit, ax.segments)
        return tensor

    def _export_attributes(self, new: nn.Module) -> None:
        for attr, (tensor, template) in self.__dict__["_size_attrs"].items():
            n = getattr(new, tensor).shape[0]
            new.__dict__[attr] = (n,) if isinstance(template, tuple) else n
