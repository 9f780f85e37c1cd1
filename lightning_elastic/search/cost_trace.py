"""Tracing a subnet for its costs: what a forward runs (FLOPs per op, modules and Parameters used) and the sizes its
export gives each Parameter. :mod:`lightning_elastic.search.cost_tables` builds tables from these traces and
:mod:`lightning_elastic.search.costs` prices configs with them (see there for what is counted and why).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop

from lightning_elastic.adapters.hf_layout import is_lora_layer
from lightning_elastic.core.errors import UncalibratedExportWarning
from lightning_elastic.ops.base import ElasticOp
from lightning_elastic.ops.conv import ElasticConv2d
from lightning_elastic.ops.depth import _DepthMixin
from lightning_elastic.supernet.export import own_state_detached
from lightning_elastic.supernet.supernet import get_supernet

_aten = torch.ops.aten
#: formulas ``FlopCounterMode`` lacks: the CPU flash-attention kernel computes what the CUDA kernels compute
EXTRA_FLOP_FORMULAS: dict[Any, Callable] = (
    {_aten._scaled_dot_product_flash_attention_for_cpu: getattr(sdpa_flop, "__wrapped__", sdpa_flop)}
    if hasattr(_aten, "_scaled_dot_product_flash_attention_for_cpu") else {})
CONVS = {_aten.convolution, _aten._convolution, _aten.cudnn_convolution, _aten.convolution_overrideable,
         _aten._slow_conv2d_forward}


class CostsFallbackWarning(UserWarning):
    """Params and MACs of this model are counted with a traced forward per config (slow, but exact)."""


def flop_counter() -> FlopCounterMode:
    """The ``FlopCounterMode`` whose count defines MACs (FLOPs / 2), the same on every device."""
    return FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)


# -- tracing ------------------------------------------------------------------------------------------------------
class _Recorder(FlopCounterMode):
    """Records every counted op with the innermost module running it."""

    def __init__(self, stack: list[nn.Module]) -> None:
        super().__init__(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
        self.stack = stack
        self.ops: list[tuple[nn.Module | None, Any, int]] = []

    def _count_flops(self, func_packet, out, args, kwargs):
        if func_packet in self.flop_registry:
            owner = self.stack[-1] if self.stack else None
            # an elastic kernel's OFA transform computes weights, not activations: the export holds its result
            if not (isinstance(owner, ElasticConv2d) and func_packet not in CONVS):
                flops = self.flop_registry[func_packet](*args, **kwargs, out_val=out)
                self.ops.append((owner, func_packet, int(flops)))
        return out


class Trace:
    """One batch-1 forward of a selected subnet: counted ops ``(module, op, flops)`` and the modules that ran."""

    def __init__(self, ops: list[tuple[nn.Module | None, Any, int]], called: list[nn.Module]) -> None:
        self.ops = ops
        self.called = called

    @property
    def flops(self) -> int:
        return sum(op[2] for op in self.ops)

    def keyed(self) -> dict[tuple[int, int], tuple[nn.Module | None, Any, int]]:
        """``{(module id, n-th counted op of that module): op}``: the same op in forwards of other configs."""
        seen: dict[int, int] = {}
        out = {}
        for op in self.ops:
            n = seen.get(id(op[0]), 0)
            seen[id(op[0])] = n + 1
            out[(id(op[0]), n)] = op
        return out

    def parameters(self) -> dict[int, tuple[nn.Module, str]]:
        """``{id(parameter): (first module running it, name)}``: the Parameters that ship, each once."""
        out: dict[int, tuple[nn.Module, str]] = {}
        for module in self.called:
            for name, p in module._parameters.items():
                if p is not None and id(p) not in out and not export_drops(module, name):
                    out[id(p)] = (module, name)
        return out


def export_drops(module: nn.Module, name: str) -> bool:
    """Parameters the export leaves out: OFA kernel transforms (the exported conv holds the transformed kernel)."""
    return isinstance(module, ElasticConv2d) and name.startswith("kernel_transform_")


def shape_at(input_shape: tuple[int, ...], resolution: int | None) -> tuple[int, ...]:
    """The per-sample input shape at a subnet's resolution (image inputs only)."""
    if resolution is None or len(input_shape) != 3:
        return tuple(input_shape)
    return (input_shape[0], resolution, resolution)


@contextmanager
def merged_lora(model: nn.Module) -> Iterator[None]:
    """Inside the block peft LoRA layers compute as their merged export does: base layer only (no adapter matmuls).

    peft's ``disable_adapters`` flag is set directly rather than through ``enable_adapters(False)``, which would also
    change the adapters' ``requires_grad``.
    """
    layers = [m for m in model.modules() if is_lora_layer(m) and hasattr(m, "_disable_adapters")]
    saved = [m.__dict__.get("_disable_adapters") for m in layers]
    for m in layers:
        m._disable_adapters = True
    try:
        yield
    finally:
        for m, value in zip(layers, saved):
            if value is None:
                m.__dict__.pop("_disable_adapters", None)
            else:
                m._disable_adapters = value


def trace(supernet: Any, cfg: Mapping[str, int], input_shape: tuple[int, ...],
          dtype: torch.dtype = torch.float32) -> Trace:
    """Run subnet ``cfg`` once at batch 1 (eval mode, no grad, LoRA merged) and record its counted ops."""
    model = supernet.model
    device = next(model.parameters()).device
    shape = (1, *shape_at(input_shape, supernet.resolution(cfg)))
    stack: list[nn.Module] = []
    called: dict[int, nn.Module] = {}

    def push(module, _args):
        stack.append(module)
        called.setdefault(id(module), module)

    def pop(_module, _args, _out):
        stack.pop()

    hooks = [h for m in model.modules()
             for h in (m.register_forward_pre_hook(push), m.register_forward_hook(pop, always_call=True))]
    was_training = model.training
    recorder = _Recorder(stack)
    try:
        model.eval()
        with supernet.subnet(cfg), merged_lora(model), torch.no_grad():
            # standard-normal images from a generator of its own (the global RNG is left alone); token id 0
            x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(0)).to(device) \
                if dtype.is_floating_point else torch.zeros(shape, dtype=dtype, device=device)
            with recorder:
                model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return Trace(recorder.ops, list(called.values()))


