"""``SearchSpace``: every elastic dimension of a supernet, with sampling and encoding.

All randomness comes from a caller-supplied :class:`torch.Generator`, so sampling is a pure function of the
generator state (identical across DDP ranks, replayable after resume).

Canonical configs: with elastic depth, the dims of blocks a config's depth removes change nothing, so configs that
differ only there are one network. :attr:`SearchSpace.dead_when` (plain data, computed by the supernet, which knows
where each dim's tensors live) says when a dim is dead; :meth:`SearchSpace.canonical` then sets every dead dim to its
max, so equal networks share one config and one key.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.core.errors import ConfigError

ArchConfig = dict[str, int]
#: ``{dim: ((depth dim, position), ...)}``: the dim is dead when every listed block is dropped, i.e. when
#: ``cfg[depth dim] <= position`` for every pair (``position``: the block's place in its depth dim's keep order).
DeadWhen = dict[str, tuple[tuple[str, int], ...]]


class SearchSpace:
    """An ordered collection of :class:`ElasticDim` s keyed by name.

    Example:
        >>> space = SearchSpace([ElasticDim("a", [1, 2], 2), ElasticDim("b", [8, 16], 16)])
        >>> space.num_subnets
        4
        >>> space.sample(torch.Generator().manual_seed(0))  # doctest: +SKIP
        {'a': 1, 'b': 16}
    """

    def __init__(self, dims: list[ElasticDim], dead_when: Mapping[str, Sequence[tuple[str, int]]] | None = None) -> None:
        self._dims: dict[str, ElasticDim] = {}
        for d in dims:
            if d.name in self._dims:
                raise ConfigError(f"duplicate dimension name {d.name!r} in the search space. HINT: names must be unique.")
            self._dims[d.name] = d
        #: when each dim is dead (see :data:`DeadWhen`); empty: every dim always matters
        self.dead_when: DeadWhen = {}
        if dead_when:
            self.set_dead_when(dead_when)

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
        """Configs of the space (see :attr:`num_networks` for distinct networks)."""
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
        """Every dim at its min, except dims the min depths remove, which are canonical (max)."""
        return self.canonical({d.name: d.min for d in self})

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

    # -- canonical configs ---------------------------------------------------------------------------------
    def set_dead_when(self, dead_when: Mapping[str, Sequence[tuple[str, int]]]) -> None:
        """Declare when dims are dead (see :data:`DeadWhen`); checked whole before anything is set.

        Raises:
            ConfigError: an unknown dim or depth dim, a position outside ``[0, full)`` of its depth dim, an empty
                list, or a depth dim that is itself listed as dead (its value would then be ambiguous).
        """
        if not isinstance(dead_when, Mapping):
            raise ConfigError(f"`dead_when` must be a dict {{dim: [(depth dim, position), ...]}}, got "
                              f"{type(dead_when).__name__}. HINT: the supernet computes it; pass its mapping.")
        problems, out = [], {}
        for name, blocks in dead_when.items():
            try:
                pairs = tuple((str(dn), int(pos)) for dn, pos in blocks)
            except (TypeError, ValueError):
                problems.append(f"{name}: {blocks!r} is not a list of (depth dim, position) pairs")
                continue
            if name not in self._dims:
                problems.append(f"{name!r} is not a dim of the space")
            if not pairs:
                problems.append(f"{name}: empty list (a dim with no block is never dead; leave it out)")
            for dn, pos in pairs:
                if dn not in self._dims:
                    problems.append(f"{name}: depth dim {dn!r} is not in the space")
                elif not 0 <= pos < self._dims[dn].full:
                    problems.append(f"{name}: position {pos} outside [0, {self._dims[dn].full}) of {dn!r}")
            out[name] = pairs
        chained = sorted({dn for pairs in out.values() for dn, _ in pairs} & set(out))
        if chained:
            problems.append(f"depth dims {chained} are both listed as dead and decide deadness")
        if problems:
            raise ConfigError("invalid `dead_when`: " + "; ".join(problems) + ". HINT: keys are dims of the "
                              "space, each with the (depth dim, position in its keep order) of the blocks it lives in.")
        self.dead_when = out

    def _is_dead(self, cfg: Mapping[str, int], name: str) -> bool:
        blocks = self.dead_when.get(name)
        # a missing depth dim is at max (as `validate(strict=False)` fills it), which keeps every block
        return blocks is not None and all(cfg.get(dn, self._dims[dn].max) <= pos for dn, pos in blocks)

    def dead_dims(self, cfg: Mapping[str, int]) -> list[str]:
        """The dims of ``cfg`` whose blocks its depths remove: their values change nothing."""
        return [n for n in self.dead_when if self._is_dead(cfg, n)]

    def canonical(self, cfg: Mapping[str, int]) -> ArchConfig:
        """``cfg`` with every dead dim at its max choice: configs of one network give one config (and one key).

        The canonical value is the max because the max config is then canonical as it is, and a dim that a deeper
        config revives starts from the full block. Keys absent from ``cfg`` stay absent; nothing is validated
        (``select`` of the result and of ``cfg`` run the same network).

        Example:
            >>> space.canonical({"depth": 2, "blocks.3.heads": 1, ...})  # doctest: +SKIP
            {'depth': 2, 'blocks.3.heads': 3, ...}
        """
        out = dict(cfg)
        for name in self.dead_when:
            if name in out and self._is_dead(cfg, name):
                out[name] = self._dims[name].max
        return out

    def is_canonical(self, cfg: Mapping[str, int]) -> bool:
        return self.canonical(cfg) == dict(cfg)

    @property
    def num_networks(self) -> int:
        """Distinct networks of the space: :attr:`num_subnets` counting configs that differ only in dead dims once.

        Counted per group of depth dims that decide deadness together (a ResNet's stages are independent), so the
        cost is the sum, not the product, of the groups' depth assignments.
        """
        if not self.dead_when:
            return self.num_subnets
        groups: dict[str, set[str]] = {}  # union of depth dims that some dim's rule links
        for pairs in self.dead_when.values():
            linked = set().union(*(groups.get(dn, {dn}) for dn, _ in pairs))
            for dn in linked:
                groups[dn] = linked
        total = math.prod(len(d.choices) for n, d in self._dims.items() if n not in self.dead_when and n not in groups)
        for group in {id(g): g for g in groups.values()}.values():
            deciders = sorted(group)
            ruled = [n for n, pairs in self.dead_when.items() if pairs[0][0] in group]
            count = 0
            for values in itertools.product(*(self._dims[n].choices for n in deciders)):
                depths = dict(zip(deciders, values))
                count += math.prod(1 if self._is_dead(depths, n) else len(self._dims[n].choices) for n in ruled)
            total *= count
        return total

    def _depth_assignments(self) -> Iterator[tuple[dict[str, int], set[str]]]:
        """Every assignment of the depth dims that decide deadness, with the dims it makes dead."""
        deciders = list(dict.fromkeys(dn for pairs in self.dead_when.values() for dn, _ in pairs))
        for values in itertools.product(*(self._dims[n].choices for n in deciders)):
            depths = dict(zip(deciders, values))
            yield depths, set(self.dead_dims(depths))

    # -- sampling ------------------------------------------------------------------------------------------
    @staticmethod
    def _randint(high: int, generator: torch.Generator) -> int:
        return int(torch.randint(high, (1,), generator=generator).item())

    def sample(self, generator: torch.Generator, canonical: bool = True) -> ArchConfig:
        """Uniformly random config: each dim's choice drawn independently, then made :meth:`canonical`.

        Args:
            canonical: False returns the raw draw, for callers that change depths afterwards (a canonical draw
                whose depth is raised later would hold the revived blocks at max).
        """
        cfg = {d.name: d.choices[self._randint(len(d.choices), generator)] for d in self}
        return self.canonical(cfg) if canonical else cfg

    def enumerate(self, limit: int = 100_000, canonical: bool = False) -> Iterator[ArchConfig]:
        """Every config of the space (raises if there are more than ``limit``).

        Args:
            canonical: each network once, as its canonical config (:attr:`num_networks` of them).
        """
        count = self.num_networks if canonical else self.num_subnets
        if count > limit:
            raise ConfigError(
                f"the space has {count} {'networks' if canonical else 'subnets'}, more than `limit`={limit}. "
                "HINT: sample instead."
            )
        names = self.names()
        if not canonical or not self.dead_when:
            for values in itertools.product(*(self._dims[n].choices for n in names)):
                yield dict(zip(names, values))
            return
        for depths, dead in self._depth_assignments():
            options = [(depths[n],) if n in depths else (self._dims[n].max,) if n in dead else self._dims[n].choices
                       for n in names]
            for values in itertools.product(*options):
                yield dict(zip(names, values))
