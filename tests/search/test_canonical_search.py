"""No network is evaluated twice: the study claims canonical configs, whoever proposes them.

The space is a real supernet's (TinyMLP: depth 1-3 and a hidden size per block, 81 configs but 39 networks); the
evaluation is synthetic (a closed form of the network) and records every network it is asked to measure.
"""

from __future__ import annotations

import math

import optuna
import pytest
import torch

from lightning_elastic import SearchSpaceConfig, to_supernet
from lightning_elastic.core.space import SearchSpace
from lightning_elastic.search import study as st
from lightning_elastic.search.claims import claims_of
from lightning_elastic.search.loop import SearchLoop
from lightning_elastic.search.measure import config_key
from lightning_elastic.search.objectives import parse_objectives
from lightning_elastic.search.predictors import features
from tests._models import TinyMLP, TinyMLPAdapter

OBJ = parse_objectives(["val_acc:max", "macs:min"])
NETWORKS = 3 + 9 + 27


def _space() -> SearchSpace:
    return to_supernet(TinyMLP(), SearchSpaceConfig(), adapter=TinyMLPAdapter()).space


class Recorder:
    """A synthetic evaluation of the network a config names (dead dims cannot change it) that logs each call."""

    def __init__(self, space: SearchSpace) -> None:
        self.space, self.seen = space, []

    def costs(self, cfg):
        net = self.space.canonical(cfg)
        live = [v for n, v in net.items() if n != "blocks.depth" and n not in self.space.dead_dims(net)]
        return {"params": float(sum(live) * 10), "macs": float(sum(live) * 1000)}

    def evaluate(self, cfg):
        net = self.space.canonical(cfg)
        self.seen.append(config_key(net))
        live = [v for n, v in net.items() if n != "blocks.depth" and n not in self.space.dead_dims(net)]
        return {"val_acc": sum(math.log1p(v) * (i + 1) for i, v in enumerate(live)) / 10, **self.costs(cfg)}


def _loop(space, strategy, num_evals, storage=None, rec=None):
    rec = rec or Recorder(space)
    sampler = st.make_sampler("nsga2", 0, 8) if strategy == "evolution" else None
    study = st.open_study(storage, "s", space, OBJ, sampler)
    loop = SearchLoop(space, OBJ, {}, rec.evaluate, rec.costs, study, strategy=strategy, num_evals=num_evals,
                      rounds=3, initial=8, predictors=("ridge",), predictor_trials=64, population_size=8,
                      progress=False)
    return loop, rec


def _pair(space):
    """Two raw configs of one network (depth 1: blocks 1 and 2 removed) and their canonical config."""
    a = {"blocks.depth": 1, "blocks.0.hidden": 4, "blocks.1.hidden": 4, "blocks.2.hidden": 8}
    b = {"blocks.depth": 1, "blocks.0.hidden": 4, "blocks.1.hidden": 8, "blocks.2.hidden": 4}
    return a, b, {"blocks.depth": 1, "blocks.0.hidden": 4, "blocks.1.hidden": 16, "blocks.2.hidden": 16}


@pytest.mark.parametrize("strategy", ["random", "linas", "evolution"])
def test_no_network_is_evaluated_twice(strategy):
    loop, rec = _loop(_space(), strategy, num_evals=30)
    loop.run()
    keys = [t.user_attrs["config_key"] for t in st.real_trials(loop.study)]
    assert len(rec.seen) == len(set(rec.seen)) == 30
    assert sorted(keys) == sorted(rec.seen)  # every real trial is keyed by its network


def test_a_search_stops_when_every_network_is_evaluated(tmp_path):
    space = _space()
    loop, rec = _loop(space, "random", num_evals=60, storage=f"sqlite:///{tmp_path}/s.db")
    loop.run()
    assert len(rec.seen) == len(set(rec.seen)) == space.num_networks == NETWORKS
    assert set(rec.seen) == {config_key(c) for c in space.enumerate(canonical=True)}
    # resumed: nothing left to evaluate, nothing evaluated again
    again, rec2 = _loop(space, "random", num_evals=60, storage=f"sqlite:///{tmp_path}/s.db")
    again.run()
    assert rec2.seen == []


