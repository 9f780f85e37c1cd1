"""Hidden-state distillation (``distill_hidden``): the max subnet's last hidden states teach the children."""

from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from lightning_elastic import ElasticTraining, SearchSpaceConfig, to_supernet
from lightning_elastic.core.errors import ConfigError
from lightning_elastic.training.inplace import hidden_state_loss
from lightning_elastic.training.samplers import Sampler
from tests.training._lit import DictClassifier as Classifier
from tests.training._lit import LitClassifier, loader, trainer

SPACE = SearchSpaceConfig(depth=(1, 2), heads=(2, 4), width=None)


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        initializer_range=0.5))  # layers that change the hidden states a lot: a term worth checking


def batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[5, 9, 13, 2, 7], [3, 8, 21, 0, 0], [4, 4, 17, 30, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": torch.tensor([0, 1, 1])}


class MaxThenMin(Sampler):
    name = "max-then-min"

    def sample(self, space, ctx, generator):
        return [("max", space.max_config()), ("min", space.min_config())]


class GradCapture(Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = {n: p.grad.clone() for n, p in pl_module.model.named_parameters() if p.grad is not None}


def test_children_learn_the_max_subnets_last_hidden_states():
    model = tiny_bert()
    reference = copy.deepcopy(model)
    capture = GradCapture()
    cb = ElasticTraining(SPACE, sampler=MaxThenMin(), distill=None, distill_hidden=0.5, validate_subnets=None)
    tr = trainer(callbacks=[cb, capture], max_steps=1)
    tr.fit(Classifier(model), DataLoader([batch()], batch_size=None))
    # by hand: max CE, then min CE + 0.5 * relative squared error to the max's last hidden states (padding left out)
    net = to_supernet(reference, SPACE, calibration_data=[batch()])  # as ElasticTraining converts: with the data
    b = batch()
    net.select(net.max_config())
    out = reference(**b, output_hidden_states=True)
    target = out.hidden_states[-1].detach()
    out.loss.backward()
    net.select(net.min_config())
    out = reference(**b, output_hidden_states=True)
    term = hidden_state_loss(out.hidden_states[-1], target, b["attention_mask"])
    query = reference.bert.encoder.layer[0].attention.self.query.weight
    (hidden_grad,) = torch.autograd.grad(0.5 * term, query, retain_graph=True)
    assert hidden_grad.abs().max() > 1e-3  # the term moves the weights well beyond the tolerance below
    (out.loss + 0.5 * term).backward()
    torch.testing.assert_close(tr.callback_metrics["train_hidden/min"], term.detach())
    for name, p in reference.named_parameters():
        torch.testing.assert_close(capture.grads[name], p.grad, rtol=1e-5, atol=1e-6)


def test_hidden_state_loss_ignores_padding_and_compares_a_channel_prefix():
    t = torch.randn(2, 4, 8)
    s = t[..., :6].clone()
    s[1, 3] += 100.0  # a padded position
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    assert hidden_state_loss(s, t, mask).item() == 0.0
    assert hidden_state_loss(s, t).item() > 1.0


def test_distill_hidden_needs_a_transformers_backbone():
    cb = ElasticTraining(SearchSpaceConfig(width=(0.5, 1.0)), distill_hidden=True, validate_subnets=None)
    with pytest.raises(ConfigError, match=r"`distill_hidden` is on, but ResNet has no transformers backbone.*"
                                          r"HINT: set distill_hidden=0"):
        trainer(callbacks=[cb], max_steps=1).fit(LitClassifier(), loader(8))


def test_bad_distill_hidden():
    with pytest.raises(ConfigError, match=r"`distill_hidden` got -1; allowed: a number in \[0.0, 1000.0\]"):
        ElasticTraining(distill_hidden=-1)
    assert ElasticTraining(distill_hidden=True).distill_hidden == 1.0
    assert ElasticTraining(distill_hidden=False).distill_hidden == 0.0


def test_no_hidden_term_by_default():
    tr = trainer(callbacks=[ElasticTraining(SPACE, sampler=MaxThenMin(), validate_subnets=None)], max_steps=1)
    tr.fit(Classifier(tiny_bert()), DataLoader([batch()], batch_size=None))
    assert "train_hidden/min" not in tr.callback_metrics and "train_kd/min" in tr.callback_metrics
