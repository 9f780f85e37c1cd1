"""One search worker on the synthetic space (used by test_workers.py, forked, and runnable as a script).

``python _worker.py STORAGE NUM_EVALS STRATEGY`` runs one worker in a fresh interpreter.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning_elastic.search import study as st  # noqa: E402
from lightning_elastic.search.loop import SearchLoop  # noqa: E402
from lightning_elastic.search.objectives import parse_objectives  # noqa: E402
from tests.search import _synthetic as syn  # noqa: E402


def slow_evaluate(cfg):
    time.sleep(0.05)  # long enough for the two workers to interleave
    return syn.evaluate(cfg)


def work(storage: str, num_evals: int, strategy: str) -> int:
    """Run one worker against the shared study; returns how many configs this worker evaluated."""
    objectives = parse_objectives(["val_acc:max", "macs:min"])
    space = syn.space()
    sampler = st.make_sampler("nsga2", 0, 8) if strategy == "evolution" else None  # evolution: the study proposes
    study = st.open_study(storage, "shared", space, objectives, sampler)
    # same seed in both workers: they propose the same configs, the worst case for duplicates
    loop = SearchLoop(space, objectives, {}, slow_evaluate, syn.costs, study, strategy=strategy, num_evals=num_evals,
                      rounds=3, initial=6, predictors=("ridge",), predictor_trials=64, population_size=8, seed=0,
                      progress=False)
    loop.run()
    return loop.num_evaluated


if __name__ == "__main__":
    print(f"evaluated {work(sys.argv[1], int(sys.argv[2]), sys.argv[3])}")
