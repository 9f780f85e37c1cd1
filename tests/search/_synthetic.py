"""A synthetic search space with a closed-form 'accuracy' and cost: drives the search loop in milliseconds."""

from __future__ import annotations

import math

from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.core.space import SearchSpace


def space(num_dims: int = 4, choices=(1, 2, 3, 4)) -> SearchSpace:
    return SearchSpace([ElasticDim(f"block{i}.width", list(choices), max(choices), kind="width")
                        for i in range(num_dims)])


def costs(cfg) -> dict[str, float]:
    # earlier blocks cost more (as high-resolution stages do)
    macs = sum((len(cfg) - i) * v * 1000.0 for i, v in enumerate(cfg.values()))
    return {"params": float(sum(cfg.values()) * 10), "macs": macs}


def evaluate(cfg) -> dict[str, float]:
    # diminishing returns in width, later blocks matter more for accuracy: a non-trivial front
    acc = sum((i + 1) * math.log1p(v) for i, v in enumerate(cfg.values()))
    return {"val_acc": acc / 20.0, **costs(cfg)}
