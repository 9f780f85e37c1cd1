"""Model-family adapters and their registry. Each adapter module imports its own library only, lazily."""

from lightning_elastic.adapters import registry as _registry
from lightning_elastic.adapters.base import Adapter, ConversionPlan, LayerStack
from lightning_elastic.adapters.registry import (
    ENTRY_POINT_GROUP,
    find_adapter,
    get_adapter,
    register_adapter,
    registered_adapters,
    unregister_adapter,
)

__all__ = ["ENTRY_POINT_GROUP", "Adapter", "ConversionPlan", "LayerStack", "find_adapter", "get_adapter",
           "load_builtin_adapters", "register_adapter", "registered_adapters", "unregister_adapter"]

_BUILTIN = (
    "lightning_elastic.adapters.timm_resnet",
    "lightning_elastic.adapters.timm_efficientnet",
    "lightning_elastic.adapters.timm_vit",
    "lightning_elastic.adapters.hf_bert",
    "lightning_elastic.adapters.hf_llama",
    "lightning_elastic.adapters.hf_vit",
    "lightning_elastic.adapters.hf_generic",
    "lightning_elastic.adapters.peft_lora",
    "lightning_elastic.adapters.generic",  # last: family adapters win
)
_registry.BUILTIN_MODULES = _BUILTIN  # imported by the registry on its first lookup


def load_builtin_adapters() -> None:
    """Import the built-in adapter modules now (each registers itself); missing ones are skipped."""
    registered_adapters()
