"""Model-family adapters. Each imports its own library only, lazily."""

from lightning_elastic.adapters.base import Adapter, ConversionPlan

__all__ = ["Adapter", "ConversionPlan", "load_builtin_adapters"]

_BUILTIN = (
    "lightning_elastic.adapters.timm_resnet",
    "lightning_elastic.adapters.timm_efficientnet",
    "lightning_elastic.adapters.timm_vit",
    "lightning_elastic.adapters.hf_bert",
    "lightning_elastic.adapters.hf_llama",
    "lightning_elastic.adapters.hf_vit",
    "lightning_elastic.adapters.peft_lora",
)


def load_builtin_adapters() -> None:
    """Import the built-in adapter modules (each registers itself); missing ones are skipped."""
    import importlib
    import importlib.util

    for name in _BUILTIN:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
