"""Trials the loop creates and completes in one transaction each read back as ordinary Optuna trials."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from lightning_elastic.search import study as st
from lightning_elastic.search import trial_writes
from lightning_elastic.search.measure import config_key
from lightning_elastic.search.objectives import parse_objectives
from tests.search import _synthetic as syn

OBJECTIVES = parse_objectives(["val_acc:max", "macs:min"])


def test_fast_trials_read_back_like_optuna_ones(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    space = syn.space()
    study = st.open_study(url, "s", space, OBJECTIVES)
    dists = st.distributions(space)
    cfgs = [space.max_config(), space.min_config()]
    for cfg in cfgs:
        trial = st.claim(study, cfg, dists)
        assert trial_writes.created(trial)
        measured = syn.evaluate(cfg)
        assert st.finish(study, trial, measured, OBJECTIVES, ["macs"], [measured["macs"] - 10_000.0], 0.5)
        assert not st.finish(study, trial, measured, OBJECTIVES, ["macs"], [0.0], 0.5)  # already complete
    # a fresh reader (another process, optuna-dashboard) sees ordinary COMPLETE trials
    fresh = optuna.load_study(study_name="s", storage=url)
    trials = fresh.get_trials()
    assert [t.number for t in trials] == [0, 1] and all(t.state == TrialState.COMPLETE for t in trials)
    for t, cfg in zip(trials, cfgs):
        measured = syn.evaluate(cfg)
        assert t.params == dict(cfg) and t.distributions == dists
        assert t.values == [measured["val_acc"], measured["macs"]]
        assert t.user_attrs["config_key"] == config_key(cfg) and t.user_attrs["measured"] == measured
        assert t.user_attrs["eval_seconds"] == 0.5 and t.constraints == {"macs": measured["macs"] - 10_000.0}
    # the writing study's cached view agrees, and the claims see both configs
    assert [t.values for t in st.real_trials(study)] == [t.values for t in trials]
    assert st.taken_keys(fresh) == {config_key(c) for c in cfgs}
    # Optuna's own API still works on the same study after the direct writes
    fresh.optimize(lambda tr: (tr.suggest_categorical("block0.width", [1, 2, 3, 4]), 1.0), n_trials=1)
    assert len(fresh.get_trials()) == 3 and fresh.get_trials()[-1].number == 2


def test_in_memory_studies_use_optunas_api():
    space = syn.space()
    study = st.open_study(None, "s", space, OBJECTIVES)
    trial = st.claim(study, space.max_config(), st.distributions(space))
    assert not trial_writes.created(trial)
    assert st.finish(study, trial, syn.evaluate(space.max_config()), OBJECTIVES, [], [], 0.1)
    assert study.get_trials()[0].state == TrialState.COMPLETE
