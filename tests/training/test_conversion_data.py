"""ElasticTraining converts with a few training batches, so data-driven importance is on by default."""

from __future__ import annotations

from itertools import islice

import torch
from torch.utils.data import DataLoader

from lightning_elastic import ElasticTraining, SearchSpaceConfig, get_supernet, to_supernet
from lightning_elastic.training.calibration import calibration_loader
from tests.adapters.hf._tiny import _bert
from tests.training._lit import DictClassifier, trainer

SPACE = SearchSpaceConfig(depth=(0.5, 1.0), heads=(0.5, 1.0), width=(0.5, 1.0))
tiny_bert = _bert("BertForSequenceClassification", num_hidden_layers=3)


def rows(n: int = 12) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(3, 60, (6,), generator=g), "attention_mask": torch.ones(6, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(n)]


def test_fit_converts_with_activation_importance_from_the_train_loader():
    torch.manual_seed(0)
    model = tiny_bert()
    reference = tiny_bert()
    reference.load_state_dict(model.state_dict())
    loader = DataLoader(rows(), batch_size=4, shuffle=True)
    cb = ElasticTraining(SPACE, validate_subnets=None, seed=3)
    trainer(callbacks=[cb], max_steps=1).fit(DictClassifier(model, lr=0.0), loader)
    net = get_supernet(model)
    assert net.importance_used["importance"] == "activation"
    # the same conversion by hand, on the same fixed draw (seed 3): identical permutations and layer order
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        batches = list(islice(calibration_loader(loader, 3), 8))
    by_hand = to_supernet(reference, SPACE, calibration_data=batches)
    assert by_hand.depth_orders() == net.depth_orders()
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)  # lr 0: only the conversion's permutations moved weights


def test_without_train_data_conversion_falls_back_to_l1():
    model = tiny_bert()
    cb = ElasticTraining(SPACE, validate_subnets=None)

    class ValidateOnly(DictClassifier):
        def validation_step(self, b, batch_idx):
            return self.model(**b).loss

    trainer(callbacks=[cb]).validate(ValidateOnly(model), DataLoader(rows(4), batch_size=2))
    assert get_supernet(model).importance_used["importance"] == "l1"
