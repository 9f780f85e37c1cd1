"""The adapter protocol: find coupled dimension groups in an existing model, then swap in elastic ops.

An adapter never modifies the model in :meth:`Adapter.plan`; it returns a :class:`ConversionPlan`. The generic
:func:`lightning_elastic.to_supernet` applies overrides, checks everything, then swaps all modules at once, so a
failing conversion leaves the model untouched.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from lightning_elastic.core.config import SearchSpaceConfig
from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.core.space import ArchConfig, SearchSpace


class SupernetView(Protocol):
    """What adapter hooks (and export) may use of a :class:`lightning_elastic.Supernet`; the adapters sit below
    the supernet layer, so they see it through this protocol instead of importing it."""

    model: nn.Module
    space: SearchSpace
    adapter: Adapter
    config: SearchSpaceConfig
    meta: dict[str, Any]
    added_attributes: dict[str, frozenset[str]]

    def max_config(self) -> ArchConfig: ...

    def min_config(self) -> ArchConfig: ...

    def resolution(self, cfg: Mapping[str, int] | None = None) -> int | None: ...

    def subnet(self, cfg: Mapping[str, int], strict: bool = True) -> AbstractContextManager[ArchConfig]: ...


@dataclass
class LayerStack:
    """The residual layers a depth dim chooses from, so ``to_supernet`` can order them by measured importance.

    Attributes:
        path: qualified name of the container (``nn.ModuleList`` / ``nn.Sequential``) the depth dim replaces; each
            child maps hidden states to hidden states of the same shape.
        first: layers every order must start with (a decoder's layer 0: the KV cache reads the length from it).
        order: an order the adapter already fixed (``HFBertAdapter(depth_order=...)``), or None.
        fixed: why this stack must keep its order (e.g. layers of different types indexed by position), or None.
    """

    path: str
    first: tuple[int, ...] = ()
    order: list[int] | None = None
    fixed: str | None = None


@dataclass
class ConversionPlan:
    """What an adapter wants done.

    Attributes:
        dims: every dimension it found (non-elastic ones are dropped from the space after overrides).
        replacements: ``(qualified module name, factory)``; ``factory(original) -> elastic module``.
        after_apply: callables run once after every swap (bind attributes such as ``num_heads`` to dims).
        meta: JSON-serialisable facts needed to rebuild the original model in :meth:`Adapter.build_original`.
        layer_stacks: ``{depth dim name: LayerStack}`` for depth dims whose layers may be kept in any order (what
            ``SearchSpaceConfig.depth_importance`` reorders); depth dims not listed always drop trailing blocks.
    """

    dims: list[ElasticDim] = field(default_factory=list)
    replacements: list[tuple[str, Callable[[nn.Module], nn.Module]]] = field(default_factory=list)
    after_apply: list[Callable[[], None]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    layer_stacks: dict[str, LayerStack] = field(default_factory=dict)

    def replace(self, name: str, factory: Callable[[nn.Module], nn.Module]) -> None:
        self.replacements.append((name, factory))


class Adapter(ABC):
    """Base class of model-family adapters.

    Subclasses set ``name`` (registry key) and ``supported`` (one line for error messages) and implement
    :meth:`matches` and :meth:`plan`. Override :meth:`finalize_export`, :meth:`build_original`, :meth:`save` /
    :meth:`load` where the family needs it.
    """

    name: str = ""
    supported: str = ""

    @abstractmethod
    def matches(self, model: nn.Module) -> bool:
        """Whether this adapter handles ``model`` (checked in registration order)."""

    @abstractmethod
    def plan(self, model: nn.Module, config: SearchSpaceConfig) -> ConversionPlan:
        """Find dims and replacements without modifying ``model``. Raise ConversionError on problems."""

    def finalize_export(self, model: nn.Module, supernet: SupernetView, cfg: dict[str, int]) -> None:
        """Fix size attributes / configs on an exported model (after all elastic ops were replaced)."""
        return None  # optional hook: most adapters' exports need no fixing

    def build_original(self, meta: dict[str, Any]) -> nn.Module:
        """Rebuild the original (randomly initialised) model from ``plan.meta``; used by ``load_subnet``."""
        raise NotImplementedError(f"adapter {self.name!r} cannot rebuild models from metadata")

    def save(self, exported: nn.Module, supernet: SupernetView, cfg: dict[str, int], directory: Path) -> None:
        """Write adapter-specific files beside the default safetensors + ``subnet.json`` (optional)."""
        return None  # optional hook: the default files are enough

    def load(self, directory: Path, info: dict[str, Any]) -> nn.Module | None:
        """Load an exported subnet directly (e.g. ``from_pretrained``); return None to use the default path."""
        return None
