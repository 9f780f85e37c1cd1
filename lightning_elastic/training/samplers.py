"""Subnet samplers: which subnets one training step trains.

Every sampler is a pure function of ``(seed, step, progress)``: :meth:`Sampler.subnets` builds its own
:class:`torch.Generator` from the seed and the global step, so all DDP ranks draw the same subnets without
communicating, and a run resumed from a checkpoint replays exactly the subnets an uninterrupted run would have used.
A step's subnets are ``(tag, config)`` pairs; the tag ``"max"`` marks the full subnet, whose outputs are the soft
targets of in-place distillation, so it always comes first when present.

Depth is covered, not left to chance (``cover_depth=True``, the default of the samplers that draw random subnets).
With elastic depth a pretrained transformer's intermediate depths are the children people want, and uniform draws
leave some of them untrained for long stretches (and on a short fine-tune, for good). So the random subnets take
each depth dim's value from a seeded random permutation of its choices, a new permutation every ``len(choices)``
random subnets: each block of ``len(choices)`` random subnets (counted from the run's first) trains every depth
choice once, each dim in its own order, while every other dim stays uniformly random. The value is a function of ``(seed, step, index)`` only, so DDP
ranks agree and resumed runs replay.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from lightning_elastic.core.checks import check_int
from lightning_elastic.core.dims import DIM_KINDS
from lightning_elastic.core.errors import ConfigError
from lightning_elastic.core.space import ArchConfig, SearchSpace

Subnet = tuple[str, ArchConfig]


@dataclass(frozen=True)
class StepContext:
    """Where training is: the optimizer step, the epoch, the fraction of training done (0..1) and the run's seed."""

    step: int
    epoch: int = 0
    progress: float = 0.0
    seed: int = 0


#: dim kinds whose choices the random subnets cover in turn (``cover_depth``)
COVERED_KINDS = ("depth",)


def covering_choice(choices: Sequence[int], name: str, seed: int, counter: int) -> int:
    """The choice of dim ``name`` for the ``counter``-th random subnet of a run: each block of ``len(choices)``
    counters (0.., n..2n-1, …) takes every choice once, in a seeded random order per block and per dim.

    Example:
        >>> sorted(covering_choice([2, 3, 4], "layers.depth", 0, k) for k in range(3))
        [2, 3, 4]
    """
    n = len(choices)
    cycle, position = divmod(int(counter), n)
    # crc32, not hash(): str hashes are salted per process, and DDP ranks must agree
    key = ((int(seed) * 1_000_003 + cycle) * 7_919 + zlib.crc32(name.encode())) % (2**63 - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(key))
    return choices[int(order[position])]


def check_flag(name: str, value: object) -> bool:
    """``value`` if it is a bool (the ``cover_depth`` flags); else a ConfigError naming ``name``."""
    if not isinstance(value, bool):
        raise ConfigError(f"`{name}` got {value!r}; allowed: True or False. HINT: {name}=True (the default) trains "
                          "every depth choice in turn.")
    return value


def random_subnet(space: SearchSpace, ctx: StepContext, generator: torch.Generator, index: int,
                  per_step: int, cover_depth: bool) -> ArchConfig:
    """A uniformly random config; with ``cover_depth`` its depth dims cycle (see :func:`covering_choice`).

    ``index`` is the subnet's place among the step's ``per_step`` random subnets.
    """
    # raw draw: depths are set after it, so a canonical draw would pin the blocks they revive at max width
    cfg = space.sample(generator, canonical=False)  # drawn in full either way: other dims do not depend on the flag
    if cover_depth:
        counter = ctx.step * per_step + index
        for d in space:
            if d.kind in COVERED_KINDS:
                cfg[d.name] = covering_choice(d.choices, d.name, ctx.seed, counter)
    return cfg


