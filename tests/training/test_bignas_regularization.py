"""BigNAS rule: dropout and drop-path on the max subnet only (``ElasticTraining(regularize=...)``).

Each test trains for real and checks, inside the user's own ``training_step``, whether the active subnet's forward is
stochastic: two forwards under different RNG seeds (and, without BatchNorm, a forward in eval mode) must agree for
every subnet but the max one under ``regularize='max'``.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, ResNet
from torch import nn
from torch.utils.data import DataLoader

from lightning_elastic import ElasticTraining, SearchSpaceConfig, get_supernet
from lightning_elastic.core.errors import ConfigError
from lightning_elastic.training.regularization import RegularizationSwitch, regularization_attributes
from tests.training._lit import loader, trainer

VOCAB = 50


def drop_resnet() -> ResNet:
    torch.manual_seed(0)
    return ResNet(BasicBlock, [2, 2, 1, 1], num_classes=4, channels=(8, 8, 16, 16), stem_width=8,
                  zero_init_last=False, drop_path_rate=0.5, drop_rate=0.5)


def drop_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5, num_labels=3))


def drop_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)  # Llama's only dropout is a float on each attention module (attention_dropout)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.5))


def token_loader(n: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(0, VOCAB, (6,), generator=g), "labels": torch.randint(0, 3, ())}
            for _ in range(n)]
    return DataLoader(rows, batch_size=4)


def snapshot(model: nn.Module) -> list[tuple[int, str, float]]:
    return [(id(owner), name, vars(owner)[name]) for owner, name in regularization_attributes(model)]


class Probe(L.LightningModule):
    """A user module that checks, in each subnet's training step, whether the forward is stochastic."""

    def __init__(self, model: nn.Module, tokens: bool) -> None:
        super().__init__()
        self.model, self.tokens = model, tokens
        self.seen: list[tuple[bool, bool, bool | None]] = []  # (is max, stochastic, equals eval)
        self.original = snapshot(model)
        self.restored_each_step: list[bool] = []

    def _forward(self, x):
        out = self.model(input_ids=x) if self.tokens else self.model(x)
        return out.logits if self.tokens else out

    def training_step(self, batch, batch_idx):
        x = batch["input_ids"] if self.tokens else batch[0]
        net = get_supernet(self.model)
        torch.manual_seed(1)
        a = self._forward(x)
        torch.manual_seed(2)
        b = self._forward(x)
        same_as_eval = None
        if self.tokens:  # no BatchNorm: a deterministic training forward is the eval forward
            self.model.eval()
            with torch.no_grad():
                same_as_eval = torch.allclose(self._forward(x), a.detach(), atol=1e-6)
            self.model.train()
        self.seen.append((net.active_config == net.max_config(), not torch.allclose(a, b), same_as_eval))
        y = batch["labels"] if self.tokens else batch[1]
        logits = a if a.ndim == 2 else a[:, -1, :3]
        return F.cross_entropy(logits, y)

    def on_train_batch_end(self, outputs, batch, batch_idx):  # after ElasticTraining's hook of the same name
        self.restored_each_step.append(snapshot(self.model) == self.original)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("build,tokens,space", [
    (drop_resnet, False, dict(width=(0.5, 1.0))),
    (drop_bert, True, dict(depth=(1, 2), heads=(2, 4))),
    (drop_llama, True, dict(depth=(1, 2), width=(0.5, 1.0))),
], ids=["timm-resnet-drop-path", "hf-bert-dropout", "hf-llama-attention-dropout"])
def test_only_the_max_subnet_is_regularized(build, tokens, space):
    model = build()
    assert regularization_attributes(model)  # the model does have dropout to switch
    module = Probe(model, tokens)
    cb = ElasticTraining(SearchSpaceConfig(**space), num_random=1, validate_subnets=None, seed=3)
    trainer(callbacks=[cb], max_steps=2).fit(module, token_loader() if tokens else loader(16))
    assert len(module.seen) == 2 * 3  # 2 steps x (max, rand0, min)
    for is_max, stochastic, same_as_eval in module.seen:
        assert stochastic == is_max
        if same_as_eval is not None:
            assert same_as_eval == (not is_max)
    assert module.restored_each_step == [True, True]  # exactly the original probabilities after every step
    assert snapshot(model) == module.original


def test_regularize_all_keeps_dropout_on_every_subnet():
    module = Probe(drop_bert(), tokens=True)
    cb = ElasticTraining(SearchSpaceConfig(depth=(1, 2)), num_random=1, validate_subnets=None, regularize="all")
    trainer(callbacks=[cb], max_steps=1).fit(module, token_loader())
    assert [stochastic for _, stochastic, _ in module.seen] == [True, True, True]


def test_probabilities_are_restored_when_a_step_fails():
    class Failing(Probe):
        def training_step(self, batch, batch_idx):
            if get_supernet(self.model).active_config == get_supernet(self.model).min_config():
                assert snapshot(self.model) != self.original  # switched off for this subnet
                raise RuntimeError("user error in the min subnet's step")
            return super().training_step(batch, batch_idx)

    module = Failing(drop_bert(), tokens=True)
    cb = ElasticTraining(SearchSpaceConfig(depth=(1, 2)), num_random=1, validate_subnets=None)
    with pytest.raises(RuntimeError, match="user error in the min subnet"):
        trainer(callbacks=[cb], max_steps=1).fit(module, token_loader())
    assert snapshot(module.model) == module.original


def test_regularization_attributes_found_generically():
    from timm.layers import DropPath

    model = nn.Sequential(nn.Dropout(0.1), nn.Dropout2d(0.0), DropPath(0.2), nn.MultiheadAttention(8, 2, dropout=0.3))
    model.drop_rate = 0.4
    model.drop_last = True  # a bool, not a probability
    found = {(type(o).__name__, n) for o, n in regularization_attributes(model)}
    assert found == {("Dropout", "p"), ("DropPath", "drop_prob"), ("MultiheadAttention", "dropout"),
                     ("Sequential", "drop_rate")}
    switch = RegularizationSwitch(model)
    switch.off()
    switch.off()  # idempotent: the second call must not save the zeros
    assert model[0].p == 0.0 and model[2].drop_prob == 0.0 and model.drop_rate == 0.0
    switch.restore()
    assert (model[0].p, model[2].drop_prob, model[3].dropout, model.drop_rate) == (0.1, 0.2, 0.3, 0.4)


def test_bad_regularize_argument():
    with pytest.raises(ConfigError, match=r"`regularize` got 'min'; allowed: \['max', 'all'\]\. HINT: regularize='max'"):
        ElasticTraining(regularize="min")
