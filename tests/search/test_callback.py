"""End-to-end searches of a real (tiny) timm ResNet supernet on digits: the callback, ``run``, ``run_search``."""

from __future__ import annotations

import csv
import json

import lightning as L
import optuna
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from optuna.trial import TrialState
from safetensors.torch import load_file

from lightning_elastic import ConfigError, SearchSpaceConfig, SubnetSearch, find_supernet
from lightning_elastic.cli.main import ElasticTrainer
from lightning_elastic.search import SearchError, run_search
from lightning_elastic.training.callback import ElasticTraining
from tests.search._search_models import DigitsClassifier, digits, loaders

SPACE = SearchSpaceConfig(width=(0.5, 1.0), depth=None)
FAST = {"bn_calibration_batches": 1, "predictors": ("ridge",), "predictor_trials": 32, "population_size": 8,
        "progress": False}
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


@pytest.fixture(scope="module")
def data():
    return loaders(batch_size=32, n=64)


def _read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _study(folder, name="subnet-search"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder.resolve()}/search.db")


def test_subnet_search_after_fit_writes_every_output(tmp_path, data):
    train, val = data
    model = DigitsClassifier(SPACE)
    search = SubnetSearch(objectives=("val_acc:max", "macs:min", "latency_ms:min"), constraints={"macs": 3.2e5},
                          num_evals=6, initial=4, rounds=1, export_top=2, latency_min_run_time=0.01,
                          **{**FAST, "progress": True})
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, logger=CSVLogger(tmp_path, name="logs"),
                        enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[search], **QUIET)
    trainer.fit(model, train, val)
    out = tmp_path / "search"  # default: <default_root_dir>/search
    rows = _read_csv(out / "evaluations.csv")
    assert len(rows) == 6 and {"val_acc", "macs", "latency_ms", "params", "feasible"} <= set(rows[0])
    assert len({tuple(r[k] for k in rows[0] if k.startswith("layer")) for r in rows}) == 6
    front = _read_csv(out / "pareto.csv")
    assert front and all(r["feasible"] == "True" and float(r["macs"]) <= 3.2e5 for r in front)
    assert (out / "pareto.png").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_evaluations"] == 6 and summary["predictors"]["val_acc"]["model"] in ("ridge", "mean")
    # the two LINAS proposals were predicted before they were measured: their error is the held-out quality
    heldout = summary["predictors"]["latency_ms"]["heldout"]
    assert heldout["num_samples"] == 2 and heldout["mae"] > 0
    assert {"kendall_tau", "mae", "num_samples"} <= set(summary["predictors"]["latency_ms"])
    # export_top=2 exports the top of the front; the front's size depends on measured (noisy) latency
    assert summary["settings"]["constraints"] == {"macs": 3.2e5}
    assert len(summary["best_subnets"]) == min(2, len(front))
    assert search.result.best["val_acc"] == max(float(r["val_acc"]) for r in front)
    # the fit Trainer's logger received the search figures
    logged = _read_csv(next((tmp_path / "logs").rglob("metrics.csv")))
    assert [float(r["search/num_evaluations"]) for r in logged if r.get("search/num_evaluations")] == [6.0]
    assert any(r.get("search/round/latency_ms_cv_mae") for r in logged)
    # the saved subnet carries the BN statistics it was measured with, not the supernet's blended ones
    best = summary["best_subnets"][0]
    folder = out / "subnets" / best["name"]
    assert json.loads((folder / "subnet.json").read_text())["arch_config"] == best["config"]
    subnet = find_supernet(model)[1].export(best["config"]).eval()
    subnet.load_state_dict(load_file(str(folder / "model.safetensors")))
    with torch.no_grad():
        acc = sum((subnet(x).argmax(-1) == y).sum().item() for x, y in val) / len(val.dataset)
    assert acc == pytest.approx(best["values"]["val_acc"], abs=1e-6)
    assert json.loads((folder / "search_result.json").read_text())["config"] == best["config"]


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

    # the supernet trained further: the stored evaluations are stale, so a study named after the new weights is used
    with torch.no_grad():
        model.backbone.fc.bias.add_(0.01)
    with pytest.warns(UserWarning, match=r"study 'subnet-search' .* was measured on other weights of this supernet "
                                         r"\(fingerprint \w{12}, now (\w{12})\); continuing in study "
                                         r"'subnet-search@\w{12}'.*HINT"):
        retrained = run_search(model, num_evals=2, **kwargs)
    assert retrained.summary["evaluated_by_this_worker"] == 2 and len(retrained.evaluations) == 2
    assert retrained.summary["study"]["study_name"].startswith("subnet-search@")
    assert len(_study(tmp_path).trials) == 5  # the old study is left as it was

    # the same output folder with another search space: refused
    other = DigitsClassifier(SearchSpaceConfig(width=(0.25, 1.0), depth=None))
    with pytest.raises(SearchError, match=r"belongs to another search space.*HINT: pass a new `study_name`"):
        run_search(other, num_evals=5, **kwargs)


