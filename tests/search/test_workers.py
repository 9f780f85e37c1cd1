from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lightning_elastic.search import study as st

WORKER = Path(__file__).with_name("_worker.py")


@pytest.mark.slow
def test_two_workers_share_one_study_without_duplicates(tmp_path, strategy="linas"):
    storage = f"sqlite:///{tmp_path}/shared.db"
    num_evals = 18
    procs = [subprocess.Popen([sys.executable, str(WORKER), storage, str(num_evals), strategy],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    per_worker = [int(out.split("evaluated ")[-1]) for out, _ in outs]
    study = optuna.load_study(study_name="shared", storage=storage)
    done = st.real_trials(study)
    keys = [t.user_attrs["config_key"] for t in done]
    assert len(keys) == num_evals and len(set(keys)) == num_evals
    assert sum(per_worker) == num_evals and min(per_worker) > 0, per_worker
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL))
