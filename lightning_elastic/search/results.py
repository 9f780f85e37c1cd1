"""Results of a search: the evaluation table, the Pareto front, files and a rich table.

Files written to ``output_dir``: ``evaluations.csv`` (every real evaluation), ``pareto.csv`` (the feasible
non-dominated ones), ``pareto.png`` (the first objective vs each other objective and each measured cost, front
highlighted), ``summary.json`` and ``subnets/<name>/`` (exported top subnets + ``search_result.json``: trial, config, measurements).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from lightning_elastic.core.space import ArchConfig, SearchSpace
from lightning_elastic.search import study as st
from lightning_elastic.search.loop import non_dominated_ranks
from lightning_elastic.search.objectives import COSTS, Objective, violations


@dataclass
class Evaluation:
    """One real evaluation: trial number, config, measured values, feasibility."""

    number: int
    config: ArchConfig
    values: dict[str, float]
    violation: float
    seconds: float

    @property
    def feasible(self) -> bool:
        return self.violation <= 0


@dataclass
class SearchResult:
    """What a search returns: every evaluation, the front, the exported subnets and the summary.

    Example:
        >>> result = run_search(model, datamodule=dm, objectives=("val_acc:max", "macs:min"))  # doctest: +SKIP
        >>> result.best["config"], result.pareto[0].values  # doctest: +SKIP
    """

    objectives: list[Objective]
    evaluations: list[Evaluation]
    pareto: list[Evaluation]
    output_dir: Path | None = None
    exported: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> dict[str, Any] | None:
        """The front's best subnet by the first objective (the metric)."""
        if not self.pareto:
            return None
        e = self.pareto[0]
        return {"number": e.number, "config": e.config, **e.values}


def collect(study: optuna.Study, space: SearchSpace, objectives: Sequence[Objective],
            constraints: Mapping[str, float]) -> list[Evaluation]:
    """Every real evaluation of ``study``, its feasibility judged under ``constraints`` (the current ones).

    Feasibility is recomputed from the stored measurements rather than read from the trials: a search resumed with
    other constraints must not keep the old verdicts. A trial that lacks a constrained value (measured by a search
    that did not ask for it) is infeasible: nothing says it meets the bound.
    """
    out = []
    for t in st.real_trials(study):
        measured = dict(t.user_attrs.get("measured", {}))
        if all(name in measured for name in constraints):
            violation = max([0.0, *violations(measured, constraints, objectives)])
        else:
            violation = float("inf")
        out.append(Evaluation(t.number, space.canonical({**space.max_config(), **t.params}), measured, violation,
                              float(t.user_attrs.get("eval_seconds", 0.0))))
    return out


def pareto_front(evals: Sequence[Evaluation], objectives: Sequence[Objective]) -> list[Evaluation]:
    """Feasible non-dominated evaluations, best first by the first objective."""
    feasible = [e for e in evals if e.feasible]
    if not feasible:
        return []
    pts = np.array([[(-1 if o.direction == "max" else 1) * e.values[o.name] for o in objectives] for e in feasible])
    ranks = non_dominated_ranks(pts)
    front = [e for e, r in zip(feasible, ranks) if r == 0]
    first = objectives[0]
    return sorted(front, key=lambda e: e.values[first.name], reverse=first.direction == "max")


def pick_top(front: Sequence[Evaluation], k: int) -> list[Evaluation]:
    """``k`` subnets spread along the front, always including its best by the first objective."""
    if k <= 0 or not front:
        return []
    if len(front) <= k:
        return list(front)
    idx = np.unique(np.linspace(0, len(front) - 1, k).round().astype(int))
    return [front[i] for i in idx]


def _columns(evals: Sequence[Evaluation], space: SearchSpace) -> list[str]:
    values = list(dict.fromkeys(k for e in evals for k in e.values))
    return ["trial", *values, "feasible", "eval_seconds", *space.names()]


def write_csv(path: Path, evals: Sequence[Evaluation], space: SearchSpace) -> None:
    cols = _columns(evals, space)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for e in evals:
            row = {"trial": e.number, **e.values, "feasible": e.feasible, "eval_seconds": round(e.seconds, 4),
                   **e.config}
            w.writerow([row.get(c, "") for c in cols])


def plot_front(path: Path, evals: Sequence[Evaluation], front: Sequence[Evaluation],
               objectives: Sequence[Objective]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = objectives[0]
    # the other objectives, then every measured cost (params and MACs always are): accuracy vs each cost
    names = [o.name for o in objectives[1:]]
    names += [c for c in COSTS if c not in names and all(c in e.values for e in evals)]
    others = [Objective(n, "min" if n in COSTS else next(o.direction for o in objectives if o.name == n))
              for n in names] or [metric]
    fig, axes = plt.subplots(1, len(others), figsize=(5 * len(others), 4), squeeze=False)
    for ax, cost in zip(axes[0], others):
        xs = [e.values[cost.name] for e in evals]
        ax.scatter(xs, [e.values[metric.name] for e in evals], s=12, c=["tab:blue" if e.feasible else "lightgray"
                                                                       for e in evals], label="evaluated")
        f = sorted(front, key=lambda e: e.values[cost.name])
        ax.plot([e.values[cost.name] for e in f], [e.values[metric.name] for e in f], "o-", c="tab:red",
                label="Pareto front")
        ax.set_xlabel(f"{cost.name} ({cost.direction})")
        ax.set_ylabel(f"{metric.name} ({metric.direction})")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(front: Sequence[Evaluation], objectives: Sequence[Objective], limit: int = 15) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"SubnetSearch: Pareto front ({len(front)} subnets)")
    table.add_column("trial", justify="right")
    for o in objectives:
        table.add_column(str(o), justify="right")
    for e in front[:limit]:
        table.add_row(str(e.number), *[f"{e.values[o.name]:.4g}" for o in objectives])
    Console().print(table)


def write_outputs(output_dir: Path, space: SearchSpace, objectives: Sequence[Objective],
                  evals: Sequence[Evaluation], front: Sequence[Evaluation], summary: Mapping[str, Any],
                  export: Any = None, export_top: int = 3) -> dict[str, Path]:
    """Write every output file; ``export(cfg, directory)`` saves a subnet (skipped when None)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_csv(output_dir / "evaluations.csv", evals, space)
    write_csv(output_dir / "pareto.csv", front, space)
    if evals:
        plot_front(output_dir / "pareto.png", evals, front, objectives)
    exported: dict[str, Path] = {}
    for i, e in enumerate(pick_top(front, export_top)):
        name = f"{i:02d}-trial{e.number}"
        directory = output_dir / "subnets" / name
        if export is not None:
            export(e.config, directory)
        directory.mkdir(parents=True, exist_ok=True)
        result = {"trial": e.number, "config": e.config, "values": e.values}
        (directory / "search_result.json").write_text(json.dumps(result, indent=2))
        exported[name] = directory
    best = [{"name": n, **json.loads((p / "search_result.json").read_text())} for n, p in exported.items()]
    full = {**summary, "best_subnets": best,
            "num_evaluations": len(evals), "num_feasible": sum(e.feasible for e in evals), "pareto_size": len(front)}
    (output_dir / "summary.json").write_text(json.dumps(full, indent=2, default=str))
    return exported