def test_unknown_metric_and_unsatisfiable_constraints(tmp_path, data):
    train, val = data
    model = DigitsClassifier(SPACE)
    kwargs = {"train_dataloaders": train, "val_dataloaders": val, "strategy": "random", **FAST}
    with pytest.raises(ConfigError, match=r"\['val_accuracy'\] that the validation loop did not log; it logged "
                                          r"\['val_acc', 'val_loss'\], and the measured costs are \['params', "
                                          r"'macs', 'latency_ms'\]. HINT"):
        run_search(model, objectives=("val_accuracy:max", "macs:min"), output_dir=tmp_path / "a", **kwargs)
    with pytest.raises(ConfigError, match=r"name metric\(s\) \['latency'\] that the validation loop did not log"):
        run_search(model, objectives=("val_acc:max", "latency:min"), output_dir=tmp_path / "a", **kwargs)
    # refused before any study exists: fixing the name and rerunning in the same folder just works
    assert not (tmp_path / "a" / "search.db").exists()
    with pytest.raises(ConfigError, match=r"`constraints` \{'macs': 10.0\} cannot be met by any subnet: the smallest "
                                          r"subnet \(min config\) has macs=.*HINT: raise the bound"):
        run_search(model, constraints={"macs": 10}, output_dir=tmp_path / "b", **kwargs)
    with pytest.raises(ConfigError, match=r"`constraints` \{'latency_ms': 1e-06\} cannot be met by any subnet: the "
                                          r"smallest subnet \(min config\), normally the fastest, measures "
                                          r"latency_ms=.*HINT: raise the bound"):
        run_search(model, objectives=("val_acc:max", "latency_ms:min"), constraints={"latency_ms": 1e-6},
                   latency_min_run_time=0.01, output_dir=tmp_path / "e", **kwargs)
    # a metric bound is only known after measuring: every output is written, then the search says so with the closest
    with pytest.raises(SearchError, match=r"`constraints` \{'val_acc': 1.5\} cannot be met: none of the 2 evaluated "
                                          r"subnets satisfies them. The closest is trial \d+ with .*val_acc=.*HINT: "
                                          r"relax the bound"):
        run_search(model, constraints={"val_acc": 1.5}, num_evals=2, output_dir=tmp_path / "d", **kwargs)
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["num_evaluations"] == 2 and summary["num_feasible"] == 0 and summary["pareto_size"] == 0
    with pytest.raises(ConfigError, match=r"`pl_module` \(DigitsClassifier\) holds no supernet"):
        run_search(DigitsClassifier(), output_dir=tmp_path / "c", **kwargs)
    with pytest.raises(ConfigError, match=r"`settings` was given together with keyword options \['num_evals'\]"):
        run_search(model, settings=SubnetSearch().settings, num_evals=3)


