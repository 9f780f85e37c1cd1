"""The search loop: LINAS (predictor-guided), random search and evolution (NSGA-II on real evaluations).

LINAS (Cummings et al., 2022): evaluate an initial random sample for real, fit predictors on it, run an Optuna
multi-objective sampler on the *predictors* (cheap), evaluate the predicted Pareto candidates not seen yet for real,
refit, repeat. Exact costs (params, MACs) are counted, not predicted, so constraints on them are exact.

The loop only needs ``evaluate(cfg) -> {name: value}`` and ``costs(cfg) -> {"params", "macs"}``, so benchmarks can
drive it with a table of cached measurements.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_elastic.core.errors import ConfigError, ElasticError
from lightning_elastic.core.space import ArchConfig, SearchSpace
from lightning_elastic.search import study as st
from lightning_elastic.search.latency import MeasurementError
from lightning_elastic.search.measure import config_key
from lightning_elastic.search.objectives import EXACT_COSTS, Objective, violations
from lightning_elastic.search.predictors import Predictor, PredictorQuality, base_columns, features, kendall_tau
from lightning_elastic.search.settings import STRATEGIES, SearchSettings

__all__ = ["STRATEGIES", "SearchLoop", "non_dominated_ranks"]

#: consecutive failed measurements (a latency backend that fails every subnet) before the search stops
MAX_CONSECUTIVE_FAILURES = 10


def non_dominated_ranks(points: np.ndarray) -> np.ndarray:
    """Pareto rank (0 = front) of each row; all columns are minimised."""
    n = len(points)
    ranks = np.full(n, -1)
    remaining = np.arange(n)
    rank = 0
    while len(remaining):
        p = points[remaining]
        dominated = np.zeros(len(remaining), dtype=bool)
        for i in range(len(remaining)):
            le = (p <= p[i]).all(axis=1) & (p < p[i]).any(axis=1)
            dominated[i] = le.any()
        ranks[remaining[~dominated]] = rank
        remaining = remaining[dominated]
        rank += 1
    return ranks


class SearchLoop:
    """Runs one worker of a search against a persistent study until ``num_evals`` configs are taken.

    Args:
        space: the supernet's search space.
        objectives / constraints: parsed objectives and ``{name: bound}``.
        evaluate: real measurement of a config; must return every objective and constraint name.
        costs: exact cheap costs (``params``, ``macs``) of a config.
        study: the persistent study (see :mod:`lightning_elastic.search.study`).
        settings: the search's :class:`SearchSettings` (strategy, num_evals, rounds, initial, sampler, predictors,
            predictor_trials, population_size, seed, progress); or pass those as keyword ``options``.
        rank / world_size: this process among those searching the same study together: ranks draw different
            random configs and start the predicted candidates at different points; only rank 0 shows progress.
        on_round: called after each LINAS predictor fit with ``(round, {metric_name: value})`` (predictor quality),
            e.g. to send it to the Trainer's loggers.
    """

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], constraints: Mapping[str, float],
                 evaluate: Callable[[ArchConfig], Mapping[str, float]],
                 costs: Callable[[ArchConfig], Mapping[str, float]], study: optuna.Study,
                 settings: SearchSettings | None = None, *, rank: int = 0, world_size: int = 1,
                 on_round: Callable[[int, dict[str, float]], None] | None = None, **options: Any) -> None:
        if settings is None:
            settings = SearchSettings.from_options(None, objectives=[str(o) for o in objectives],
                                                   constraints=dict(constraints), **options)
        elif options:
            raise ConfigError(f"`settings` was given together with options {sorted(options)}; allowed: one of the "
                              "two. HINT: SearchLoop(..., settings=s) or SearchLoop(..., num_evals=50).")
        self.settings = settings
        self.space = space
        self.objectives = list(objectives)
        self.constraints = dict(constraints)
        self.evaluate = evaluate
        self.costs = costs
        self.study = study
        self.strategy = settings.strategy
        self.num_evals = num_evals = settings.num_evals
        self.rounds = settings.rounds
        self.initial = min(num_evals, settings.initial if settings.initial is not None else max(8, num_evals // 5))
        self.sampler = settings.sampler
        self.predictor_names = list(settings.predictors)
        self.predictor_trials = settings.predictor_trials
        self.population_size = settings.population_size
        self.seed = seed = settings.seed
        self.rank, self.world_size = rank, world_size
        self.progress = settings.progress and rank == 0
        self.on_round = on_round
        self.dists = st.distributions(space)
        names = [o.name for o in self.objectives] + list(self.constraints)
        self.predicted = list(dict.fromkeys(n for n in names if n not in EXACT_COSTS))
        self.quality: dict[str, PredictorQuality] = {}
        self.timings = {"evaluate_s": 0.0, "predictor_fit_s": 0.0, "predictor_search_s": 0.0, "total_s": 0.0}
        self.num_evaluated = 0
        self._queue: list[ArchConfig] = []
        # predictions made for proposed configs before they were measured: the truly held-out predictor quality
        self._predicted_for: dict[str, dict[str, float]] = {}
        self._heldout: list[tuple[dict[str, float], dict[str, float]]] = []
        # ranks draw different random configs (rank 0 draws what a single process draws)
        self._gen = torch.Generator().manual_seed(seed + 7919 * rank)
        self._round = 0
        # configs whose measurement failed in this run: {key: (trial number, reason)}; not proposed again here
        self.failed: dict[str, tuple[int, str]] = {}
        self._failures_in_a_row = 0

    # -- driving -------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Evaluate configs until the study holds ``num_evals`` real evaluations (or the space is exhausted)."""
        start = time.perf_counter()
        st.reap_stale(self.study)
        st.sync_claims(self.study)
        bar = _Progress(self.num_evals, st.num_taken(self.study), self.progress)
        misses = 0
        try:
            with bar:
                while True:
                    taken = st.taken_keys(self.study)
                    bar.update(len(taken))
                    if len(taken) >= self.num_evals:
                        break
                    tried = taken | set(self.failed)  # a failed config released its claim; not again in this run
                    cfg = self._next_config(tried)
                    if cfg is None and self.strategy != "evolution":
                        rank_zero_info(f"SubnetSearch: every subnet of the space is evaluated or failed "
                                       f"({len(tried)} of {self.space.num_networks} distinct networks).")
                        break
                    trial = st.claim(self.study, cfg, self.dists, tried, self.num_evals)
                    if trial is None:
                        misses += 1
                        if misses > 50 * max(1, self.population_size):
                            rank_zero_info("SubnetSearch: the sampler only proposes evaluated subnets; stopping.")
                            break
                        continue
                    misses = 0
                    self._evaluate_trial(trial)
        finally:
            self.timings["total_s"] += time.perf_counter() - start

    def _evaluate_trial(self, trial: optuna.Trial) -> None:
        cfg = self.space.canonical({**self.space.max_config(), **trial.params})
        t0 = time.perf_counter()
        try:
            measured = dict(self.evaluate(cfg))
            missing = [n for n in [o.name for o in self.objectives] + list(self.constraints) if n not in measured]
            if missing:
                raise ElasticError(f"the evaluation of {cfg} returned no value for {missing}.")
        except MeasurementError as err:
            self._measurement_failed(trial, cfg, err)
            return
        except BaseException as err:
            # the crashed trial is marked FAIL; every finished one is already in the study
            st.fail(self.study, trial, err)
            raise
        self._failures_in_a_row = 0
        seconds = time.perf_counter() - t0
        self.timings["evaluate_s"] += seconds
        predicted = self._predicted_for.pop(config_key(cfg), None)
        if predicted is not None:
            self._heldout.append((predicted, measured))
        if st.finish(self.study, trial, measured, self.objectives, list(self.constraints),
                     violations(measured, self.constraints, self.objectives), seconds):
            self.num_evaluated += 1

    def _measurement_failed(self, trial: optuna.Trial, cfg: ArchConfig, err: MeasurementError) -> None:
        """One subnet could not be measured: its trial FAILs with the reason (and what was measured), the search
        goes on; many failures in a row stop it, since then every subnet would fail."""
        if err.measured:
            trial.set_user_attr("measured_before_failure", {k: float(v) for k, v in err.measured.items()})
        st.fail(self.study, trial, err)
        self.failed[config_key(cfg)] = (trial.number, str(err))
        self._failures_in_a_row += 1
        rank_zero_warn(f"SubnetSearch: trial {trial.number} failed and the search goes on: {err}")
        if self._failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
            raise st.SearchError(
                f"the last {self._failures_in_a_row} evaluations all failed; the last one: {err} Every finished "
                "evaluation is kept in the study. HINT: fix what the message names, then rerun the same search "
                "to resume it."
            ) from err

    def _next_config(self, taken: set[str]) -> ArchConfig | None:
        if self.strategy == "evolution":
            return None  # the study's own sampler proposes
        if self.strategy == "linas" and len(taken) >= self.initial:
            while self._queue and config_key(self._queue[0]) in taken:
                self._queue.pop(0)
            if not self._queue:
                self._queue = self._spread(self.propose(self._batch_size(), taken))
            if self._queue:
                return self._queue.pop(0)
        return self._random_config(taken)

    def _spread(self, queue: list[ArchConfig]) -> list[ArchConfig]:
        """Rank r starts at the r-th share of the (shared) predicted candidates, so ranks do not race for one."""
        k = len(queue) * self.rank // max(1, self.world_size)
        return queue[k:] + queue[:k]

    def _batch_size(self) -> int:
        return max(1, math.ceil((self.num_evals - self.initial) / max(1, self.rounds)))

    def _random_config(self, taken: set[str]) -> ArchConfig | None:
        if len(taken) >= self.space.num_networks:
            return None
        # extremes first: they anchor both ends of the front
        for cfg in (self.space.max_config(), self.space.min_config()):
            if config_key(cfg) not in taken:
                return cfg
        for _ in range(10_000):
            cfg = self.space.sample(self._gen)
            if config_key(cfg) not in taken:
                return cfg
        return None

    # -- LINAS -----------------------------------------------------------------------------------------------
    def _data(self) -> tuple[list[ArchConfig], dict[str, list[float]]]:
        cfgs, values = [], {n: [] for n in self.predicted}
        for t in st.real_trials(self.study):
            measured = t.user_attrs.get("measured", {})
            if all(n in measured for n in self.predicted):
                cfgs.append(self.space.canonical({**self.space.max_config(), **t.params}))  # evolution: raw
                for n in self.predicted:
                    values[n].append(measured[n])
        return cfgs, values

    def fit_predictors(self) -> dict[str, Predictor]:
        """Fit one cross-validated predictor per predicted quantity on every real evaluation so far."""
        t0 = time.perf_counter()
        cfgs, values = self._data()
        X = [features(self.space, c, self.costs(c)) for c in cfgs]
        out = {}
        for n in self.predicted:
            out[n] = Predictor(n, self.predictor_names, seed=self.seed,
                               base_columns=base_columns(self.space)).fit(X, values[n])
            self.quality[n] = out[n].quality
        self.timings["predictor_fit_s"] += time.perf_counter() - t0
        return out

    def propose(self, batch: int, taken: set[str] | None = None) -> list[ArchConfig]:
        """Predicted Pareto candidates not evaluated yet, at most ``batch`` of them, spread along the front."""
        self._round += 1
        predictors = self.fit_predictors()
        heldout = self.heldout_quality()
        q = ", ".join(f"{n}: {p.quality.model} cv_tau={p.quality.kendall_tau:.3f} cv_mae={p.quality.mae:.4g}"
                      + (f" heldout_tau={heldout[n]['kendall_tau']:.3f}" if n in heldout else "")
                      for n, p in predictors.items())
        num = next(iter(predictors.values())).quality.num_samples if predictors else 0
        rank_zero_info(f"SubnetSearch round {self._round}: predictors fit on {num} subnets ({q})")
        if self.on_round is not None:
            self.on_round(self._round, self._quality_metrics(heldout))
        t0 = time.perf_counter()
        table = self._predictor_search(predictors)
        self.timings["predictor_search_s"] += time.perf_counter() - t0
        taken = st.taken_keys(self.study) if taken is None else taken
        rows = [(k, v) for k, v in table.items() if k not in taken]
        if not rows:
            return []
        cfgs = [r[1][0] for r in rows]
        vals = np.array([r[1][1] for r in rows])  # minimisation form
        viol = np.array([max([0.0, *r[1][2]]) for r in rows])
        feasible = viol <= 0
        order: list[int] = []
        if feasible.any():
            idx = np.flatnonzero(feasible)
            ranks = non_dominated_ranks(vals[idx])
            for r in range(ranks.max() + 1):
                front = idx[ranks == r]
                need = batch - len(order)
                if need <= 0:
                    break
                front = front[np.argsort(vals[front, 0])]
                if len(front) > need:
                    front = front[np.unique(np.linspace(0, len(front) - 1, need).round().astype(int))]
                order.extend(front.tolist())
        if not order:  # nothing predicted feasible: the least violating candidates show where the boundary is
            order = np.argsort(viol)[:batch].tolist()
        chosen = [cfgs[i] for i in order]
        for cfg, predicted in zip(chosen, self._predict(predictors, chosen)):
            self._predicted_for[config_key(cfg)] = {n: predicted[n] for n in self.predicted}
        return chosen

    def _predictor_search(self, predictors: Mapping[str, Predictor]) -> dict[str, tuple]:
        """Run the Optuna sampler on the predictors; returns ``{key: (cfg, min-form values, violations)}``."""
        sampler = st.make_sampler(self.sampler, self.seed + self._round, self.population_size)
        study = optuna.create_study(directions=[o.optuna_direction for o in self.objectives], sampler=sampler)
        table: dict[str, tuple] = {}
        sequential = self.sampler in ("tpe", "gp")
        step = 1 if sequential else self.population_size
        trials = self.predictor_trials if self.sampler != "gp" else min(self.predictor_trials, 60)
        for _ in range(0, trials, step):
            asked = [study.ask(self.dists) for _ in range(step)]
            cfgs = [self.space.canonical({**self.space.max_config(), **t.params}) for t in asked]
            values = self._predict(predictors, cfgs)
            for t, cfg, vals in zip(asked, cfgs, values):
                cons = violations(vals, self.constraints, self.objectives)
                st.set_constraints(t, list(self.constraints), cons)
                study.tell(t, [vals[o.name] for o in self.objectives])
                sign = [1.0 if o.direction == "min" else -1.0 for o in self.objectives]
                table[config_key(cfg)] = (cfg, [s * vals[o.name] for s, o in zip(sign, self.objectives)], cons)
        return table

    def _predict(self, predictors: Mapping[str, Predictor], cfgs: list[ArchConfig]) -> list[dict[str, float]]:
        costs = [self.costs(c) for c in cfgs]
        X = [features(self.space, c, k) for c, k in zip(cfgs, costs)]
        preds = {n: p.predict(X) for n, p in predictors.items()}
        return [{**costs[i], **{n: float(preds[n][i]) for n in preds}} for i in range(len(cfgs))]

    def heldout_quality(self) -> dict[str, dict[str, float]]:
        """Kendall tau and MAE of the predictions made for proposed subnets vs their later real measurements.

        Cross-validation scores subnets drawn like the training data; these subnets were chosen by the sampler near
        the predicted front and never seen by the predictor that scored them, so this is the quality that matters.
        """
        out = {}
        for n in self.predicted:
            pairs = [(p[n], m[n]) for p, m in self._heldout if n in p and n in m]
            if pairs:
                pred, real = (np.array(v, dtype=float) for v in zip(*pairs))
                out[n] = {"kendall_tau": kendall_tau(real, pred), "mae": float(np.abs(pred - real).mean()),
                          "num_samples": len(pairs)}
        return out

    def _quality_metrics(self, heldout: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for n, q in self.quality.items():
            metrics[f"{n}_cv_kendall_tau"], metrics[f"{n}_cv_mae"] = q.kendall_tau, q.mae
        for n, q in heldout.items():
            metrics[f"{n}_heldout_kendall_tau"], metrics[f"{n}_heldout_mae"] = q["kendall_tau"], q["mae"]
        return {k: float(v) for k, v in metrics.items() if not math.isnan(v)}

    def summary(self) -> dict[str, Any]:
        heldout = self.heldout_quality()
        return {"strategy": self.strategy, "sampler": self.sampler, "rounds_run": self._round,
                "initial": self.initial, "evaluated_by_this_worker": self.num_evaluated,
                "predictors": {n: {**q.to_dict(), "heldout": heldout.get(n)} for n, q in self.quality.items()},
                "predictor_metrics": self._quality_metrics(heldout),
                "failed_evaluations": [{"trial": n, "config_key": k, "error": e} for k, (n, e) in self.failed.items()],
                "timings": {k: round(v, 4) for k, v in self.timings.items()}}


class _Progress:
    """A rich progress bar over the study's taken evaluations (shared by all workers)."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self.enabled = enabled
        self.total, self.done = total, done
        self._bar = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("SubnetSearch"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task("evaluations", total=self.total, completed=self.done)
        return self

    def update(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=min(done, self.total))

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
