"""TRANSITIONAL alias of :mod:`lightning_elastic.adapters.registry` (the adapters own their registry).

Kept only until every module imports ``lightning_elastic.adapters.registry`` instead; then this file is deleted
(tests/core/test_layering.py lists it as the one pending exception to the layer order).
"""

from lightning_elastic.adapters.registry import (  # noqa: F401
    find_adapter,
    get_adapter,
    register_adapter,
    registered_adapters,
    unregister_adapter,
)
