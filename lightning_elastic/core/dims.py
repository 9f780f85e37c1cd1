"""``ElasticDim``: a named group of coupled sizes.

A dimension owns its choices, its active value, its full (original) value and, once ordered, the importance
permutation that was applied to the tensors it slices. Elastic ops hold references to dims and read ``active`` in
their forward, so switching a subnet is a matter of setting values on dims.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_elastic.core.errors import ConfigError

#: kinds of dimension; ``kind`` only informs defaults, encodings and docs.
DIM_KINDS = ("width", "depth", "kernel", "heads", "resolution", "rank", "other")

#: bumped whenever any dim's ``active`` changes. Elastic ops key their per-``select`` state on it, so a forward
#: checks one integer instead of walking its dims (see ``ops.base.ElasticOp._plan``).
_GENERATION = [0]


@dataclass
class CoupledTensor:
    """One tensor axis sliced by a dimension.

    Args:
        module: the module that owns the tensor.
        name: the parameter or buffer name on ``module``.
        axis: the axis the dimension slices.
        unit: how many elements of the axis one step of the dimension is (``head_dim`` for heads, 1 for channels).
        segments: the axis is made of this many equal segments, each sliced the same way (3 for a fused qkv).
        scores: whether this tensor contributes to the importance score (weights do, biases and norms do not).
    """

    module: torch.nn.Module
    name: str
    axis: int
    unit: int = 1
    segments: int = 1
    scores: bool = True

    @property
    def tensor(self) -> torch.Tensor:
        return getattr(self.module, self.name)


@dataclass
class ChannelGroup:
    """Tensors that share one channel space and so one importance permutation."""

    tensors: list[CoupledTensor] = field(default_factory=list)

    def add(self, module: torch.nn.Module, name: str, axis: int, *, unit: int = 1, segments: int = 1,
            scores: bool | None = None) -> ChannelGroup:
        if getattr(module, name, None) is None:
            return self  # optional tensors (bias=None) are skipped
        tensor = getattr(module, name)
        if scores is None:
            scores = tensor.dim() >= 2
        self.tensors.append(CoupledTensor(module, name, axis, unit, segments, scores))
        return self


class ElasticDim:
    """A named group of coupled sizes, e.g. the MLP hidden size of block 3.

    Args:
        name: stable, readable name such as ``blocks.3.mlp.hidden``.
        choices: the allowed values, any order; stored sorted ascending and de-duplicated.
        full: the value of the original model. It must be the largest choice.
        kind: one of :data:`DIM_KINDS`.

    Example:
        >>> dim = ElasticDim("layer1.0.width", [16, 32, 64], full=64, kind="width")
        >>> dim.active = 32
    """

    def __init__(self, name: str, choices: Iterable[int], full: int, kind: str = "width") -> None:
        choices = sorted(set(int(c) for c in choices))
        if not choices:
            raise ConfigError(f"`choices` of dimension {name!r} is empty. HINT: give at least one value <= {full}.")
        if kind not in DIM_KINDS:
            raise ConfigError(
                f"`kind` of dimension {name!r} is {kind!r}; allowed: {', '.join(DIM_KINDS)}. "
                "HINT: use 'other' for a dimension that fits none of them."
            )
        if choices[-1] != full or choices[0] <= 0:
            raise ConfigError(
                f"`choices` of dimension {name!r} are {choices}; they must be positive and the largest must equal "
                f"the model's full size {full}. HINT: include {full} and drop values above it."
            )
        self.name = name
        self.kind = kind
        self.full = int(full)
        self._choices: tuple[int, ...] = tuple(choices)
        self._active = self.full
        self.groups: list[ChannelGroup] = []
        self.importance: list[torch.Tensor] | None = None  # one permutation per group once ordered
        self._listeners: list[Callable[[int], None]] = []

    # -- values -------------------------------------------------------------------------------------------
    @property
    def choices(self) -> tuple[int, ...]:
        return self._choices

    @choices.setter
    def choices(self, values: Sequence[int]) -> None:
        values = sorted(set(int(v) for v in values))
        bad = [v for v in values if v <= 0 or v > self.full]
        if not values or bad:
            raise ConfigError(
                f"`choices` for dimension {self.name!r} got {list(values)}; allowed values are integers in "
                f"[1, {self.full}]. HINT: the full size of this dimension is {self.full}."
            )
        self._choices = tuple(values)
        if self._active not in self._choices:
            self.active = self.max

    @property
    def max(self) -> int:
        return self._choices[-1]

    @property
    def min(self) -> int:
        return self._choices[0]

    @property
    def active(self) -> int:
        return self._active

    @active.setter
    def active(self, value: int) -> None:
        value = int(value)
        if value != self._active:
            self._active = value
            _GENERATION[0] += 1
            for fn in self._listeners:
                fn(value)

    @property
    def is_elastic(self) -> bool:
        return len(self._choices) > 1

    def on_change(self, fn: Callable[[int], None]) -> None:
        """Call ``fn(value)`` whenever ``active`` changes (used to keep attributes such as ``num_heads`` in sync)."""
        self._listeners.append(fn)

    def couple(self, group: ChannelGroup | None = None) -> ChannelGroup:
        """Add (or create) a channel group of tensors sliced by this dim."""
        group = group if group is not None else ChannelGroup()
        self.groups.append(group)
        return group

    def __repr__(self) -> str:
        return f"ElasticDim({self.name!r}, choices={list(self._choices)}, active={self._active}, full={self.full})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "full": self.full, "choices": list(self._choices)}
