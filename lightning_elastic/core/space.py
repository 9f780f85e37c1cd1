"""``SearchSpace``: every elastic dimension of a supernet, with sampling and encoding.

All randomness comes from a caller-supplied :class:`torch.Generator`, so sampling is a pure function of the
generator state (identical across DDP ranks, replayable after resume).
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.core.errors import ConfigError

ArchConfig = dict[str, int]


class SearchSpace:
    """An ordered collection of :class:`ElasticDim` s keyed by name.

    Example:
        >>> space = SearchSpace([ElasticDim("a", [1, 2], 2), ElasticDim("b", [8, 16], 16)])
        >>> space.num_subnets
        4
        >>> space.sample(torch.Generator().manual_seed(0))  # doctest: +SKIP
        {'a': 1, 'b': 16}
    """

    def __init__(self, dims: list[ElasticDim]) -> None:
        self._dims: dict[str, ElasticDim] = {}
        for d in dims:
            if d.name in self._dims:
                raise ConfigError(f"duplicate dimension name {d.name!r} in the search space. HINT: names must be unique.")
            self._dims[d.name] = d

    # -- container -----------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> ElasticDim:
        return self._dims[name]

    def __contains__(self, name: object) -> bool:
        return name in self._dims

    def __iter__(self) -> Iterator[ElasticDim]:
        return iter(self._dims.values())

    def __len__(self) -> int:
        return len(self._dims)

    def names(self) -> list[str]:
        return list(self._dims)

    def match(self, pattern: str) -> list[ElasticDim]:
        """Dims whose name equals ``pattern`` or matches it as a glob (``blocks.*.mlp.hidden``)."""
        if pattern in self._dims:
            return [self._dims[pattern]]
        return [d for n, d in self._dims.items() if fnmatch.fnmatchcase(n, pattern)]

    @property
    def elastic_dims(self) -> list[ElasticDim]:
        return [d for d in self if d.is_elastic]

    @property
    def num_subnets(self) -> int:
        return math.prod(len(d.choices) for d in self)

    def describe(self) -> dict[str, list[int]]:
        return {d.name: list(d.choices) for d in self}

    def signature(self) -> str:
        """A stable string that identifies the space (names, full sizes and choices)."""
        return json.dumps([d.to_dict() for d in self], sort_keys=True)

    # -- configs -------------------------------------------------------------------------------------------
    def max_config(self) -> ArchConfig:
        return {d.name: d.max for d in self}

    def min_config(self) -> ArchConfig:
        return {d.name: d.min for d in self}

    def active_config(self) -> ArchConfig:
        return {d.name: d.active for d in self}

    def validate(self, cfg: Mapping[str, int], strict: bool = True) -> ArchConfig:
        """Check a config and return it complete (missing keys filled with max when ``strict=False``).

        Raises:
            ConfigError: listing every unknown, missing and out-of-choice key at once.
        """
        out, problems = self.check(cfg, strict)
        if problems:
            missing = strict and any(p.startswith("missing keys") for p in problems)
            raise ConfigError(
                "invalid architecture config: " + "; ".join(problems) + ". "
                "HINT: `supernet.space.describe()` lists every dimension and its choices"
                + ("; pass strict=False to fill missing keys with their max." if missing else ".")
            )
        return out

    def check(self, cfg: Any, strict: bool = True) -> tuple[ArchConfig, list[str]]:
        """``(complete config, problems)``: what :meth:`validate` checks, for callers that word their own error
        (the command line, which has no ``strict`` option).

        Raises:
            ConfigError: ``cfg`` is not a dict.
        """
        if not isinstance(cfg, Mapping):
            raise ConfigError(
                f"`cfg` must be a dict {{dim_name: value}}, got {type(cfg).__name__}. "
                "HINT: use `supernet.space.max_config()` as a template."
            )
        problems = []
        unknown = [k for k in cfg if k not in self._dims]
        if unknown:
            problems.append(f"unknown keys {unknown}")
        missing = [n for n in self._dims if n not in cfg]
        if strict and missing:
            problems.append(f"missing keys {missing}")
        out: ArchConfig = {}
        for name, d in self._dims.items():
            if name not in cfg:
                out[name] = d.max
                continue
            value = cfg[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or \
                    int(value) != value:
                problems.append(f"{name}={value!r} is not an integer (choices {list(d.choices)})")
                continue
            if int(value) not in d.choices:
                problems.append(f"{name}={value!r} not in choices {list(d.choices)}")
                continue
            out[name] = int(value)
        return out, problems

    def apply(self, cfg: ArchConfig) -> None:
        """Set every dim's active value (no validation; use :meth:`validate` first)."""
        for name, value in cfg.items():
            self._dims[name].active = value

    # -- sampling ------------------------------------------------------------------------------------------
    @staticmethod
    def _randint(high: int, generator: torch.Generator) -> int:
        return int(torch.randint(high, (1,), generator=generator).item())

    def sample(self, generator: torch.Generator) -> ArchConfig:
        """Uniformly random config: each dim's choice drawn independently."""
        return {d.name: d.choices[self._randint(len(d.choices), generator)] for d in self}

    def mutate(self, cfg: ArchConfig, prob: float, generator: torch.Generator) -> ArchConfig:
        """Resample each dim with probability ``prob``."""
        if isinstance(prob, bool) or not isinstance(prob, int | float) or not 0.0 <= prob <= 1.0:
            raise ConfigError(f"`prob` got {prob!r}; allowed: a number in [0, 1]. HINT: 0.1 to 0.3 is usual.")
        out = dict(cfg)
        for d in self:
            if torch.rand((1,), generator=generator).item() < prob:
                out[d.name] = d.choices[self._randint(len(d.choices), generator)]
        return out

    def crossover(self, a: ArchConfig, b: ArchConfig, generator: torch.Generator) -> ArchConfig:
        """Uniform crossover: each dim taken from ``a`` or ``b`` with equal probability."""
        return {d.name: (a if torch.rand((1,), generator=generator).item() < 0.5 else b)[d.name] for d in self}

    def enumerate(self, limit: int = 100_000) -> Iterator[ArchConfig]:
        """Every config of the space (raises if there are more than ``limit``)."""
        if self.num_subnets > limit:
            raise ConfigError(
                f"the space has {self.num_subnets} subnets, more than `limit`={limit}. HINT: sample instead."
            )
        import itertools

        names = self.names()
        for values in itertools.product(*(self._dims[n].choices for n in names)):
            yield dict(zip(names, values))

    # -- encoding ------------------------------------------------------------------------------------------
    def encode(self, cfg: ArchConfig) -> list[float]:
        """Numeric vector for predictors: each elastic dim's value scaled to [0, 1] between its min and max."""
        vec = []
        for d in self.elastic_dims:
            lo, hi = d.min, d.max
            vec.append((cfg[d.name] - lo) / (hi - lo))
        return vec

    def decode(self, vec: list[float]) -> ArchConfig:
        """Inverse of :meth:`encode`, snapping to the nearest choice."""
        cfg = self.max_config()
        for d, x in zip(self.elastic_dims, vec):
            target = d.min + float(x) * (d.max - d.min)
            cfg[d.name] = min(d.choices, key=lambda c: abs(c - target))
        return cfg
