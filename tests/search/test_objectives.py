from __future__ import annotations

import pytest

from lightning_elastic import ConfigError, SubnetSearch
from lightning_elastic.search.objectives import parse_constraints, parse_objectives, violations
from lightning_elastic.search.run import SearchSettings


def test_parse_objectives_and_violations():
    objs = parse_objectives(("val_acc:max", "macs:min", "latency_ms:min"))
    assert [(o.name, o.direction, o.is_cost) for o in objs] == [
        ("val_acc", "max", False), ("macs", "min", True), ("latency_ms", "min", True)]
    cons = parse_constraints({"macs": 100, "val_acc": 0.5}, objs)
    # <= 0 means satisfied: macs is an upper bound, a maximised metric a lower bound
    assert violations({"macs": 80.0, "val_acc": 0.7}, cons, objs) == pytest.approx([-20.0, -0.2])
    assert violations({"macs": 120.0, "val_acc": 0.4}, cons, objs) == pytest.approx([20.0, 0.1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"objectives": ("val_acc", "macs:min")}, r"`objectives` entry 'val_acc' has no valid direction.*HINT"),
        ({"objectives": ("val_acc:best",)}, r"`objectives` entry 'val_acc:best' has no valid direction"),
        ({"objectives": ("val_acc:max", "macs:max")}, r"maximises a cost.*HINT: 'macs:min'"),
        ({"objectives": ("macs:min",)}, r"`objectives` .* has no validation metric.*HINT"),
        ({"objectives": ("val_acc:max", "val_acc:min")}, r"`objectives` lists 'val_acc' twice"),
        ({"objectives": ()}, r"`objectives` got \(\); allowed: a non-empty list"),
        ({"num_evals": 0}, r"`num_evals` got 0; allowed: an integer >= 1.*HINT"),
        ({"num_evals": -5}, r"`num_evals` got -5"),
        ({"num_evals": 2.5}, r"`num_evals` got 2.5"),
        ({"sampler": "nsga9"}, r"`sampler` got 'nsga9'; allowed: \['nsga2', 'nsga3', 'tpe', 'gp'\].*HINT"),
        ({"strategy": "bayes"}, r"`strategy` got 'bayes'; allowed: \['linas', 'random', 'evolution'\].*HINT"),
        ({"predictors": ("xgboost",)}, r"`predictors` has unknown name 'xgboost'; allowed: .*HINT"),
        ({"predictors": ()}, r"`predictors` got \(\); allowed: a non-empty list"),
        ({"constraints": {"macs": "big"}}, r"`constraints\['macs'\]` got 'big'; allowed: a finite number"),
        ({"constraints": [("macs", 1)]}, r"`constraints` got .*allowed: a dict"),
        ({"rounds": 0}, r"`rounds` got 0"),
        ({"initial": 1}, r"`initial` got 1; allowed: an integer >= 2"),
        ({"export_top": -1}, r"`export_top` got -1; allowed: an integer >= 0"),
        ({"latency_of": "onnx"}, r"`latency_of` got 'onnx'; allowed: \['export', 'supernet'\]"),
        ({"latency_device": "tpu"}, r"`latency_device` got 'tpu'; allowed"),
        ({"latency_min_run_time": 0}, r"`latency_min_run_time` got 0; allowed: seconds > 0"),
        ({"input_shape": (3, 0, 32)}, r"`input_shape` got \(3, 0, 32\); allowed: positive ints"),
        ({"storage": "search.db"}, r"`storage` got 'search.db'; allowed: None .* or an RDB URL.*HINT"),
        ({"study_name": ""}, r"`study_name` got ''; allowed: a non-empty string"),
    ],
)
def test_bad_arguments_fail_in_init(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SubnetSearch(**kwargs)
    with pytest.raises(ConfigError, match=match):
        SearchSettings(**kwargs)


def test_valid_settings_round_trip():
    cb = SubnetSearch(objectives=["val_acc:max", "macs:min"], constraints={"macs": 3e8}, num_evals=5,
                      storage="postgresql://user:secret@db/search")
    d = cb.settings.to_dict()
    assert d["objectives"] == ("val_acc:max", "macs:min") and d["constraints"] == {"macs": 3e8}
    assert "secret" not in d["storage"]
