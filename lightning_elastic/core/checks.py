"""Argument validation shared by every layer: one place for the checks (and the messages) of numbers, counts and
space specs. Each raises :class:`ConfigError` naming the argument, the value, what is allowed, and a HINT."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning_elastic.core.errors import ConfigError


def check_int(name: str, value: Any, minimum: int = 0, *, hint: str | None = None) -> int:
    r"""``value`` if it is an integer (not a bool) >= ``minimum``.

    Raises:
        ConfigError: ``\`name\` got <value>; allowed: an integer >= <minimum>. HINT: <hint>.`` (default hint
            ``<name>=10``).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"`{name}` got {value!r}; allowed: an integer >= {minimum}. HINT: {hint or f'{name}=10'}.")
    return value


def check_number(name: str, value: Any, low: float, high: float, *, low_open: bool = False,
                 hint: str = "see the ElasticTraining docstring for typical values") -> float:
    """``value`` as a float if it is a number (not a bool) in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    ok = not isinstance(value, bool) and isinstance(value, int | float) and (
        low < value if low_open else low <= value) and value <= high
    if not ok:
        raise ConfigError(f"`{name}` got {value!r}; allowed: a number in {'(' if low_open else '['}{low}, {high}]. "
                          f"HINT: {hint}.")
    return float(value)


def check_spec(name: str, value: Any, *, multiplier: bool = False) -> None:
    """A ``SearchSpaceConfig`` size field: 'auto', None or a non-empty list of positive numbers; for size fields
    (``multiplier`` False) all ratios in (0, 1] (floats) or all absolute sizes (integers)."""
    if value is None or value == "auto":
        return
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ConfigError(
            f"`{name}` got {value!r}; allowed: 'auto', None (not elastic), or a non-empty list of numbers. "
            f"HINT: e.g. {name}=(0.5, 0.75, 1.0) for ratios or {name}=(2, 3, 4) for absolute values."
        )
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0]
    if bad:
        raise ConfigError(
            f"`{name}` has invalid values {bad}; allowed: positive numbers (floats <= 1 are ratios, integers "
            "absolute sizes). HINT: drop them."
        )
    if multiplier:
        return
    # a float is a ratio, an int an absolute size: a list mixing them (YAML's [0.5, 0.75, 1]) or a "ratio" above 1
    # would otherwise be read as absolute sizes and the ratios silently dropped
    big = [v for v in value if isinstance(v, float) and v > 1.0]
    if big:
        whole = all(float(v).is_integer() for v in value)
        raise ConfigError(
            f"`{name}` got {tuple(value)!r}: floats are ratios of the full size and must be in (0, 1], but {big} "
            "are above 1; allowed: ratios in (0, 1] or integer sizes. HINT: "
            + (f"write absolute sizes as integers: {name}={tuple(int(v) for v in value)!r}." if whole
               else f"ratios such as {name}=(0.5, 0.75, 1.0), or integer sizes such as {name}=(32, 64).")
        )
    ratios = [v for v in value if isinstance(v, float)]
    sizes = [v for v in value if isinstance(v, int)]
    if ratios and sizes:
        raise ConfigError(
            f"`{name}` got {tuple(value)!r}, which mixes ratios {ratios} (floats) and absolute sizes {sizes} "
            "(integers); allowed: all ratios in (0, 1] or all integer sizes. HINT: "
            + (f"write the full ratio as 1.0: {name}={tuple(float(v) if v == 1 else v for v in value)!r}."
               if sizes == [1] else f"ratios only, e.g. {name}=(0.5, 1.0), or integer sizes only, e.g. {name}={tuple(sizes)!r}.")
        )
