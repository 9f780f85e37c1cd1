from __future__ import annotations

import csv
import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from lightning_elastic import ConfigError, SearchSpaceConfig, SubnetSearch, find_supernet
from lightning_elastic.search import SearchError, run_search
from tests.search._search_models import DigitsClassifier, loaders

SPACE = SearchSpaceConfig(width=(0.5, 1.0), depth=None)
FAST = {"bn_calibration_batches": 1, "predictors": ("ridge",), "predictor_trials": 32, "population_size": 8,
        "progress": False}


@pytest.fixture(scope="module")
def data():
    return loaders(batch_size=32, n=64)


def _read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_subnet_search_after_fit_writes_every_output(tmp_path, data):
    train, val = data
    model = DigitsClassifier(SPACE)
    search = SubnetSearch(objectives=("val_acc:max", "macs:min", "latency_ms:min"), constraints={"macs": 3.2e5},
                          num_evals=6, initial=4, rounds=1, export_top=2, latency_min_run_time=0.01,
                          **{**FAST, "progress": True})
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[search])
    trainer.fit(model, train, val)
    out = tmp_path / "search"
    rows = _read_csv(out / "evaluations.csv")
    assert len(rows) == 6 and {"val_acc", "macs", "latency_ms", "params", "feasible"} <= set(rows[0])
    assert len({tuple(r[k] for k in rows[0] if k.startswith("layer")) for r in rows}) == 6
    front = _read_csv(out / "pareto.csv")
    assert front and all(r["feasible"] == "True" and float(r["macs"]) <= 3.2e5 for r in front)
    assert (out / "pareto.png").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_evaluations"] == 6 and summary["predictors"]["val_acc"]["model"] in ("ridge", "mean")
    assert {"kendall_tau", "mae", "num_samples"} <= set(summary["predictors"]["latency_ms"])
    assert summary["settings"]["constraints"] == {"macs": 3.2e5} and len(summary["best_subnets"]) == 2
    assert search.result.best["val_acc"] == max(float(r["val_acc"]) for r in front)
    # the saved subnet carries the BN statistics it was measured with, not the supernet's blended ones
    best = summary["best_subnets"][0]
    folder = out / "subnets" / best["name"]
    assert json.loads((folder / "subnet.json").read_text())["arch_config"] == best["config"]
    subnet = find_supernet(model)[1].export(best["config"]).eval()
    subnet.load_state_dict(load_file(str(folder / "model.safetensors")))
    with torch.no_grad():
        acc = sum((subnet(x).argmax(-1) == y).sum().item() for x, y in val) / len(val.dataset)
    assert acc == pytest.approx(best["values"]["val_acc"], abs=1e-6)
    assert json.loads((out / "subnets" / best["name"] / "config.json").read_text())["config"] == best["config"]


def test_run_search_resumes_without_reevaluating(tmp_path, data):
    train, val = data
    model = DigitsClassifier(SPACE)
    kwargs = {"train_dataloaders": train, "val_dataloaders": val, "strategy": "random", "output_dir": tmp_path,
              "export_top": 0, **FAST}
    first = run_search(model, num_evals=3, **kwargs)
    assert len(first.evaluations) == 3 and first.summary["evaluated_by_this_worker"] == 3
    again = run_search(model, num_evals=5, **kwargs)
    assert again.summary["evaluated_by_this_worker"] == 2 and len(again.evaluations) == 5
    assert {e.number for e in first.evaluations} < {e.number for e in again.evaluations}

    # the same output folder with another search space: refused
    other = DigitsClassifier(SearchSpaceConfig(width=(0.25, 1.0), depth=None))
    with pytest.raises(SearchError, match=r"belongs to another search space.*HINT: pass a new `study_name`"):
        run_search(other, num_evals=5, **kwargs)


def test_unknown_metric_and_unsatisfiable_constraint(tmp_path, data):
    train, val = data
    model = DigitsClassifier(SPACE)
    kwargs = {"train_dataloaders": train, "val_dataloaders": val, "strategy": "random", **FAST}
    with pytest.raises(ConfigError, match=r"\['val_accuracy'\] that the validation loop did not log; it logged "
                                          r"\['val_acc', 'val_loss'\]"):
        run_search(model, objectives=("val_accuracy:max", "macs:min"), output_dir=tmp_path / "a", **kwargs)
    with pytest.raises(ConfigError, match=r"`constraints` \{'macs': 10.0\} cannot be met by any subnet: the smallest "
                                          r"subnet \(min config\) has macs=.*HINT: raise the bound"):
        run_search(model, constraints={"macs": 10}, output_dir=tmp_path / "b", **kwargs)
    # a metric bound is only known after measuring: the search says so and names the closest subnet
    with pytest.warns(UserWarning, match=r"no evaluated subnet satisfies `constraints` \{'val_acc': 1.5\}; the "
                                         r"closest is trial \d+ with .*HINT: relax the bounds"):
        result = run_search(model, constraints={"val_acc": 1.5}, num_evals=2, output_dir=tmp_path / "d", **kwargs)
    assert result.pareto == [] and result.summary["num_feasible"] == 0
    with pytest.raises(ConfigError, match=r"`pl_module` \(DigitsClassifier\) holds no supernet"):
        run_search(DigitsClassifier(), output_dir=tmp_path / "c", **kwargs)


class _StoresSpace(Callback):
    """Stores the supernet state the way ElasticTraining does (``{"supernet": ..., "model_attr": ...}``)."""

    def state_dict(self):
        return {"supernet": find_supernet(self.module)[1].state_info(), "model_attr": "backbone"}


def test_run_search_on_a_checkpoint(tmp_path, data):
    train, val = data
    trained = DigitsClassifier(SPACE)
    store = _StoresSpace()
    store.module = trained
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[store])
    trainer.fit(trained, train, val)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)

    fresh = DigitsClassifier()  # unconverted, random weights
    result = run_search(fresh, train_dataloaders=train, val_dataloaders=val, ckpt_path=ckpt, num_evals=2,
                        strategy="random", output_dir=tmp_path / "s", export_top=0, **FAST)
    assert find_supernet(fresh)[1].signature() == find_supernet(trained)[1].signature()
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), trained.state_dict().values()))
    assert len(result.evaluations) == 2

    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": trained.state_dict(), "callbacks": {}}, bare)
    with pytest.raises(ConfigError, match=r"`ckpt_path` .* stores no search space and `space_config` is None"):
        run_search(DigitsClassifier(), val_dataloaders=val, ckpt_path=bare, output_dir=tmp_path / "t", **FAST)
    with pytest.raises(ConfigError, match=r"`ckpt_path` 'missing.ckpt' does not exist"):
        run_search(DigitsClassifier(), val_dataloaders=val, ckpt_path="missing.ckpt", **FAST)
