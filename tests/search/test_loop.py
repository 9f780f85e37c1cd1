from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from lightning_elastic.search import study as st
from lightning_elastic.search.loop import SearchLoop, non_dominated_ranks
from lightning_elastic.search.measure import config_key
from lightning_elastic.search.objectives import parse_objectives
from tests.search import _synthetic as syn

OBJ = parse_objectives(["val_acc:max", "macs:min"])


def make_loop(tmp_path=None, strategy="linas", num_evals=24, evaluate=syn.evaluate, constraints=None, sampler="nsga2",
              space=None, **kw):
    """A loop on the synthetic space; ``tmp_path`` None keeps the study in memory (fast), else SQLite."""
    space = space or syn.space()
    smp = st.make_sampler(sampler, 0, 8) if strategy == "evolution" else None
    storage = None if tmp_path is None else f"sqlite:///{tmp_path}/s.db"
    study = st.open_study(storage, "s", space, OBJ, smp)
    kw.setdefault("predictor_trials", 64)
    kw.setdefault("predictors", ("ridge",))
    return SearchLoop(space, OBJ, constraints or {}, evaluate, syn.costs, study, strategy=strategy,
                      num_evals=num_evals, rounds=kw.pop("rounds", 3), initial=kw.pop("initial", 8), sampler=sampler,
                      population_size=8, progress=False, **kw)


def completed_keys(study):
    return [t.user_attrs["config_key"] for t in st.real_trials(study)]


@pytest.mark.parametrize("strategy", ["linas", "random", "evolution"])
def test_strategies_complete_the_budget_without_duplicates(strategy):
    rounds = []
    loop = make_loop(None, strategy, predictors=("ridge", "extra_trees"),
                     on_round=lambda r, metrics: rounds.append((r, metrics)))
    loop.run()
    keys = completed_keys(loop.study)
    assert len(keys) == 24 and len(set(keys)) == 24
    if strategy == "linas":
        q = loop.quality["val_acc"]
        assert q.num_samples >= 8 and q.kendall_tau > 0.5 and loop.summary()["rounds_run"] >= 3
        # every proposal after the initial 8 was predicted before it was measured: 16 held-out pairs
        heldout = loop.summary()["predictors"]["val_acc"]["heldout"]
        assert heldout["num_samples"] == 16 and heldout["kendall_tau"] > 0.5 and heldout["mae"] > 0
        assert [r for r, _ in rounds] == list(range(1, len(rounds) + 1)) and len(rounds) >= 3
        assert "val_acc_cv_kendall_tau" in rounds[0][1] and "val_acc_heldout_kendall_tau" in rounds[-1][1]
    else:
        assert rounds == [] and loop.summary()["predictors"] == {}


def test_linas_finds_more_of_the_front_than_random():
    space = syn.space(4, (1, 2, 3, 4, 5))  # 625 subnets
    all_pts = [[-syn.evaluate(c)["val_acc"], syn.costs(c)["macs"]] for c in space.enumerate()]
    import numpy as np

    front = {config_key(c) for c, r in zip(space.enumerate(), non_dominated_ranks(np.array(all_pts))) if r == 0}
    found = {}
    for strategy in ("linas", "random"):
        loop = make_loop(None, strategy, num_evals=40, space=space, rounds=4, initial=12)
        loop.run()
        found[strategy] = len(front & set(completed_keys(loop.study)))
    assert found["linas"] > 2 * max(1, found["random"]), found


@pytest.mark.parametrize("sampler", ["nsga3", "tpe", pytest.param("gp", marks=pytest.mark.slow)])
def test_other_samplers_on_predictors(sampler):
    loop = make_loop(None, num_evals=12, sampler=sampler, rounds=1, predictor_trials=16, predictors=("ridge",))
    loop.run()
    assert len(set(completed_keys(loop.study))) == 12


def test_constraints_steer_linas_proposals():
    bound = 20000.0
    loop = make_loop(None, num_evals=20, constraints={"macs": bound})
    loop.run()
    later = [t for t in st.real_trials(loop.study) if t.number >= 8]
    # macs are exact (not predicted), so every predicted candidate satisfies the bound
    assert later and all(t.user_attrs["measured"]["macs"] <= bound for t in later)
    assert all(max(st.constraint_values(t)) <= 0 for t in later)


def test_crash_keeps_finished_trials_and_rerun_resumes(tmp_path):
    calls = []

    def flaky(cfg):
        calls.append(cfg)
        if len(calls) == 6:
            raise RuntimeError("boom: out of memory on purpose")
        return syn.evaluate(cfg)

    loop = make_loop(tmp_path, num_evals=14, evaluate=flaky)
    with pytest.raises(RuntimeError, match="boom"):
        loop.run()
    trials = loop.study.get_trials()
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 5
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "boom" in failed[0].user_attrs["error"]

    # a new process (new study handle) resumes: only the missing evaluations run
    calls.clear()
    again = make_loop(tmp_path, num_evals=14)
    again.evaluate = lambda cfg: (calls.append(cfg), syn.evaluate(cfg))[1]
    again.run()
    keys = completed_keys(again.study)
    assert len(calls) == 9 and len(keys) == 14 and len(set(keys)) == 14


def test_interrupted_running_trial_is_reaped():
    loop = make_loop(None, num_evals=3, strategy="random")
    trial = st.claim(loop.study, syn.space().max_config(), loop.dists)  # RUNNING, as if killed mid-evaluation
    assert trial is not None and st.num_taken(loop.study) == 1
    assert st.claim(loop.study, syn.space().max_config(), loop.dists) is None  # taken
    loop.run()
    states = [t.state for t in loop.study.get_trials()]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == 3


def test_study_from_another_space_is_refused(tmp_path):
    st.open_study(f"sqlite:///{tmp_path}/s.db", "s", syn.space(4), OBJ)
    with pytest.raises(st.SearchError, match=r"`study_name` 's' .* belongs to another search space.*HINT"):
        st.open_study(f"sqlite:///{tmp_path}/s.db", "s", syn.space(5), OBJ)
    with pytest.raises(st.SearchError, match=r"was made for objectives \['val_acc:max', 'macs:min'\]"):
        st.open_study(f"sqlite:///{tmp_path}/s.db", "s", syn.space(4), parse_objectives(["val_acc:max"]))


def test_non_dominated_ranks():
    import numpy as np

    ranks = non_dominated_ranks(np.array([[0, 3], [1, 1], [2, 2], [3, 0], [3, 3]]))
    assert ranks.tolist() == [0, 0, 1, 0, 2]
    assert optuna.__version__