class Sampler:
    """Base class. Subclasses implement :meth:`sample`; :meth:`subnets` seeds the generator per step."""

    name = "base"

    def sample(self, space: SearchSpace, ctx: StepContext, generator: torch.Generator) -> list[Subnet]:
        raise NotImplementedError

    def subnets(self, space: SearchSpace, ctx: StepContext, seed: int) -> list[Subnet]:
        """The subnets of step ``ctx.step``: deterministic in ``(seed, ctx)``."""
        # a fresh generator per step: no hidden RNG state to checkpoint, identical on every rank
        generator = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(ctx.step)) % (2**63 - 1))
        return self.sample(space, replace(ctx, seed=int(seed)), generator)

    def state_dict(self) -> dict:
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class SandwichSampler(Sampler):
    """BigNAS sandwich rule: the max subnet, ``num_random`` random subnets, then the min subnet.

    Args:
        num_random: random subnets per step (BigNAS uses 2).
        cover_depth: the random subnets' depth dims cycle through every choice (see the module docstring);
            False: uniformly random like the other dims.

    Example:
        >>> SandwichSampler(num_random=2)  # 4 subnets per step: max, rand0, rand1, min
        SandwichSampler(num_random=2, cover_depth=True)
    """

    name = "sandwich"

    def __init__(self, num_random: int = 2, cover_depth: bool = True) -> None:
        self.num_random = check_int("num_random", num_random, hint="e.g. num_random=2 (BigNAS uses 2)")
        self.cover_depth = check_flag("cover_depth", cover_depth)

    def sample(self, space: SearchSpace, ctx: StepContext, generator: torch.Generator) -> list[Subnet]:
        out = [("max", space.max_config())]
        out += [(f"rand{i}", random_subnet(space, ctx, generator, i, self.num_random, self.cover_depth))
                for i in range(self.num_random)]
        return out + [("min", space.min_config())]


class UniformSampler(Sampler):
    """``num_random`` random subnets per step (SPOS-style single-path training when 1); ``cover_depth`` as in
    :class:`SandwichSampler`."""

    name = "uniform"

    def __init__(self, num_random: int = 1, cover_depth: bool = True) -> None:
        self.num_random = check_int("num_random", num_random, minimum=1, hint="e.g. num_random=2 (BigNAS uses 2)")
        self.cover_depth = check_flag("cover_depth", cover_depth)

    def sample(self, space: SearchSpace, ctx: StepContext, generator: torch.Generator) -> list[Subnet]:
        return [(f"rand{i}", random_subnet(space, ctx, generator, i, self.num_random, self.cover_depth))
                for i in range(self.num_random)]


class DelayedShrinkingSampler(Sampler):
    """DεpS delayed shrinking: only the max subnet until ``start`` (fraction of training), then sandwich
    (``cover_depth`` as in :class:`SandwichSampler`)."""

    name = "delayed"

    def __init__(self, num_random: int = 2, start: float = 0.25, cover_depth: bool = True) -> None:
        self.num_random = check_int("num_random", num_random, hint="e.g. num_random=2 (BigNAS uses 2)")
        self.cover_depth = check_flag("cover_depth", cover_depth)
        if isinstance(start, bool) or not isinstance(start, int | float) or not 0.0 <= start < 1.0:
            raise ConfigError(f"`start` got {start!r}; allowed: a fraction in [0, 1). HINT: start=0.25.")
        self.start = float(start)

    def sample(self, space: SearchSpace, ctx: StepContext, generator: torch.Generator) -> list[Subnet]:
        if ctx.progress < self.start:
            return [("max", space.max_config())]
        return SandwichSampler(self.num_random, self.cover_depth).sample(space, ctx, generator)


