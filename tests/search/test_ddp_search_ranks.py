"""Under DDP every rank searches: 2 CPU processes (``ddp_spawn``) share the study, each measures its own claimed
subnets, together they complete exactly ``num_evals`` with no duplicate network, and rank 0 alone writes outputs."""

from __future__ import annotations

import json
import socket

import lightning as L
import optuna
import pytest

from lightning_elastic import SearchSpaceConfig, SubnetSearch
from lightning_elastic.search import run as run_module
from lightning_elastic.search import study as st
from tests.search._search_models import DigitsClassifier, loaders

SPACE = SearchSpaceConfig(width=(0.25, 0.5, 1.0), depth=None)


class RecordingSearch(SubnetSearch):
    """Writes what each rank ended with, and which rank wrote outputs, to files (ddp_spawn children return no
    callback state to the test process)."""

    def __init__(self, folder: str, **options):
        super().__init__(**options)
        self.folder = folder

    def run(self, pl_module, datamodule=None, *, output_dir=None, trainer=None):
        real = run_module.write_outputs
        rank = trainer.global_rank

        def counted(*args, **kwargs):  # the real writer, plus a line saying which rank called it
            with open(f"{self.folder}/writes.txt", "a") as fh:
                fh.write(f"{rank}\n")
            return real(*args, **kwargs)

        run_module.write_outputs = counted
        try:
            result = super().run(pl_module, datamodule, output_dir=output_dir, trainer=trainer)
        finally:
            run_module.write_outputs = real
        with open(f"{self.folder}/result-{rank}.json", "w") as fh:
            json.dump({"trials": sorted(e.number for e in result.evaluations),
                       "front": sorted(e.number for e in result.pareto)}, fh)
        return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_rank_searches_and_rank_zero_writes_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    train, val = loaders(batch_size=32, n=64)
    search = RecordingSearch(str(tmp_path), objectives=("val_acc:max", "macs:min"), num_evals=8, initial=4, rounds=1,
                             export_top=1, bn_calibration_batches=1, predictors=("ridge",), predictor_trials=16,
                             population_size=4, progress=False)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, strategy="ddp_spawn", devices=2,
                        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[search])
    trainer.fit(DigitsClassifier(SPACE), train, val)

    study = optuna.load_study(study_name="subnet-search", storage=f"sqlite:///{tmp_path}/search/search.db")
    real = st.real_trials(study)
    keys = [t.user_attrs["config_key"] for t in real]
    assert len(real) == 8 and len(set(keys)) == 8  # exactly the budget, no network twice
    by_worker: dict[str, int] = {}
    for t in real:
        by_worker[t.user_attrs["worker"]] = by_worker.get(t.user_attrs["worker"], 0) + 1
    assert len(by_worker) == 2 and all(n > 0 for n in by_worker.values()), by_worker  # both ranks measured
    assert (tmp_path / "writes.txt").read_text().split() == ["0"]  # outputs written once, by rank 0
    summary = json.loads((tmp_path / "search" / "summary.json").read_text())
    assert summary["evaluations_by_worker"] == by_worker
    ranks = [json.loads((tmp_path / f"result-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and ranks[0]["trials"] == sorted(t.number for t in real)
