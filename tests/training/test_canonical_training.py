"""Training draws raw configs: a canonical draw whose depth the sampler raises afterwards would hold the revived
blocks at their max, so deep random subnets would train mostly full blocks (75% instead of a third, measured)."""

from __future__ import annotations

import collections

import torch

from lightning_elastic import SearchSpaceConfig, to_supernet
from lightning_elastic.training.samplers import StepContext, random_subnet
from tests._models import TinyMLP, TinyMLPAdapter


def test_random_training_subnets_draw_revived_blocks_uniformly():
    space = to_supernet(TinyMLP(), SearchSpaceConfig(), adapter=TinyMLPAdapter()).space
    assert space.dead_when  # blocks.1/2.hidden are dead at depth 1 and 2
    counts = collections.Counter()
    for step in range(900):
        cfg = random_subnet(space, StepContext(step), torch.Generator().manual_seed(step), 0, 1, cover_depth=True)
        if cfg["blocks.depth"] == 3:
            counts[cfg["blocks.2.hidden"]] += 1
    total = sum(counts.values())
    assert total > 200 and all(0.2 < counts[c] / total < 0.47 for c in (4, 8, 16)), counts