def test_crash_during_a_real_evaluation_keeps_the_finished_ones(tmp_path, data):
    train, val = data
    model = DigitsClassifier(SPACE, crash_on_width=4)  # layer1.0.width 4: the min subnet, evaluated second
    kwargs = {"train_dataloaders": train, "val_dataloaders": val, "strategy": "random", "output_dir": tmp_path,
              "export_top": 0, **FAST}
    with pytest.raises(RuntimeError, match="boom: evaluation crashed on purpose"):
        run_search(model, num_evals=4, **kwargs)
    trials = _study(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert "boom" in trials[1].user_attrs["error"]
    assert len(_read_csv(tmp_path / "evaluations.csv")) == 1  # the finished one, where users look first

    model.crash_on_width = None
    result = run_search(model, num_evals=4, **kwargs)
    assert result.summary["evaluated_by_this_worker"] == 3 and len(result.evaluations) == 4
    assert trials[0].number in {e.number for e in result.evaluations}


def test_run_without_supernet_or_validation_data(tmp_path, data):
    search = SubnetSearch(num_evals=2, **FAST)
    with pytest.raises(ConfigError, match=r"`pl_module` \(DigitsClassifier\) holds no supernet.*HINT"):
        search.run(DigitsClassifier(), output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"`datamodule` is None, `trainer` is None and DigitsClassifier defines no val_dataloader\(\).*HINT"):
        search.run(DigitsClassifier(SPACE), output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"`fit` ran without a validation dataloader and DigitsClassifier.*HINT"):
        search.run(DigitsClassifier(SPACE), trainer=L.Trainer(logger=False, **QUIET))


@pytest.mark.slow
def test_search_after_elastic_training_then_from_its_checkpoint(tmp_path):
    """ElasticTraining + SubnetSearch in fit; then the CLI path (restore, ``run``) and ``run_search`` resume it."""
    train_ds, val_ds = digits(64)
    dm = L.LightningDataModule.from_datasets(train_ds, val_ds, batch_size=32)
    out = tmp_path / "search"
    options = {"strategy": "random", "output_dir": out, "export_top": 1, **FAST}
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, logger=False, default_root_dir=tmp_path, callbacks=[
        ElasticTraining(SPACE, model_attr="backbone", validate_subnets=("max",), bn_calibration_batches=1),
        SubnetSearch(num_evals=2, **options)], **QUIET)
    trained = DigitsClassifier()
    trainer.fit(trained, datamodule=dm)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    assert len(_read_csv(out / "evaluations.csv")) == 2

    # `lightning-elastic search`: restore the checkpoint into a fresh module, then SubnetSearch.run
    fresh = DigitsClassifier()
    cli = ElasticTrainer(logger=False, default_root_dir=tmp_path / "elsewhere", callbacks=[
        SubnetSearch(num_evals=3, **{**options, "output_dir": None})], **QUIET)
    result = cli.search(fresh, datamodule=dm, ckpt_path=str(ckpt), output_dir=str(out))
    assert result.summary["evaluated_by_this_worker"] == 1 and len(result.evaluations) == 3
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), trained.state_dict().values()))
    assert (out / "subnets").is_dir() and not (tmp_path / "elsewhere").exists()

    # plain Python on the checkpoint
    again = run_search(DigitsClassifier(), dm, ckpt_path=ckpt, num_evals=4, **options)
    assert again.summary["evaluated_by_this_worker"] == 1 and len(again.evaluations) == 4


def test_run_search_checkpoint_errors(tmp_path, data):
    _, val = data
    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": DigitsClassifier(SPACE).state_dict(), "callbacks": {}}, bare)
    with pytest.raises(ConfigError, match=r"`ckpt_path` .* stores no search space and `space_config` is None.*HINT"):
        run_search(DigitsClassifier(), val_dataloaders=val, ckpt_path=bare, output_dir=tmp_path / "t", **FAST)
    # with the space given, such a checkpoint (e.g. from your own training loop) loads
    result = run_search(DigitsClassifier(), val_dataloaders=val, ckpt_path=bare, space_config=SPACE, num_evals=1,
                        strategy="random", export_top=0, output_dir=tmp_path / "u", **FAST)
    assert len(result.evaluations) == 1
    with pytest.raises(ConfigError, match=r"`ckpt_path` 'missing.ckpt' does not exist.*HINT"):
        run_search(DigitsClassifier(), val_dataloaders=val, ckpt_path="missing.ckpt", **FAST)
    with pytest.raises(ConfigError, match=r"`val_dataloaders` is None and no `datamodule` was given.*HINT"):
        run_search(DigitsClassifier(SPACE), **FAST)
