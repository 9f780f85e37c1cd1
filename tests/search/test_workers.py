from __future__ import annotations

import multiprocessing as mp
import sys

import optuna
import pytest
from optuna.trial import TrialState

from lightning_elastic.search import study as st
from tests.search._worker import work


def _run(storage, num_evals, strategy, results):
    try:
        results.put(("ok", work(storage, num_evals, strategy)))
    except BaseException as err:  # noqa: BLE001 - report any failure to the parent
        results.put(("error", repr(err)))


@pytest.mark.skipif(sys.platform == "win32", reason="fork start method")
@pytest.mark.parametrize("strategy", ["linas", "evolution"])
def test_two_workers_share_one_study_without_duplicates(tmp_path, strategy):
    """Two OS processes, each with its own storage connection, share one SQLite study through its RDB URL.

    Forked rather than spawned: the children inherit the imported modules, which saves a fresh interpreter's
    ~10 s of imports each; everything the search shares goes through the database.
    """
    storage = f"sqlite:///{tmp_path}/shared.db"
    num_evals = 18
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_run, args=(storage, num_evals, strategy, results)) for _ in range(2)]
    for p in procs:
        p.start()
    outs = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(kind == "ok" for kind, _ in outs), outs
    per_worker = [n for _, n in outs]
    study = optuna.load_study(study_name="shared", storage=storage)
    keys = [t.user_attrs["config_key"] for t in st.real_trials(study)]
    # no duplicates and exactly the requested number: claims are atomic INSERTs (search/claims.py)
    assert len(set(keys)) == len(keys) == num_evals, keys
    assert sum(per_worker) == len(keys) and min(per_worker) > 0, per_worker
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL))
