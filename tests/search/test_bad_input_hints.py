"""Search inputs whose errors or silence used to mislead: objective directions, an output folder that is a file,
a validation set with a single class."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from lightning_elastic import ConfigError, SearchSpaceConfig, SubnetSearch
from lightning_elastic.search import run_search
from lightning_elastic.search.objectives import parse_objectives
from lightning_elastic.search.run import SearchSettings, warn_if_single_class
from tests.search._search_models import DigitsClassifier, digits


@pytest.mark.parametrize(("entry", "hint"), [
    ("val_acc:maximize", "write 'val_acc:max'."),  # used to say "write 'val_acc:maximize:max'"
    ("macs:Minimise", "write 'macs:min'."),
    ("val_acc:best", "write 'val_acc:max' for a metric to maximise (accuracy) or 'val_acc:min' for a cost."),
    ("val_acc", "write 'val_acc:max' for a metric to maximise (accuracy) or 'val_acc:min' for a cost."),
])
def test_objective_direction_hint_repeats_the_name_only(entry, hint):
    with pytest.raises(ConfigError) as err:
        parse_objectives([entry])
    assert str(err.value) == (f"`objectives` entry {entry!r} has no valid direction; allowed: 'name:max' or "
                              f"'name:min'. HINT: {hint}")


def test_output_dir_that_is_a_file(tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep")
    message = (rf"`output_dir` '{existing}' is an existing file; allowed: a folder \(new or existing\)\. "
               rf"HINT: pass a folder path such as '{tmp_path / 'notes_out'}'")
    with pytest.raises(ConfigError, match=message):
        SearchSettings(output_dir=existing)
    with pytest.raises(ConfigError, match=message):
        SubnetSearch(output_dir=str(existing))  # fails in __init__, before any training
    assert existing.read_text() == "keep"


def single_class(dataset: TensorDataset, label: int = 3) -> TensorDataset:
    x, y = dataset.tensors
    return TensorDataset(x[y == label], y[y == label])


def test_single_class_validation_set_warns_before_searching(tmp_path):
    train, val = digits(n=64, size=16)
    model = DigitsClassifier(SearchSpaceConfig(width=(0.5, 1.0), depth=None))
    with pytest.warns(UserWarning, match=r"the validation labels hold a single class \(3\) in \d+ samples, so a "
                                         r"classification metric cannot rank subnets .* HINT: check the validation "
                                         r"split"):
        run_search(model, val_dataloaders=DataLoader(single_class(val), batch_size=32),
                   train_dataloaders=DataLoader(train, batch_size=32), num_evals=1, strategy="random",
                   objectives=("val_acc:max",), bn_calibration_batches=1, progress=False, output_dir=tmp_path / "s")


@pytest.mark.parametrize("wrap", [lambda d: d, lambda d: Subset(d, list(range(len(d))))], ids=["tensors", "subset"])
def test_single_class_check_reads_labels_without_loading_samples(wrap):
    _, val = digits(n=64, size=16)
    with pytest.warns(UserWarning, match="of dataloader 1 hold a single class"):
        warn_if_single_class([DataLoader(wrap(val)), DataLoader(wrap(single_class(val)))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_single_class(DataLoader(wrap(val)))  # several classes: silent
        warn_if_single_class(DataLoader(TensorDataset(torch.randn(4, 2), torch.zeros(4))))  # float targets: silent
