"""One tiny quickstart run through the real CLI (fit + search), shared by the CLI tests that need a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from lightning_elastic.cli import main

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"


class TrainedRun(NamedTuple):
    config: Path  # the shrunk recipe
    ckpt: Path  # its checkpoint (ElasticTraining state included)
    search: Path  # the search folder written after fit


@pytest.fixture(scope="session")
def trained_quickstart(tmp_path_factory) -> TrainedRun:
    """``recipes/quickstart.yaml`` with a few batches and a 4-evaluation search (about 10 s on 2 cores)."""
    root = tmp_path_factory.mktemp("quickstart")
    config = yaml.safe_load(QUICKSTART.read_text())
    config["trainer"].update(max_epochs=1, limit_train_batches=6, limit_val_batches=1, default_root_dir=str(root),
                             enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    config["elastic"].update(bn_calibration_batches=1, validate_subnets=["max"])
    config["subnet_search"].update(objectives=["val_acc:max", "macs:min"], num_evals=4, rounds=1, initial=3,
                                   export_top=1, predictor_trials=20, bn_calibration_batches=2, progress=False)
    config["data"]["init_args"].update(batch_size=32)
    path = root / "quickstart.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
    return TrainedRun(path, next(root.rglob("*.ckpt")), root / "search")