# -- exported sizes, on a meta copy ---------------------------------------------------------------------------------
class ExportedSizes:
    """Parameter sizes of exported subnets, from exports of a copy of the model on the meta device (no memory)."""

    def __init__(self, supernet: Any) -> None:
        model = supernet.model  # ops' materialised slices are not deep-copied (``ops.base._Plan.__deepcopy__``)
        memo: dict[int, Any] = {}
        for t in [*model.parameters(), *model.buffers()]:
            meta = torch.empty_like(t, device="meta")
            memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
        # lightning-elastic's own hooks (the training tap) would drag the Trainer into the copy; the Supernet stays
        with own_state_detached(model, holder_attr="<keep the supernet>"):
            self.net = get_supernet(copy.deepcopy(model, memo))
        self.names: dict[int, list[str]] = {}  # id of the *original* Parameter -> its names
        for name, p in model.named_parameters(remove_duplicate=False):
            self.names.setdefault(id(p), []).append(name)
        self.containers = {path: c for path, c in model.named_modules() if isinstance(c, _DepthMixin)}

    def shapes(self, cfg: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
        """``{exported parameter name: shape}`` of subnet ``cfg``."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UncalibratedExportWarning)
            exported = self.net.export(cfg, calibration_data="current")
        return {n: tuple(p.shape) for n, p in exported.named_parameters(remove_duplicate=False)}

    def exported_name(self, name: str, cfg: Mapping[str, int]) -> str | None:
        """The name a supernet Parameter has in the export of ``cfg`` (depth containers renumber the blocks they
        keep), or None when its block is dropped."""
        parts, out = name.split("."), []
        for i, part in enumerate(parts):
            container = self.containers.get(".".join(parts[:i]))
            if container is not None and part.isdigit():
                d = container.depth
                kept = sorted(container.order[: cfg.get(d.name, d.full)])
                if int(part) not in kept:
                    return None
                part = str(kept.index(int(part)))
            out.append(part)
        return ".".join(out)

    def shape_of(self, shapes: Mapping[str, tuple[int, ...]], param_id: int, cfg: Mapping[str, int]
                 ) -> tuple[int, ...] | None:
        for name in self.names.get(param_id, ()):
            exported = self.exported_name(name, cfg)
            if exported in shapes:
                return shapes[exported]
        return None


def count_costs_traced(supernet: Any, cfg: Mapping[str, int], input_shape: tuple[int, ...],
                       dtype: torch.dtype = torch.float32, sizes: ExportedSizes | None = None) -> dict[str, float]:
    """Params and MACs of ``cfg`` from one traced forward and one meta export (the reference; slow)."""
    cfg = supernet.space.validate(cfg)
    traced = trace(supernet, cfg, input_shape, dtype)
    try:
        sizes = sizes or ExportedSizes(supernet)
        shapes = sizes.shapes(cfg)
    except Exception:  # noqa: BLE001 - a subnet that does not export: count the slices that run
        sizes, shapes = None, {}
    params = 0
    for pid, (module, name) in traced.parameters().items():
        shape = sizes.shape_of(shapes, pid, cfg) if sizes is not None else None
        if shape is None:  # runs but the export names it otherwise: its active slice is what runs
            with supernet.subnet(cfg):
                shape = tuple((module._slice(name) if isinstance(module, ElasticOp) else module._parameters[name]
                               ).shape)
        params += int(np.prod(shape, dtype=np.int64))
    return {"params": float(params), "macs": traced.flops / 2.0}


# -- the tables ---------------------------------------------------------------------------------------------------
class Terms:
    """Terms ``coef[resolution] * prod(lookup[offset + choice index of dim])``, evaluated for all terms at once."""

    def __init__(self) -> None:
        self.coef: list[list[float]] = []
        self.slots: list[list[tuple[int, int]]] = []  # (dim position, lookup offset)
        self.keys: list[Any] = []

    def add(self, key: Any, coef: Sequence[float], slots: list[tuple[int, int]]) -> int:
        self.keys.append(key)
        self.coef.append([float(c) for c in coef])
        self.slots.append(slots)
        return len(self.keys) - 1

    def freeze(self, pad_dim: int) -> None:
        width = max([1, *(len(s) for s in self.slots)])
        slots = [s + [(pad_dim, 0)] * (width - len(s)) for s in self.slots]
        self.coef_arr = np.asarray(self.coef, dtype=np.float64).reshape(len(self.keys), -1).T.copy()  # (R, T)
        self.dim_arr = np.asarray([[d for d, _ in s] for s in slots], dtype=np.intp).reshape(len(slots), width)
        self.off_arr = np.asarray([[o for _, o in s] for s in slots], dtype=np.intp).reshape(len(slots), width)

    def values(self, lookup: np.ndarray, idx: np.ndarray, res: int) -> np.ndarray:
        """Each term's value: an integer (rounded; factors that are ratios carry float error ~1e-16)."""
        if not self.keys:
            return np.zeros(0)
        return np.rint(self.coef_arr[res] * lookup[self.off_arr + idx[self.dim_arr]].prod(axis=1))
