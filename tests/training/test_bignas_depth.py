"""Every depth choice gets trained: the random subnets cycle through depth choices (``cover_depth``)."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lightning_elastic import ElasticTraining, SearchSpaceConfig
from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.core.errors import ConfigError
from lightning_elastic.core.space import SearchSpace
from lightning_elastic.training.samplers import (
    ProgressiveShrinkingSampler,
    SandwichSampler,
    StepContext,
    UniformSampler,
)
from tests.training._lit import trainer


def space() -> SearchSpace:
    return SearchSpace([
        ElasticDim("enc.depth", [1, 2, 3, 4, 5, 6], 6, kind="depth"),
        ElasticDim("dec.depth", [2, 3, 4], 4, kind="depth"),
        ElasticDim("enc.0.width", [16, 32, 48, 64], 64, kind="width"),
    ])


def random_values(sampler, seed: int, steps: int, dim: str, start: int = 0) -> list[int]:
    return [cfg[dim] for k in range(start, start + steps)
            for tag, cfg in sampler.subnets(space(), StepContext(step=k), seed) if tag.startswith("rand")]


@pytest.mark.parametrize("sampler", [SandwichSampler(num_random=2), UniformSampler(num_random=2)],
                         ids=["sandwich", "uniform"])
def test_random_subnets_cover_every_depth_choice_per_cycle(sampler):
    for seed in range(8):
        for dim, n in (("enc.depth", 6), ("dec.depth", 3)):
            values = random_values(sampler, seed, 6, dim)  # 12 random subnets: 2 cycles of 6, 4 of 3
            for c in range(len(values) // n):
                assert sorted(values[c * n:(c + 1) * n]) == list(space()[dim].choices)
    # pure function of (seed, step): the same on every call, different across seeds; other dims stay random
    assert random_values(sampler, 1, 6, "enc.depth") == random_values(sampler, 1, 6, "enc.depth")
    assert random_values(sampler, 1, 6, "enc.depth") != random_values(sampler, 2, 6, "enc.depth")
    assert len(set(random_values(sampler, 1, 6, "enc.0.width"))) > 1


def test_uniform_depth_draws_leave_choices_out():
    """What cover_depth fixes: with plain uniform draws some depth is missing from a cycle for most seeds."""
    sampler = SandwichSampler(num_random=2, cover_depth=False)
    missed = sum(sorted(random_values(sampler, seed, 3, "enc.depth")) != list(space()["enc.depth"].choices)
                 for seed in range(8))
    assert missed >= 6


def test_progressive_covers_the_phase_choices():
    sampler = ProgressiveShrinkingSampler([(0, {}), (1, {"depth": 2})], num_random=3)
    values = [cfg["enc.depth"] for k in range(2) for tag, cfg in
              sampler.subnets(space(), StepContext(step=k, epoch=1), 0) if tag != "max"]
    assert sorted(values[:2]) == [5, 6] and sorted(values[2:4]) == [5, 6]


class DepthProbe(L.LightningModule):
    """Counts the encoder layers each subnet's forward actually runs."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.calls = 0
        self.depths: list[int] = []
        for layer in model.bert.encoder.layer:
            layer.register_forward_hook(self._count)

    def _count(self, *args) -> None:
        self.calls += 1

    def training_step(self, batch, batch_idx):
        self.calls = 0
        logits = self.model(input_ids=batch["input_ids"]).logits
        self.depths.append(self.calls)
        return F.cross_entropy(logits, batch["labels"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_every_depth_of_a_tiny_bert_is_trained_within_a_cycle():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
                                                     num_hidden_layers=6, num_attention_heads=2, num_labels=2))
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(0, 40, (5,), generator=g), "labels": torch.tensor(i % 2)} for i in range(12)]
    module = DepthProbe(model)
    choices = [1, 2, 3, 4, 5, 6]
    steps = math.ceil(len(choices) / 2)  # 2 random subnets per step
    cb = ElasticTraining(SearchSpaceConfig(depth=choices, heads=None, width=None), num_random=2,
                         validate_subnets=None, seed=0)
    trainer(callbacks=[cb], max_steps=steps).fit(module, DataLoader(rows, batch_size=4))
    random_depths = [d for i, d in enumerate(module.depths) if i % 4 in (1, 2)]  # max, rand0, rand1, min
    assert sorted(random_depths) == choices


def test_bad_cover_depth():
    with pytest.raises(ConfigError, match=r"`cover_depth` got 'yes'; allowed: True or False\. HINT: cover_depth=True"):
        ElasticTraining(cover_depth="yes")
    with pytest.raises(ConfigError, match=r"`cover_depth` got 1; allowed: True or False\. HINT"):
        SandwichSampler(2, cover_depth=1)
