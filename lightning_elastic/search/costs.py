"""Exact params and MACs of a subnet: tables built once per supernet, then microseconds per config.

A LINAS round scores ~500 candidate configs; counting each with a forward under ``FlopCounterMode`` took 1,044 s of a
1,349 s search on SmolLM2-135M. :class:`CostModel` traces the model a handful of times, once, and then prices a
config with a table lookup (see :mod:`lightning_elastic.search.cost_tables` for how the tables are built and checked).
A model the tables cannot describe is counted with a traced forward per config instead (:func:`count_costs_traced`),
with one :class:`CostsFallbackWarning`: slower, never a wrong number.

What is counted is what ships:

- MACs are FLOPs / 2 of one batch-1 forward as :func:`flop_counter` counts them: ``FlopCounterMode`` plus a formula
  for PyTorch's CPU flash-attention kernel, which ``FlopCounterMode`` leaves at zero on CPU while it counts the same
  attention on CUDA and on the meta device. With it a subnet has the same MACs on every device.
- Params are those of the modules the forward runs (blocks a depth choice skips are not), each Parameter once, at
  the size the exported subnet gives it: elastic ops at their active slice, and Parameters an adapter cuts at export
  (a ViT's ``cls_token`` / ``pos_embed`` at a smaller embed dim) as cut. Sizes are read off exports of a copy of the
  model on the meta device, which costs no memory.
- A peft LoRA supernet runs as its base layers only, since export merges each adapter into its base weights
  (``save_subnet``'s main model is the merged one; the optional ``peft_adapter/`` folder holds the same weights in
  unmerged form and is not counted again). An OFA kernel transform computes a weight, not an activation: neither
  its matrix nor its matmul ships.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from weakref import WeakKeyDictionary

import numpy as np
import torch

from lightning_elastic.search.cost_trace import (  # noqa: F401 - re-exported: the public names live here
    CostsFallbackWarning,
    ExportedSizes,
    Terms,
    count_costs_traced,
    flop_counter,
    merged_lora,
    shape_at,
)

__all__ = ["CostModel", "CostsFallbackWarning", "count_costs", "count_costs_traced", "cost_counter", "flop_counter"]


class CostModel:
    """Exact params and MACs of any config of a supernet from precomputed tables.

    Build it with :meth:`build`; a call costs tens of microseconds. It holds no reference to the model.

    Example:
        >>> costs = CostModel.build(net, (3, 224, 224))  # doctest: +SKIP
        >>> costs(net.min_config())  # doctest: +SKIP
        {'params': 1234.0, 'macs': 56789.0}
    """

    def __init__(self, space: Any, lookup: Sequence[float], macs: Terms, params: Terms) -> None:
        self.space = space
        self._index = [(d.name, {c: i for i, c in enumerate(d.choices)}) for d in space]
        self._res = space.names().index("resolution") if "resolution" in space else None
        self._lookup = np.asarray(lookup, dtype=np.float64)
        self.macs_terms, self.params_terms = macs, params
        for terms in (macs, params):
            terms.freeze(pad_dim=len(self._index))

    def indices(self, cfg: Mapping[str, int]) -> tuple[np.ndarray, int]:
        """The choice index of every dim (plus the padding slot's 0) and the resolution's."""
        try:
            if len(cfg) != len(self._index):
                raise KeyError
            idx = np.asarray([*(ci[cfg[name]] for name, ci in self._index), 0], dtype=np.intp)
        except (KeyError, TypeError):
            cfg = self.space.validate(cfg)  # raises the ConfigError naming every bad key
            idx = np.asarray([*(ci[cfg[name]] for name, ci in self._index), 0], dtype=np.intp)
        return idx, (0 if self._res is None else int(idx[self._res]))

    def term_values(self, cfg: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """Per-term FLOPs and params of ``cfg`` (for checks)."""
        idx, res = self.indices(cfg)
        return (self.macs_terms.values(self._lookup, idx, res), self.params_terms.values(self._lookup, idx, res))

    def __call__(self, cfg: Mapping[str, int]) -> dict[str, float]:
        flops, params = self.term_values(cfg)
        return {"params": float(params.astype(np.int64).sum()), "macs": int(flops.astype(np.int64).sum()) / 2.0}

    @classmethod
    def build(cls, supernet: Any, input_shape: Sequence[int], dtype: torch.dtype = torch.float32) -> CostModel:
        """Trace the supernet a few times and build its tables.

        Raises:
            Unsupported: the tables cannot describe this model (:func:`cost_counter` then counts by tracing).
        """
        from lightning_elastic.search.cost_tables import TableBuilder

        return TableBuilder(supernet, tuple(int(s) for s in input_shape), dtype).build(cls)


# -- the front door ---------------------------------------------------------------------------------------------
def cost_counter(supernet: Any, input_shape: Sequence[int], dtype: torch.dtype = torch.float32
                 ) -> Callable[[Mapping[str, int]], dict[str, float]]:
    """A function ``cfg -> {"params", "macs"}`` for this supernet: its tables, or a traced count per config when the
    tables cannot describe the model (one :class:`CostsFallbackWarning` says why)."""
    from lightning_elastic.search.cost_tables import Unsupported

    shape = tuple(int(s) for s in input_shape)
    try:
        return CostModel.build(supernet, shape, dtype)
    except Unsupported as err:
        warnings.warn(
            f"params and MACs of this {type(supernet.model).__name__} are counted with a traced forward per config "
            f"(exact, but one forward pass each) because {err}. HINT: nothing to fix for correctness; models built "
            "from lightning-elastic's elastic ops get exact costs in microseconds.",
            CostsFallbackWarning, stacklevel=2)
        try:
            sizes = ExportedSizes(supernet)
        except Exception:  # noqa: BLE001 - a model that cannot be copied: each count makes its own attempt
            sizes = None
        return lambda cfg: count_costs_traced(supernet, cfg, shape, dtype, sizes)


_COUNTERS: WeakKeyDictionary = WeakKeyDictionary()


def count_costs(supernet: Any, cfg: Mapping[str, int], input_shape: tuple[int, ...],
                dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Exact ``params`` and ``macs`` of subnet ``cfg`` at batch 1 (see the module doc for what is counted).

    The tables are built on the first call for a supernet and input shape (a few traced forwards) and reused.

    Raises:
        ConfigError: ``cfg`` is not a complete, valid config of the space.

    Example:
        >>> count_costs(net, net.min_config(), (3, 32, 32))  # doctest: +SKIP
        {'params': 1234.0, 'macs': 56789.0}
    """
    key = (tuple(int(s) for s in input_shape), dtype, tuple((d.name, d.choices) for d in supernet.space))
    counters = _COUNTERS.setdefault(supernet, {})
    if key not in counters:
        counters[key] = cost_counter(supernet, input_shape, dtype)
    return counters[key](cfg)
