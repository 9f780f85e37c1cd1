"""In-place KD rules: padding is not distilled, and alpha-divergence follows KL's temperature convention."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_elastic import ElasticTraining, SearchSpaceConfig, to_supernet
from lightning_elastic.training.distill import (
    alpha_divergence,
    attention_mask_of,
    distill_term,
    kl_divergence,
)
from lightning_elastic.training.samplers import Sampler
from tests.training._lit import trainer

VOCAB = 60
SPACE = SearchSpaceConfig(depth=(1, 2), width=(0.5, 1.0))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_alpha_divergence_at_the_kl_limit_is_kl_under_the_same_temperature(temperature):
    s = torch.randn(6, 5, requires_grad=True)
    t = torch.randn(6, 5) * 3
    kl = kl_divergence(s, t, temperature)
    (kl_grad,) = torch.autograd.grad(kl, s)
    alpha = alpha_divergence(s, t, temperature, alpha_min=1.0, alpha_max=1.0)
    (alpha_grad,) = torch.autograd.grad(alpha, s)
    torch.testing.assert_close(alpha, kl)
    torch.testing.assert_close(alpha_grad, kl_grad)
    # approaching the limit through the general formula (alpha != 1) gives the same scale
    near = alpha_divergence(s, t, temperature, alpha_min=0.98, alpha_max=0.98, iw_clip=1e9)
    torch.testing.assert_close(near, kl, rtol=0.05, atol=1e-4)


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))


SEQUENCES = [[5, 9, 13, 2, 7, 11], [3, 8, 21], [4, 4, 17, 30]]


def padded_batch() -> dict[str, torch.Tensor]:
    """Right-padded (pad id 0), as a collator pads for a causal LM; labels -100 on padding."""
    width = max(map(len, SEQUENCES))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in SEQUENCES])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in SEQUENCES])
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def logits(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits


def unpadded_kd(model, net) -> torch.Tensor:
    """KD on each sequence alone (no padding at all), averaged over every token of every sequence."""
    students, teachers = [], []
    for seq in SEQUENCES:
        one = {"input_ids": torch.tensor([seq])}
        net.select(net.max_config())
        teachers.append(logits(model, one)[0])
        net.select(net.min_config())
        students.append(logits(model, one)[0])
    return kl_divergence(torch.cat(students), torch.cat(teachers), 2.0)


def test_padding_masked_kd_equals_kd_on_the_unpadded_sequences():
    model = tiny_llama()
    net = to_supernet(model, SPACE)
    batch = padded_batch()
    net.select(net.max_config())
    teacher = logits(model, batch)
    net.select(net.min_config())
    student = logits(model, batch)
    expected = unpadded_kd(model, net)
    masked = distill_term(lambda s, t: kl_divergence(s, t, 2.0), student, teacher, batch["attention_mask"])
    torch.testing.assert_close(masked, expected, rtol=1e-5, atol=1e-6)
    assert not torch.isclose(kl_divergence(student, teacher, 2.0), expected, rtol=1e-3)  # padding would change it


def test_sequence_level_logits_and_all_padding():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    mask = torch.ones(3, 7, dtype=torch.long)
    torch.testing.assert_close(distill_term(kl_divergence, s, t, mask), kl_divergence(s, t))  # [B, C]: unaffected
    empty = distill_term(kl_divergence, torch.randn(2, 3, 5, requires_grad=True), torch.randn(2, 3, 5),
                         torch.zeros(2, 3))
    assert empty.item() == 0.0 and empty.requires_grad  # no NaN from 0 positions


def test_attention_mask_comes_from_the_forward_then_the_batch():
    a, b = torch.ones(1, 2), torch.zeros(1, 2)
    assert attention_mask_of(((), {"attention_mask": a}), {"attention_mask": b}) is a
    assert attention_mask_of(((), {}), {"attention_mask": b}) is b
    assert attention_mask_of(None, [b]) is None


class MaxThenMin(Sampler):
    name = "max-then-min"

    def sample(self, space, ctx, generator):
        return [("max", space.max_config()), ("min", space.min_config())]


class CausalLM(L.LightningModule):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        out = self.model(**batch)
        self.log("train_loss", out.loss)
        return out.loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_training_distils_only_non_padded_positions():
    model = tiny_llama()
    expected = unpadded_kd(model, to_supernet(model, SPACE))  # before the step changes the weights
    module = CausalLM(model)
    cb = ElasticTraining(sampler=MaxThenMin(), temperature=2.0, validate_subnets=None)
    tr = trainer(callbacks=[cb], max_steps=1)
    tr.fit(module, DataLoader([padded_batch()], batch_size=None))
    torch.testing.assert_close(tr.callback_metrics["train_kd/min"], expected, rtol=1e-5, atol=1e-6)