class NestedSampler(Sampler):
    """SortedNet nested sampling: the max subnet plus ``num_random`` nested subnets.

    A nested subnet picks one level ``t`` in [0, 1] and sets every dim to the choice at relative position ``t``,
    so sub-models are sorted: each smaller one is contained in the larger ones. The min subnet (``t = 0``) is
    always the last of the step.
    """

    name = "nested"

    def __init__(self, num_random: int = 1, levels: int = 4) -> None:
        self.num_random = check_int("num_random", num_random, hint="e.g. num_random=2 (BigNAS uses 2)")
        self.levels = check_int("levels", levels, minimum=2, hint="e.g. levels=2 (BigNAS uses 2)")

    @staticmethod
    def level_config(space: SearchSpace, t: float) -> ArchConfig:
        """Every dim at the choice nearest to relative position ``t`` of its sorted choices."""
        return {d.name: d.choices[round(t * (len(d.choices) - 1))] for d in space}

    def sample(self, space: SearchSpace, ctx: StepContext, generator: torch.Generator) -> list[Subnet]:
        out = [("max", space.max_config())]
        for i in range(self.num_random):
            level = 1 + int(torch.randint(self.levels - 2, (1,), generator=generator)) if self.levels > 2 else 0
            out.append((f"nested{i}", self.level_config(space, level / (self.levels - 1))))
        return out + [("min", space.min_config())]


@dataclass(frozen=True)
class Phase:
    """One progressive-shrinking phase.

    Args:
        start_epoch: first epoch of the phase.
        kinds: ``{dim kind: n}`` elastic in this phase; ``n`` keeps the ``n`` largest choices of each such dim
            (OFA shrinks depth 4→3 first, then 4→2), None keeps all. Kinds not listed stay at max.
    """

    start_epoch: int
    kinds: Mapping[str, int | None]


#: OFA's order: full network, then elastic kernel, then depth (two stages), then width/expand (two stages).
OFA_PHASES = (
    Phase(0, {}),
    Phase(1, {"kernel": None, "resolution": None}),
    Phase(2, {"kernel": None, "resolution": None, "depth": 2}),
    Phase(3, {"kernel": None, "resolution": None, "depth": None}),
    Phase(4, {"kernel": None, "resolution": None, "depth": None, "width": 2}),
    Phase(5, {"kernel": None, "resolution": None, "depth": None, "width": None, "heads": None, "rank": None,
              "other": None}),
)


def _parse_phase(raw: Any) -> Phase:
    """A :class:`Phase` from a Phase or a ``(start_epoch, {kind: n | None})`` pair, every part checked.

    Raises:
        ConfigError: anything else: not a pair, a start epoch that is not an integer >= 0, kinds that are not a
            mapping of known dim kinds to an integer >= 1 or None.
    """
    pair = isinstance(raw, Sequence) and not isinstance(raw, str) and len(raw) == 2
    p = raw if isinstance(raw, Phase) else Phase(*raw) if pair else None
    ok = (p is not None and not isinstance(p.start_epoch, bool) and isinstance(p.start_epoch, int)
          and p.start_epoch >= 0 and isinstance(p.kinds, Mapping) and all(k in DIM_KINDS for k in p.kinds)
          and all(n is None or (isinstance(n, int) and not isinstance(n, bool) and n >= 1) for n in p.kinds.values()))
    if not ok:
        raise ConfigError(
            f"`phases` has an invalid phase {raw!r}; allowed: a Phase or a (start_epoch, {{kind: n | None}}) pair "
            f"with a start epoch >= 0, kinds from {DIM_KINDS} and n an integer >= 1 (keep the n largest choices) or "
            "None (all). HINT: e.g. phases=[(0, {}), (5, {'depth': None})]."
        )
    return p


