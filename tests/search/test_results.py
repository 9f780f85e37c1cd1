"""The front is judged under the current constraints, from the stored measurements."""

from __future__ import annotations

from lightning_elastic.search.results import collect, pareto_front
from tests.search import _synthetic as syn
from tests.search.test_loop import OBJ, make_loop


def test_resumed_search_with_other_constraints_recomputes_feasibility(tmp_path):
    loose = {"macs": 1e12}
    loop = make_loop(tmp_path, "random", num_evals=12, constraints=loose)
    loop.run()
    before = collect(loop.study, syn.space(), OBJ, loose)
    assert len(before) == 12 and all(e.feasible for e in before)
    macs = sorted(e.values["macs"] for e in before)
    tight = {"macs": macs[5]}  # the 6 cheapest (and any tied with the 6th) meet it
    # resume the same study (same storage) under the tighter bound: nothing new to evaluate, new verdicts
    resumed = make_loop(tmp_path, "random", num_evals=12, constraints=tight)
    resumed.run()
    after = collect(resumed.study, syn.space(), OBJ, tight)
    assert [e.feasible for e in after] == [e.values["macs"] <= macs[5] for e in after]
    assert 6 <= sum(e.feasible for e in after) == sum(m <= macs[5] for m in macs) < 12
    assert all(e.values["macs"] <= macs[5] for e in pareto_front(after, OBJ))
    # and back: a bound relaxed on resume makes the stored "infeasible" verdicts feasible again
    assert all(e.feasible for e in collect(resumed.study, syn.space(), OBJ, loose))


def test_a_trial_without_the_constrained_value_is_infeasible(tmp_path):
    loop = make_loop(None, "random", num_evals=4)
    loop.run()
    evals = collect(loop.study, syn.space(), OBJ, {"latency_ms": 5.0})  # never measured
    assert evals and not any(e.feasible for e in evals)
