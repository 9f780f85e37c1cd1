"""The adapter registry: ``{name: adapter}``, refusing duplicates."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_elastic.core.errors import RegistryError, UnsupportedModelError

if TYPE_CHECKING:
    from torch import nn

    from lightning_elastic.adapters.base import Adapter

_ADAPTERS: dict[str, Adapter] = {}


def register_adapter(adapter: Adapter, *, replace: bool = False) -> Adapter:
    """Register an adapter instance under ``adapter.name``.

    Raises:
        RegistryError: if the name is taken and ``replace`` is False.
    """
    name = getattr(adapter, "name", None)
    if not isinstance(name, str) or not name:
        raise RegistryError(f"adapter {adapter!r} has no `name` string. HINT: set a class attribute `name = '...'`.")
    if name in _ADAPTERS and not replace:
        raise RegistryError(
            f"an adapter named {name!r} is already registered ({type(_ADAPTERS[name]).__name__}). "
            "HINT: pick another name, or pass replace=True to override it on purpose."
        )
    _ADAPTERS[name] = adapter
    return adapter


def unregister_adapter(name: str) -> None:
    _ADAPTERS.pop(name, None)


def registered_adapters() -> dict[str, Adapter]:
    _load_builtin()
    return dict(_ADAPTERS)


def get_adapter(name: str) -> Adapter:
    _load_builtin()
    if name not in _ADAPTERS:
        raise RegistryError(
            f"`adapter` {name!r} is not registered; registered: {sorted(_ADAPTERS)}. HINT: import the module "
            "that calls register_adapter(...) first, or pass the Adapter instance itself."
        )
    return _ADAPTERS[name]


def find_adapter(model: nn.Module) -> Adapter:
    """The first registered adapter whose ``matches(model)`` is true."""
    _load_builtin()
    for adapter in _ADAPTERS.values():
        if adapter.matches(model):
            return adapter
    supported = "\n".join(f"  - {a.name}: {a.supported}" for a in _ADAPTERS.values())
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    found = f" (model_type {model_type!r})" if isinstance(model_type, str) else ""
    raise UnsupportedModelError(
        f"no adapter can convert a {type(model).__module__}.{type(model).__name__}{found}. Supported families:\n"
        f"{supported}\nHINT: subclass lightning_elastic.adapters.Adapter and call "
        "lightning_elastic.register_adapter(MyAdapter()); see docs/adding_an_adapter.md."
    )


_loaded = False


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from lightning_elastic.adapters import load_builtin_adapters

    load_builtin_adapters()
