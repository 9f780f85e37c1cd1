"""Text models' costs are stated at the validation set's mean real length, not the padded length."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from lightning_elastic import SearchSpaceConfig, to_supernet
from lightning_elastic.search.measure import SubnetMeasurer, count_costs, mean_token_length
from tests.adapters.hf._tiny import _bert

tiny_bert = _bert("BertForSequenceClassification")


def padded_rows() -> list[dict[str, torch.Tensor]]:
    rows = []
    for n in (3, 5, 4, 8):  # real lengths; every row padded to 16
        ids = torch.zeros(16, dtype=torch.long)
        ids[:n] = torch.arange(1, n + 1)
        rows.append({"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": torch.tensor(0)})
    return rows


def test_costs_are_measured_at_the_mean_real_length():
    net = to_supernet(tiny_bert(), SearchSpaceConfig(depth=None))
    val = DataLoader(padded_rows(), batch_size=2)
    assert mean_token_length(val) == 5  # (3 + 5 + 4 + 8) / 4
    measurer = SubnetMeasurer(torch.nn.Module(), net, val, None, ["val_loss"], bn_calibration_batches=0)
    assert measurer.input_shape == (5,) and measurer.input_dtype == torch.long
    cfg = net.min_config()
    assert measurer.costs(cfg)["macs"] == count_costs(net, cfg, (5,), torch.long)["macs"]
    assert measurer.costs(cfg)["macs"] < count_costs(net, cfg, (16,), torch.long)["macs"]
    # a stated length wins
    stated = SubnetMeasurer(torch.nn.Module(), net, val, None, ["val_loss"], bn_calibration_batches=0,
                            input_shape=(12,))
    assert stated.input_shape == (12,)


def test_batches_without_a_mask_keep_the_batch_length():
    ids = torch.ones(4, 7, dtype=torch.long)
    assert mean_token_length(DataLoader(ids, batch_size=2)) is None
