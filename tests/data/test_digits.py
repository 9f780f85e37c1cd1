from __future__ import annotations

import pytest
import torch

from lightning_elastic import ConfigError
from lightning_elastic.data import DigitsDataModule


def test_digits_shapes_splits_and_determinism():
    dm = DigitsDataModule(image_size=16, batch_size=32, in_chans=3, seed=1)
    dm.setup()
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (32, 3, 16, 16) and y.dtype == torch.long
    sizes = {k: len(v) for k, v in dm._splits.items()}
    assert sum(sizes.values()) == 1797 and sizes["val"] == sizes["test"] == int(1797 * 0.2)
    # splits are disjoint and reproducible from the seed
    again = DigitsDataModule(image_size=16, batch_size=32, seed=1)
    again.setup()
    assert torch.equal(again._splits["val"].tensors[0], dm._splits["val"].tensors[0])
    other = DigitsDataModule(image_size=16, batch_size=32, seed=2)
    other.setup()
    assert not torch.equal(other._splits["val"].tensors[1], dm._splits["val"].tensors[1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 0}, "`image_size` must be a positive integer, got 0"),
        ({"batch_size": -1}, "`batch_size` must be a positive integer"),
        ({"in_chans": 1.5}, "`in_chans` must be a positive integer"),
        ({"val_fraction": 0.6 * 2}, r"`val_fraction` must be in \(0, 1\)"),
    ],
)
def test_digits_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DigitsDataModule(**kwargs)
