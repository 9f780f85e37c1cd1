"""``lightning-elastic export`` writes exactly the model the search measured: same config, same BatchNorm
statistics (estimated on the search measurer's calibration batches), hence the same validation accuracy."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
import yaml

from lightning_elastic import load_subnet
from lightning_elastic.cli import main
from lightning_elastic.data import DigitsDataModule
from lightning_elastic.modules import ImageClassifier


def validation_accuracy(model: torch.nn.Module, recipe: dict) -> float:
    """``val_acc`` of a plain model through the recipe's own module and datamodule (as the search measures)."""
    module = ImageClassifier(**recipe["model"]["init_args"])
    module.model = model
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    return trainer.validate(module, datamodule=DigitsDataModule(**recipe["data"]["init_args"]), verbose=False)[0][
        "val_acc"]


def test_cli_export_measures_what_the_search_reported(tmp_path, trained_quickstart):
    result_file = next((trained_quickstart.search / "subnets").glob("*/search_result.json"))
    reported = json.loads(result_file.read_text())
    out = tmp_path / "exported"
    main(["export", "--config", str(trained_quickstart.config), "--ckpt_path", str(trained_quickstart.ckpt),
          "--subnet", str(result_file), "--output_dir", str(out)])
    exported = load_subnet(out)
    recipe = yaml.safe_load(trained_quickstart.config.read_text())
    assert validation_accuracy(exported, recipe) == pytest.approx(reported["values"]["val_acc"], abs=1e-6)
    # and tensor for tensor the subnet the search itself exported for that config (BN buffers included)
    searched = load_subnet(result_file.parent).state_dict()
    ours = exported.state_dict()
    assert list(ours) == list(searched)
    for key, value in ours.items():
        torch.testing.assert_close(value, searched[key], rtol=0, atol=1e-6, msg=key)
