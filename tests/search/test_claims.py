"""Claims are atomic across processes: two workers racing for the same configs never both get one."""

from __future__ import annotations

import multiprocessing as mp
import sys

import optuna
import pytest

from lightning_elastic.search import study as st
from lightning_elastic.search.claims import TABLE, claims_of
from lightning_elastic.search.objectives import parse_objectives
from tests.search import _synthetic as syn

OBJECTIVES = parse_objectives(["val_acc:max", "macs:min"])


def _configs(n: int) -> list[dict[str, int]]:
    import torch

    gen, space, out, seen = torch.Generator().manual_seed(0), syn.space(), [], set()
    while len(out) < n:
        cfg = space.sample(gen)
        key = st.config_key(cfg)
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def _race(storage: str, start, results) -> None:
    try:
        study = st.open_study(storage, "race", syn.space(), OBJECTIVES)
        dists = st.distributions(syn.space())
        start.wait()
        won = []
        for cfg in _configs(30):
            trial = st.claim(study, cfg, dists, taken=set())  # taken=set(): skip the cheap pre-check, race the INSERT
            if trial is not None:
                won.append(trial.user_attrs["config_key"])
        results.put(("ok", won))
    except BaseException as err:  # noqa: BLE001 - report any failure to the parent
        results.put(("error", repr(err)))


@pytest.mark.skipif(sys.platform == "win32", reason="fork start method")
def test_two_processes_claiming_the_same_configs_split_them(tmp_path):
    storage = f"sqlite:///{tmp_path}/race.db"
    st.open_study(storage, "race", syn.space(), OBJECTIVES)  # create schema and study before the race
    ctx = mp.get_context("fork")
    start, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(storage, start, results)) for _ in range(2)]
    for p in procs:
        p.start()
    outs = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert all(kind == "ok" for kind, _ in outs), outs
    won = [k for _, keys in outs for k in keys]
    assert len(won) == len(set(won)) == 30
    study = optuna.load_study(study_name="race", storage=storage)
    running = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.RUNNING]
    assert sorted(t.user_attrs["config_key"] for t in running) == sorted(won)  # the losers' trials yielded


def test_budget_and_release_in_memory():
    study = st.open_study(None, "mem", syn.space(), OBJECTIVES)
    dists = st.distributions(syn.space())
    a, b, c = _configs(3)
    ta = st.claim(study, a, dists, budget=2)
    assert ta is not None and st.claim(study, a, dists, budget=2) is None
    tb = st.claim(study, b, dists, budget=2)
    assert tb is not None and st.claim(study, c, dists, budget=2) is None  # over budget
    assert st.taken_keys(study) == {st.config_key(a), st.config_key(b)}
    st.fail(study, tb, RuntimeError("boom"))  # a failed evaluation frees its claim (and the budget)
    assert st.taken_keys(study) == {st.config_key(a)}
    assert st.claim(study, c, dists, budget=2) is not None


def test_studies_written_before_claims_are_synced(tmp_path):
    storage = f"sqlite:///{tmp_path}/old.db"
    study = st.open_study(storage, "old", syn.space(), OBJECTIVES)
    dists = st.distributions(syn.space())
    cfg = _configs(1)[0]
    trial = st.claim(study, cfg, dists)
    st.finish(study, trial, syn.evaluate(cfg), OBJECTIVES, [], [], 0.0)
    claims = claims_of(study)
    with claims.engine.begin() as conn:  # as a study from an older version: trials but no claims
        conn.execute(claims.table.delete())
    assert st.taken_keys(study) == set()
    assert st.sync_claims(study) == 1 and st.taken_keys(study) == {st.config_key(cfg)}
    assert st.claim(study, cfg, dists) is None
    assert TABLE == "lightning_elastic_claims"