def test_claim_keys_and_params_are_canonical():
    space = _space()
    study = st.open_study(None, "m", space, OBJ)
    dists = st.distributions(space)
    a, b, canon = _pair(space)
    trial = st.claim(study, a, dists)
    assert trial is not None and trial.params == canon and trial.user_attrs["config_key"] == config_key(canon)
    assert st.claim(study, b, dists) is None and st.taken_keys(study) == {config_key(canon)}
    # a study opened on a space without the map keys raw, unless `claim` is given the canonical function
    plain = st.open_study(None, "p", SearchSpace(list(space)), OBJ)
    assert st.claim(plain, a, dists) is not None and st.claim(plain, b, dists) is not None
    assert st.claim(plain, {**a, "blocks.1.hidden": 16}, dists, canonical=space.canonical) is not None
    assert st.claim(plain, {**b, "blocks.1.hidden": 8}, dists, canonical=space.canonical) is None


def test_sampler_proposals_are_claimed_by_their_network():
    space = _space()
    study = st.open_study(None, "e", space, OBJ, st.make_sampler("nsga2", 0, 8))
    dists = st.distributions(space)
    a, b, canon = _pair(space)
    study.enqueue_trial(a)  # Optuna's own sampler path (`cfg` None) pops enqueued params
    trial = st.claim(study, None, dists)
    assert trial.params == a and trial.user_attrs["config_key"] == config_key(canon)  # Optuna fixed the params
    st.finish(study, trial, {"val_acc": 0.5, "macs": 10.0}, OBJ, [], [], 0.1)
    study.enqueue_trial(b)
    assert st.claim(study, None, dists) is None
    dup = study.trials[-1]
    assert dup.user_attrs["skipped"] == f"duplicate of trial {trial.number}" and dup.values == [0.5, 10.0]
    assert len(st.real_trials(study)) == 1


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_a_study_with_raw_keys_is_rekeyed_once(tmp_path, storage):
    space = _space()
    url = None if storage == "memory" else f"sqlite:///{tmp_path}/old.db"
    old = st.open_study(url, "old", SearchSpace(list(space)), OBJ)  # written before canonical configs
    dists = st.distributions(space)
    a, b, canon = _pair(space)
    full = space.max_config()
    for cfg in (a, b, full):
        st.finish(old, st.claim(old, cfg, dists), {"val_acc": 0.5, "macs": 1.0}, OBJ, [], [], 0.1)
    assert len(st.taken_keys(old)) == 3 and "config_keys" not in old.user_attrs
    if url is None:
        new = old
        new.__dict__[st._CANONICAL] = space.canonical
        st._rekey_claims(new, space.canonical)  # what open_study does when it reopens a stored study
    else:
        new = st.open_study(url, "old", space, OBJ)
    assert st.taken_keys(new) == {config_key(canon), config_key(full)}
    assert new.user_attrs["config_keys"] == "canonical"
    assert st.sync_claims(new) == 0  # the raw-keyed trials map onto the existing claims
    assert st.claim(new, {**a, "blocks.2.hidden": 4}, dists) is None
    if url is not None:  # stored: later opens leave the claims alone
        assert claims_of(st.open_study(url, "old", space, OBJ)).keys(new._study_id) == st.taken_keys(new)


def test_rekey_moves_or_drops_a_claim():
    study = optuna.create_study()
    claims = claims_of(study)
    sid = study._study_id
    claims.insert(sid, "a", 0)
    claims.insert(sid, "b", 1)
    assert claims.rekey(sid, "a", "c") and claims.keys(sid) == {"b", "c"} and claims.owner(sid, "c") == 0
    assert not claims.rekey(sid, "b", "c") and claims.keys(sid) == {"c"}
    assert not claims.rekey(sid, "zz", "y") and claims.keys(sid) == {"c"}


def test_features_of_one_network_are_one_vector():
    space = _space()
    a, b, canon = _pair(space)
    costs = {"params": 1.0, "macs": 1.0}
    # the loop encodes canonical configs (SearchLoop._data / _predictor_search): one network, one predictor input
    assert features(space, space.canonical(a), costs) == features(space, space.canonical(b), costs) == \
        features(space, canon, costs)
    assert features(space, a, costs) != features(space, b, costs)  # the raw configs do differ
    gen = torch.Generator().manual_seed(0)
    assert all(space.is_canonical(space.sample(gen)) for _ in range(20))
