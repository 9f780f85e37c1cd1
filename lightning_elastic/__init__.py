"""lightning-elastic: elastic / once-for-all training for PyTorch Lightning.

Public API: convert (:func:`to_supernet`), train (:class:`ElasticTraining`, :class:`ElasticModule`), search
(:class:`SubnetSearch`) and export (:meth:`Supernet.export`, :func:`save_subnet`, :func:`load_subnet`).
"""

from lightning_elastic.adapters.base import Adapter, ConversionPlan, LayerStack
from lightning_elastic.adapters.registry import register_adapter, registered_adapters
from lightning_elastic.core.config import SearchSpaceConfig
from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.core.errors import (
    ConfigError,
    ConversionError,
    ElasticError,
    ExportError,
    RegistryError,
    UncalibratedExportWarning,
    UnsupportedModelError,
)
from lightning_elastic.core.importance import ActivationImportance
from lightning_elastic.core.space import SearchSpace
from lightning_elastic.supernet.convert import to_supernet
from lightning_elastic.supernet.importance import BlockInfluence
from lightning_elastic.supernet.io import load_subnet, save_subnet
from lightning_elastic.supernet.supernet import Supernet, find_supernet, get_supernet, require_supernet

__version__ = "0.1.0"

__all__ = [
    "ActivationImportance",
    "Adapter",
    "BlockInfluence",
    "ConfigError",
    "ConversionError",
    "ConversionPlan",
    "ElasticDim",
    "ElasticError",
    "ExportError",
    "LayerStack",
    "RegistryError",
    "SearchSpace",
    "SearchSpaceConfig",
    "Supernet",
    "UncalibratedExportWarning",
    "UnsupportedModelError",
    "find_supernet",
    "get_supernet",
    "load_subnet",
    "register_adapter",
    "registered_adapters",
    "require_supernet",
    "save_subnet",
    "to_supernet",
]


def __getattr__(name: str):
    # training / search / cli pull in Lightning, Optuna …: import them lazily
    lazy = {
        "ElasticTraining": "lightning_elastic.training.callback",
        "ElasticModule": "lightning_elastic.training.module",
        "SubnetSearch": "lightning_elastic.search.callback",
    }
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(f"module 'lightning_elastic' has no attribute {name!r}")
