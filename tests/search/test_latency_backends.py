"""Latency where the model ships: ``latency_backend`` = "torch", "onnxruntime" or the user's own callable.

Nothing here depends on timing: a deterministic callable (a function of the exported model's parameter count)
checks the plumbing, the front and the latency predictor; ONNX Runtime's number is only checked to be a time.
"""

from __future__ import annotations

import json
import sys

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from optuna.trial import TrialState
from torch.utils.data import DataLoader, TensorDataset

from lightning_elastic import ConfigError, SearchSpaceConfig, SubnetSearch, find_supernet, to_supernet
from lightning_elastic.search import SearchError
from lightning_elastic.search import study as st
from lightning_elastic.search.latency import MeasurementError
from lightning_elastic.search.loop import SearchLoop
from lightning_elastic.search.measure import SubnetMeasurer
from lightning_elastic.search.objectives import parse_objectives
from lightning_elastic.search.run import SearchSettings
from tests._models import MLPBlock, TinyMLP, TinyMLPAdapter
from tests.search._search_models import DigitsClassifier, loaders

SPACE = SearchSpaceConfig(width=(0.5, 1.0), depth=None)
FAST = {"bn_calibration_batches": 1, "predictors": ("ridge",), "predictor_trials": 32, "population_size": 8,
        "progress": False}


def params_latency(model, inputs):
    """A device whose latency is 1 ms per 1,000 parameters of the model it is given."""
    assert isinstance(inputs, tuple) and inputs[0].shape[0] == 2  # latency_batch_size
    return sum(p.numel() for p in model.parameters()) / 1000.0


