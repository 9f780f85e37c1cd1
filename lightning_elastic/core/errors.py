"""Exceptions raised by lightning-elastic.

Every error names the argument, the value received, what is allowed and gives a ``HINT:`` with the fix.
All inherit from :class:`ElasticError`, a :class:`ValueError`, so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class ElasticError(ValueError):
    """Base class for every user-facing error of lightning-elastic."""


class ConfigError(ElasticError):
    """An architecture config or a search-space option is invalid."""


class UnsupportedModelError(ElasticError):
    """No registered adapter can convert the given model."""


class ConversionError(ElasticError):
    """An adapter matched the model but the model or the space cannot be converted."""


class RegistryError(ElasticError):
    """An adapter registration is invalid (for example a duplicate name)."""


class ExportError(ElasticError):
    """A subnet cannot be exported, saved or loaded."""


class UncalibratedExportWarning(UserWarning):
    """A BatchNorm subnet was exported with the supernet's blended running statistics, not its own.

    Pass ``calibration_data`` (a few training batches) to ``Supernet.export`` / ``save_subnet`` to silence it the
    right way.
    """