class ProgressiveShrinkingSampler(Sampler):
    """Once-for-All progressive shrinking: phases by epoch, each opening more dimension kinds.

    Each step trains the max subnet plus ``num_random`` random subnets drawn from the current phase's choices
    (in the first phase, which opens nothing, only the max subnet).

    Args:
        phases: :class:`Phase` s or ``(start_epoch, {kind: n | None})`` pairs; default :data:`OFA_PHASES`
            (one epoch per phase; pass your own epochs for real runs).
        num_random: random subnets per step besides the max one (OFA uses 1-4).
        cover_depth: once depth is open, the random subnets cycle through the phase's depth choices (as in
            :class:`SandwichSampler`); False: uniformly random.

    Example:
        >>> ProgressiveShrinkingSampler([(0, {}), (5, {"depth": None}), (10, {"depth": None, "width": None})])
        ... # doctest: +ELLIPSIS
        ProgressiveShrinkingSampler(...)
    """

    name = "progressive"

    def __init__(self, phases: Sequence[Phase | tuple[int, Mapping[str, int | None]]] | None = None,
                 num_random: int = 2, cover_depth: bool = True) -> None:
        self.num_random = check_int("num_random", num_random, hint="e.g. num_random=2 (BigNAS uses 2)")
        self.cover_depth = check_flag("cover_depth", cover_depth)
        phases = OFA_PHASES if phases is None else phases
        if isinstance(phases, str | Mapping) or not isinstance(phases, Sequence):
            raise ConfigError(f"`phases` got {phases!r}; allowed: a list of Phase or (start_epoch, {{kind: n | None}}) "
                              "pairs. HINT: e.g. phases=[(0, {}), (5, {'depth': None})].")
        self.phases = tuple(_parse_phase(p) for p in phases)
        starts = [p.start_epoch for p in self.phases]
        if not self.phases or starts != sorted(set(starts)) or starts[0] != 0:
            raise ConfigError(
                f"`phases` start epochs are {starts}; they must be strictly increasing and start at 0. "
                "HINT: the first phase is usually (0, {}) (full network only)."
            )

    def phase_index(self, epoch: int) -> int:
        return max(i for i, p in enumerate(self.phases) if p.start_epoch <= epoch)

    def sample(self, space: SearchSpace, ctx: StepContext, generator: torch.Generator) -> list[Subnet]:
        phase = self.phases[self.phase_index(ctx.epoch)]
        out = [("max", space.max_config())]
        open_dims = [(d, phase.kinds[d.kind]) for d in space if d.kind in phase.kinds]
        if not open_dims:
            return out
        for i in range(self.num_random):
            cfg = space.max_config()
            for d, n in open_dims:
                allowed = d.choices if n is None else d.choices[-n:]
                cfg[d.name] = allowed[int(torch.randint(len(allowed), (1,), generator=generator))]
                if self.cover_depth and d.kind in COVERED_KINDS:
                    cfg[d.name] = covering_choice(allowed, d.name, ctx.seed, ctx.step * self.num_random + i)
            out.append((f"rand{i}", cfg))
        return out


SAMPLERS = {"sandwich": SandwichSampler, "uniform": UniformSampler, "progressive": ProgressiveShrinkingSampler,
            "delayed": DelayedShrinkingSampler, "nested": NestedSampler}


def resolve_sampler(sampler: str | Sampler, num_random: int, cover_depth: bool = True) -> Sampler:
    """A sampler instance from a name in :data:`SAMPLERS` or an instance (returned as is).

    ``cover_depth`` goes to the samplers that draw random subnets (not ``'nested'``, whose subnets are levels).

    Raises:
        ConfigError: unknown name or wrong type.
    """
    if isinstance(sampler, Sampler):
        return sampler
    if isinstance(sampler, str) and sampler in SAMPLERS:
        if sampler == "uniform":
            return UniformSampler(max(1, num_random), cover_depth=cover_depth)
        if sampler == "nested":
            return NestedSampler(num_random=num_random)
        return SAMPLERS[sampler](num_random=num_random, cover_depth=cover_depth)
    raise ConfigError(
        f"`sampler` got {sampler!r}; allowed: {sorted(SAMPLERS)} or a lightning_elastic.training.samplers.Sampler "
        "instance. HINT: sampler='sandwich' is BigNAS's rule (max + random + min)."
    )