def _has_cuda_provider() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.fixture(scope="module")
def data():
    return loaders(batch_size=32, n=64)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"latency_backend": "tensorrt"},
         r"`latency_backend` got 'tensorrt'; allowed: \['torch', 'onnxruntime'\] or a callable .*HINT"),
        ({"latency_backend": "no_such_pkg.timing.on_phone"},
         r"`latency_backend` got 'no_such_pkg.timing.on_phone', which cannot be imported .*HINT"),
        ({"latency_backend": "math.pi"}, r"`latency_backend` 'math.pi' is a float, not a callable.*HINT"),
        ({"latency_backend": params_latency, "latency_of": "supernet"},
         r"`latency_backend` '.*params_latency' times the exported subnet, but `latency_of` is 'supernet'.*HINT"),
        pytest.param({"latency_backend": "onnxruntime", "latency_device": "cuda"},
                     r"`latency_device` 'cuda' needs ONNX Runtime's CUDAExecutionProvider.*HINT",
                     marks=pytest.mark.skipif(_has_cuda_provider(), reason="onnxruntime-gpu is installed")),
    ],
)
def test_bad_latency_backends_fail_in_init(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SubnetSearch(**kwargs)
    with pytest.raises(ConfigError, match=match):
        SearchSettings(**kwargs)


def test_a_callable_can_be_named_by_its_import_path():  # how a recipe or the command line gives one
    import operator

    assert SearchSettings(latency_backend="operator.add").latency_backend is operator.add
    assert SearchSettings(latency_backend="operator.add").to_dict()["latency_backend"] == "_operator.add"


def test_onnxruntime_not_installed_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(ConfigError, match=r"needs the onnxruntime package.*HINT: pip install "
                                          r"\"lightning-elastic\[onnx\]\""):
        SubnetSearch(latency_backend="onnxruntime")


def test_a_callable_backend_times_the_exported_subnets_and_its_predictor_is_scored(tmp_path, data):
    train, val = data
    model = DigitsClassifier(SPACE)
    search = SubnetSearch(objectives=("val_acc:max", "latency_ms:min"), num_evals=8, initial=4, rounds=2,
                          latency_backend=params_latency, latency_batch_size=2, export_top=0,
                          output_dir=tmp_path, **FAST)
    result = _run(search, model, train, val)
    assert len(result.evaluations) == 8
    for e in result.evaluations:
        assert e.values["latency_ms"] == e.values["params"] / 1000.0  # the export that ships was timed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings"]["latency_backend"].endswith("params_latency")
    # latency is predicted like accuracy, and its held-out quality is reported
    heldout = summary["predictors"]["latency_ms"]["heldout"]
    assert heldout["num_samples"] == 4 and heldout["kendall_tau"] > 0.5
    assert summary["failed_evaluations"] == []


def _run(search, model, train, val):
    return search.run(model, _DataModule(train, val))


class _DataModule(L.LightningDataModule):
    def __init__(self, train, val):
        super().__init__()
        self.train, self.val = train, val

    def train_dataloader(self):
        return self.train

    def val_dataloader(self):
        return self.val


@pytest.mark.parametrize("bad", [RuntimeError("the board is offline"), "fast", float("nan"), None])
def test_a_subnet_the_callable_cannot_time_is_a_failed_trial_and_the_search_goes_on(tmp_path, data, bad):
    train, val = data
    model = DigitsClassifier(SPACE)
    net = find_supernet(model)[1]
    largest = net.export(net.max_config(), calibration_data="current")
    limit = sum(p.numel() for p in largest.parameters())

    def flaky(exported, inputs):  # fails on the largest subnet only
        if sum(p.numel() for p in exported.parameters()) == limit:
            if isinstance(bad, Exception):
                raise bad
            return bad
        return 1.0

    search = SubnetSearch(objectives=("val_acc:max", "latency_ms:min"), num_evals=4, strategy="random",
                          latency_backend=flaky, export_top=0, output_dir=tmp_path, **FAST)
    result = _run(search, model, train, val)
    assert len(result.evaluations) == 4 and all(e.values["latency_ms"] == 1.0 for e in result.evaluations)
    study = st.open_study(st.default_storage(tmp_path), "subnet-search", net.space, parse_objectives(
        ("val_acc:max", "latency_ms:min")))
    failed = study.get_trials(states=(TrialState.FAIL,))
    reason = "raised RuntimeError: the board is offline" if isinstance(bad, Exception) else f"returned {bad!r}"
    assert len(failed) == 1 and reason in failed[0].user_attrs["error"]
    assert failed[0].params == net.max_config()
    assert "val_acc" in failed[0].user_attrs["measured_before_failure"]  # what was measured is kept
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [f["trial"] for f in summary["failed_evaluations"]] == [failed[0].number]


def test_a_backend_failing_every_subnet_stops_the_search_and_keeps_the_finished_ones(tmp_path, data):
    train, val = data
    model = DigitsClassifier(SPACE)
    calls = []

    def dies(exported, inputs):
        calls.append(1)
        if len(calls) > 2:
            raise OSError("device unreachable")
        return 1.0

    search = SubnetSearch(objectives=("val_acc:max", "latency_ms:min"), num_evals=20, strategy="random",
                          latency_backend=dies, export_top=0, output_dir=tmp_path, **FAST)
    with pytest.raises(SearchError, match=r"the last 10 evaluations all failed; the last one: .*device unreachable"
                                          r".*HINT"):
        _run(search, model, train, val)
    assert len((tmp_path / "evaluations.csv").read_text().strip().splitlines()) == 1 + 2  # header + the 2 finished


class ErfcxBlock(MLPBlock):
    """``torch.special.erfcx`` has no ONNX export: a subnet that keeps this block cannot be exported to ONNX."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.special.erfcx(self.fc1(x).abs()))


class Regressor(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = TinyMLP(hidden=16)
        self.backbone.blocks[2] = ErfcxBlock(8, 16)
        to_supernet(self.backbone, SearchSpaceConfig(width=(0.5, 1.0), depth=(2, 3)), adapter=TinyMLPAdapter())

    def forward(self, x):
        return self.backbone(x)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y))


def test_onnxruntime_times_exported_subnets_and_an_onnx_export_failure_fails_only_that_trial():
    module = Regressor()
    net = find_supernet(module)[1]
    gen = torch.Generator().manual_seed(0)
    val = DataLoader(TensorDataset(torch.randn(16, 6, generator=gen), torch.randn(16, 4, generator=gen)), batch_size=8)
    measurer = SubnetMeasurer(module, net, val, None, ["val_loss", "latency_ms"], bn_calibration_batches=0,
                              latency_min_run_time=0.01, latency_backend="onnxruntime")
    shallow = measurer.measure({**net.max_config(), "blocks.depth": 2})
    assert 0 < shallow["latency_ms"] < float("inf")
    with pytest.raises(MeasurementError, match=r"the ONNX export of this subnet failed .*special_erfcx.*HINT") as err:
        measurer.measure(net.max_config())
    assert "val_loss" in err.value.measured

    study = st.open_study(None, "onnx", net.space, parse_objectives(("val_loss:min", "latency_ms:min")))
    loop = SearchLoop(net.space, parse_objectives(("val_loss:min", "latency_ms:min")), {}, measurer.measure,
                      measurer.costs, study, strategy="random", num_evals=3, progress=False)
    loop.run()
    done = study.get_trials(states=(TrialState.COMPLETE,))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(done) == 3 and all(t.params["blocks.depth"] == 2 for t in done)
    assert failed and all(t.params["blocks.depth"] == 3 and "ONNX export" in t.user_attrs["error"] for t in failed)
