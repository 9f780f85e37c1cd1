"""The adapter registry: ``{name: adapter}``, refusing duplicates.

Three sources, loaded once and lazily on the first lookup: adapters registered with :func:`register_adapter`, the
built-in adapter modules (each registers itself on import; a module whose library is missing is skipped), and the
``lightning_elastic.adapters`` entry points of installed distributions (third-party adapters).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from collections.abc import Iterator

from torch import nn

from lightning_elastic.adapters.base import Adapter
from lightning_elastic.core.errors import RegistryError, UnsupportedModelError

#: the entry-point group third-party adapters register under (see docs/adding_an_adapter.md)
ENTRY_POINT_GROUP = "lightning_elastic.adapters"

_ADAPTERS: dict[str, Adapter] = {}
#: modules imported on the first lookup; ``lightning_elastic.adapters`` sets the built-in ones
BUILTIN_MODULES: tuple[str, ...] = ()
_loaded_builtin = False
_loaded_entry_points: set[tuple[str, str]] = set()
_entry_points_done = False  # every entry point loaded (a failing one keeps this False: it is retried)


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
    _load()
    return dict(_ADAPTERS)


def get_adapter(name: str) -> Adapter:
    _load()
    if name not in _ADAPTERS:
        raise RegistryError(
            f"`adapter` {name!r} is not registered; registered: {sorted(_ADAPTERS)}. HINT: import the module "
            "that calls register_adapter(...) first, install the package that provides it (entry-point group "
            f"{ENTRY_POINT_GROUP!r}), or pass the Adapter instance itself."
        )
    return _ADAPTERS[name]


def find_adapter(model: nn.Module) -> Adapter:
    """The first registered adapter whose ``matches(model)`` is true."""
    return next(matching_adapters(model))


def matching_adapters(model: nn.Module) -> Iterator[Adapter]:
    """The registered adapters whose ``matches(model)`` is true, in registration order (family adapters first, the
    generic graph adapter last), each asked only when the previous one was taken; raises
    :class:`UnsupportedModelError` on the first step if there is none."""
    _load()
    found = False
    for adapter in list(_ADAPTERS.values()):
        if adapter.matches(model):
            found = True
            yield adapter
    if found:
        return
    supported = "\n".join(f"  - {a.name}: {a.supported}" for a in _ADAPTERS.values())
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    kind = f" (model_type {model_type!r})" if isinstance(model_type, str) else ""
    raise UnsupportedModelError(
        f"no adapter can convert a {type(model).__module__}.{type(model).__name__}{kind}. Supported families:\n"
        f"{supported}\nHINT: subclass lightning_elastic.adapters.Adapter and call "
        "lightning_elastic.register_adapter(MyAdapter()); see docs/adding_an_adapter.md."
    )


def _load() -> None:
    global _loaded_builtin
    if not _loaded_builtin:
        _loaded_builtin = True
        for module in BUILTIN_MODULES:
            if importlib.util.find_spec(module) is not None:
                importlib.import_module(module)
    if not _entry_points_done:
        load_entry_points()


def load_entry_points() -> None:
    """Register the adapters of the ``lightning_elastic.adapters`` entry points not loaded yet.

    An entry point names an :class:`Adapter` subclass (instantiated without arguments) or instance; an adapter its
    module already registered on import is not registered twice. A failing entry point is retried on the next lookup.

    Raises:
        RegistryError: an entry point fails to import, names something that is not an Adapter, or registers a name
            that is taken (the message names the entry point, its distribution and the cause).
    """
    global _entry_points_done
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = (ep.name, ep.value)
        if key in _loaded_entry_points:
            continue
        try:
            obj = ep.load()
            adapter = obj() if isinstance(obj, type) and issubclass(obj, Adapter) else obj
            if not isinstance(adapter, Adapter):
                raise TypeError(f"it names a {type(obj).__name__}, not an Adapter subclass or instance")
            if _ADAPTERS.get(adapter.name) is not adapter:
                register_adapter(adapter)
        except Exception as err:  # noqa: BLE001 - any failure of third-party code: name the entry point
            dist = ep.dist.name if ep.dist is not None else "an unknown distribution"
            raise RegistryError(
                f"the adapter entry point {ep.name!r} = {ep.value!r} (group {ENTRY_POINT_GROUP!r}) of distribution "
                f"{dist!r} failed to load: {type(err).__name__}: {err}. HINT: the entry point must name an Adapter "
                f"subclass or instance, e.g. 'my_package.adapter:MyAdapter'; fix or uninstall {dist!r}."
            ) from err
        _loaded_entry_points.add(key)
    _entry_points_done = True
