"""Objectives (``"val_acc:max"``) and constraints (``{"macs": 300e6}``) of a subnet search.

Costs (``params``, ``macs``, ``latency_ms``) are measured by :mod:`lightning_elastic.search.measure`; any other name is a
metric logged by the user's validation loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lightning_elastic.core.errors import ConfigError

#: measured costs; everything else is read from the validation loop's logged metrics.
COSTS = ("params", "macs", "latency_ms")
#: costs that are exact and cheap (a table lookup, see search/costs.py), so they are counted rather than predicted.
EXACT_COSTS = ("params", "macs")


#: directions people write for max / min (Optuna's "maximize", pandas-style "asc"/"desc"...)
_DIRECTION_SYNONYMS = {"maximize": "max", "maximise": "max", "maximum": "max", "higher": "max", "desc": "max",
                       "minimize": "min", "minimise": "min", "minimum": "min", "lower": "min", "asc": "min",
                       "+": "max", "-": "min", "up": "max", "down": "min"}


@dataclass(frozen=True)
class Objective:
    """One objective: a name and a direction (``"max"`` or ``"min"``)."""

    name: str
    direction: str

    @property
    def optuna_direction(self) -> str:
        return "maximize" if self.direction == "max" else "minimize"

    @property
    def is_cost(self) -> bool:
        return self.name in COSTS

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "max" else a < b

    def __str__(self) -> str:
        return f"{self.name}:{self.direction}"


def parse_objectives(objectives: Sequence[str] | str) -> list[Objective]:
    """Parse ``("val_acc:max", "macs:min")`` into :class:`Objective` s.

    Raises:
        ConfigError: empty list, a duplicate, a missing or wrong direction.

    Example:
        >>> parse_objectives(["val_acc:max", "macs:min"])[1]
        Objective(name='macs', direction='min')
    """
    if isinstance(objectives, str):
        objectives = [objectives]
    if not isinstance(objectives, Sequence) or not objectives:
        raise ConfigError(
            f"`objectives` got {objectives!r}; allowed: a non-empty list of 'name:max' / 'name:min'. "
            "HINT: objectives=('val_acc:max', 'macs:min')."
        )
    parsed: list[Objective] = []
    for item in objectives:
        name, sep, direction = str(item).rpartition(":")
        if not isinstance(item, str) or not sep or not name or direction not in ("max", "min"):
            # the hint repeats the name only: 'val_acc:maximize' must become 'val_acc:max', not 'val_acc:maximize:max'
            base = (name if sep else str(item)).strip() or "val_acc"
            synonym = _DIRECTION_SYNONYMS.get(direction.strip().lower()) if sep else None
            hint = (f"write '{base}:{synonym}'" if synonym else
                    f"write '{base}:max' for a metric to maximise (accuracy) or '{base}:min' for a cost")
            raise ConfigError(
                f"`objectives` entry {item!r} has no valid direction; allowed: 'name:max' or 'name:min'. "
                f"HINT: {hint}."
            )
        if name in COSTS and direction == "max":
            raise ConfigError(
                f"`objectives` entry {item!r} maximises a cost; allowed for {name!r}: ':min'. HINT: '{name}:min'."
            )
        if any(o.name == name for o in parsed):
            raise ConfigError(f"`objectives` lists {name!r} twice: {list(objectives)!r}. HINT: keep one entry.")
        parsed.append(Objective(name, direction))
    if all(o.is_cost for o in parsed):
        raise ConfigError(
            f"`objectives` {list(objectives)!r} has no validation metric; allowed: at least one metric logged by "
            "the validation loop. HINT: add the `monitor` name, e.g. 'val_acc:max'."
        )
    return parsed


def parse_constraints(constraints: Mapping[str, float] | None, objectives: Sequence[Objective]) -> dict[str, float]:
    """Validate ``{name: bound}``: an upper bound for a cost or a ':min' objective, a lower bound for a ':max' one.

    Raises:
        ConfigError: not a dict, a bound that is not a finite number.
    """
    if constraints is None:
        return {}
    if not isinstance(constraints, Mapping):
        raise ConfigError(
            f"`constraints` got {constraints!r}; allowed: a dict {{name: bound}}. HINT: constraints={{'macs': 300e6}}."
        )
    out = {}
    for name, bound in constraints.items():
        if isinstance(bound, bool) or not isinstance(bound, int | float) or not math.isfinite(bound):
            raise ConfigError(
                f"`constraints[{name!r}]` got {bound!r}; allowed: a finite number. HINT: {{'{name}': 300e6}}."
            )
        out[str(name)] = float(bound)
    return out


def constraint_sense(name: str, objectives: Sequence[Objective]) -> str:
    """``"max"`` when ``name`` must stay >= its bound (a maximised metric), else ``"min"`` (<= bound)."""
    for o in objectives:
        if o.name == name:
            return o.direction
    return "min" if name in COSTS else "max"


def violations(values: Mapping[str, float], constraints: Mapping[str, float],
               objectives: Sequence[Objective]) -> list[float]:
    """Optuna-style constraint values: <= 0 means satisfied (one per constraint, in order)."""
    out = []
    for name, bound in constraints.items():
        v = values[name]
        out.append(v - bound if constraint_sense(name, objectives) == "min" else bound - v)
    return out
