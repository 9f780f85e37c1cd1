"""The persistent Optuna study behind a search: one trial per real evaluation.

Several workers may share a study through one RDB URL. A worker *claims* a config with an atomic INSERT into the
claims table (:mod:`lightning_elastic.search.claims`); a worker whose claim fails, or whose claim ranks past the
budget, yields its trial (PRUNED, user attr ``skipped``) before anything is measured. A claimed config stays taken
while its trial runs and after it completes, so a resumed search never re-evaluates a finished one; a FAILed trial
releases its claim. RUNNING trials left by a dead process on this host are marked FAIL on start.

Claims key on the *canonical* config (``SearchSpace.canonical``: the dims of blocks a config's depths remove at their
max), so configs of one network share one claim, whoever proposed them (the loop, or the study's own sampler). The
function comes from the space given to :func:`open_study` and travels with the study object; :func:`claim` also
takes it explicitly.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.distributions import CategoricalDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from lightning_elastic.core.errors import ConfigError, ElasticError
from lightning_elastic.core.space import ArchConfig, SearchSpace
from lightning_elastic.search import trial_writes as _fast
from lightning_elastic.search.claims import claims_of
from lightning_elastic.search.measure import config_key
from lightning_elastic.search.objectives import Objective

SAMPLERS = ("nsga2", "nsga3", "tpe", "gp")
#: ``(cfg) -> canonical cfg``: configs of one network map to one config
Canonical = Callable[[Mapping[str, int]], ArchConfig]
#: where :func:`open_study` leaves the canonical function on the study object
_CANONICAL = "_lightning_elastic_canonical"


def _worker() -> str:
    # per call, not at import: a forked worker must not carry its parent's pid
    return f"{socket.gethostname()}:{os.getpid()}"


class SearchError(ElasticError):
    """A search cannot start or continue (another space's study, an unsatisfiable constraint …)."""


def distributions(space: SearchSpace) -> dict[str, CategoricalDistribution]:
    """One categorical distribution over each elastic dim's choices."""
    return {d.name: CategoricalDistribution(list(d.choices)) for d in space.elastic_dims}


def make_sampler(name: str, seed: int | None, population_size: int = 32):
    """An Optuna sampler by name (``nsga2``, ``nsga3``, ``tpe``, ``gp``).

    Constraints reach every sampler through ``trial.set_constraint`` (Optuna >= 5), not ``constraints_func``.
    """
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population_size, seed=seed)
    if name == "nsga3":
        return optuna.samplers.NSGAIIISampler(population_size=population_size, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise ConfigError(f"`sampler` got {name!r}; allowed: {list(SAMPLERS)}. HINT: sampler='nsga2'.")


def set_constraints(trial: optuna.Trial, names: Sequence[str], values: Sequence[float]) -> None:
    for name, value in zip(names, values):
        trial.set_constraint(name, float(value))


def constraint_values(trial: optuna.trial.FrozenTrial) -> list[float]:
    return [float(v) for v in trial.constraints.values()]


def default_storage(output_dir: str | Path) -> str:
    path = Path(output_dir).resolve() / "search.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def make_storage(storage: str | None) -> optuna.storages.BaseStorage | None:
    """An RDB storage; SQLite files get WAL journaling (readers never block the writer, cheap commits)."""
    if storage is None:
        return None  # in memory: benchmarks and tests
    if storage.startswith("sqlite:///"):
        import sqlite3

        path = storage[len("sqlite:///"):]

        def connect():
            conn = sqlite3.connect(path, timeout=60, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn

        return _retry(lambda: optuna.storages.RDBStorage(storage, engine_kwargs={"creator": connect}))
    return _retry(lambda: optuna.storages.RDBStorage(storage))


def _retry(fn, attempts: int = 8):
    # workers starting together race on creating the schema / the study; the loser retries and loads
    import random
    import time

    for i in range(attempts):
        try:
            return fn()
        except Exception:  # noqa: BLE001 - sqlalchemy / optuna raise several types for the same race
            if i == attempts - 1:
                raise
            time.sleep(0.2 + random.random() * 0.5)


def weights_fingerprint(model: Any) -> str:
    """SHA-1 of every tensor in ``model.state_dict()``: which trained weights a study's evaluations belong to."""
    import hashlib

    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def open_study(storage: str | None, study_name: str, space: SearchSpace, objectives: Sequence[Objective],
               sampler: optuna.samplers.BaseSampler | None = None, fingerprint: str | None = None,
               canonical: Canonical | None = None) -> optuna.Study:
    """Create or load the study (``storage`` None: in memory) and check it belongs to this space and objectives.

    Args:
        fingerprint: :func:`weights_fingerprint` of the supernet. A study measured on other weights (the supernet
            was trained again or longer) is not resumed, its evaluations being stale: the search warns and uses the
            study ``<study_name>@<fingerprint>`` of the same storage instead.
        canonical: maps a config to its network's canonical config; default ``space.canonical`` when the space
            knows dead dims (``space.dead_when``). :func:`claim` and :func:`sync_claims` key on it. A study written
            with raw keys has its claims re-keyed once (two claims of one network keep the first).

    Returns:
        The study (``study.study_name`` tells which one).

    Raises:
        SearchError: the stored study was made for another search space or other objectives.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend = make_storage(storage)
    study = _retry(lambda: optuna.create_study(storage=backend, study_name=study_name, load_if_exists=True,
                                               directions=[o.optuna_direction for o in objectives],
                                               sampler=sampler or optuna.samplers.RandomSampler()))
    if canonical is None and space.dead_when:
        canonical = space.canonical
    if canonical is not None:
        study.__dict__[_CANONICAL] = canonical
    signature = space.signature()
    wanted = [str(o) for o in objectives]
    attrs = study.user_attrs
    if "space_signature" not in attrs:
        study.set_user_attr("space_signature", signature)
        study.set_user_attr("objectives", wanted)
        if fingerprint is not None:
            study.set_user_attr("weights_fingerprint", fingerprint)
        if canonical is not None:
            study.set_user_attr("config_keys", "canonical")
        return study
    if attrs["space_signature"] != signature:
        stored = {d["name"] for d in json.loads(attrs["space_signature"])}
        ours = set(space.names())
        raise SearchError(
            f"`study_name` {study_name!r} in `storage` {_redact(storage or 'memory')!r} belongs to another search space "
            f"(dims only there: {sorted(stored - ours)[:6]}, only here: {sorted(ours - stored)[:6]}, "
            f"{len(stored & ours)} shared, choices may differ). HINT: pass a new `study_name` or `output_dir`, "
            "or search the supernet the study was made for."
        )
    if attrs.get("objectives") != wanted:
        raise SearchError(
            f"`study_name` {study_name!r} was made for objectives {attrs.get('objectives')}, not {wanted}. "
            "HINT: use the same objectives to resume, or a new `study_name`."
        )
    stored = attrs.get("weights_fingerprint")
    if fingerprint is not None and stored is not None and stored != fingerprint:
        # the supernet was trained again or longer: the stored evaluations are stale, and resuming would skip them.
        # Not an error (re-running `fit` in the same folder is common): a study named after these weights, which
        # every worker given the same checkpoint also picks.
        fresh = f"{study_name.split('@')[0]}@{fingerprint[:12]}"
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(
            f"SubnetSearch: study {study_name!r} in {_redact(storage or 'memory')!r} was measured on other weights "
            f"of this supernet (fingerprint {stored[:12]}, now {fingerprint[:12]}); continuing in study {fresh!r} of "
            "the same storage. HINT: pass a new `output_dir` or `study_name` to keep searches of different training "
            "runs apart."
        )
        return open_study(storage, fresh, space, objectives, sampler, fingerprint, canonical)
    if canonical is not None and attrs.get("config_keys") != "canonical":
        _rekey_claims(study, canonical)
    return study


def _rekey_claims(study: optuna.Study, canonical: Canonical) -> None:
    """Re-key the claims of a study written with raw config keys (before canonical configs)."""
    claims = claims_of(study)
    for key in sorted(claims.keys(study._study_id)):
        new = config_key(canonical(json.loads(key)))
        if new != key:
            claims.rekey(study._study_id, key, new)
    study.set_user_attr("config_keys", "canonical")


def canonical_of(study: optuna.Study, canonical: Canonical | None = None) -> Canonical | None:
    """``canonical`` if given, else the one :func:`open_study` left on ``study`` (None: configs are keyed raw)."""
    return canonical if canonical is not None else study.__dict__.get(_CANONICAL)


def _redact(url: str) -> str:
    # never echo a password from an RDB URL into logs
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _key(trial: optuna.trial.FrozenTrial, canonical: Canonical | None = None) -> str:
    if canonical is not None:  # also re-keys trials stored with raw keys
        return config_key(canonical(dict(trial.params)))
    return trial.user_attrs.get("config_key") or config_key(trial.params)


def real_trials(study: optuna.Study, states: Sequence[TrialState] = (TrialState.COMPLETE,)) -> list:
    """Trials that are real evaluations (duplicates excluded)."""
    return [t for t in study.get_trials(deepcopy=False, states=tuple(states)) if "skipped" not in t.user_attrs]


def taken_keys(study: optuna.Study) -> set[str]:
    """Keys of the configs claimed in ``study`` (running or complete): one query on the claims table."""
    return claims_of(study).keys(study._study_id)


def num_taken(study: optuna.Study) -> int:
    return len(taken_keys(study))


def sync_claims(study: optuna.Study) -> int:
    """Claim the configs of COMPLETE trials that hold no claim (a study written before claims existed).

    Returns:
        How many claims were added.
    """
    claims, have, canonical = claims_of(study), taken_keys(study), canonical_of(study)
    added = 0
    for t in real_trials(study):
        key = _key(t, canonical)
        if key not in have and claims.insert(study._study_id, key, t._trial_id) is not None:
            have.add(key)
            added += 1
    return added


def reap_stale(study: optuna.Study) -> int:
    """Mark RUNNING trials whose worker process on this host is gone (or is this process) as FAIL."""
    host = socket.gethostname()
    reaped = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker", "")
        w_host, _, pid = worker.rpartition(":")
        if w_host != host or not pid.isdigit():
            continue
        if int(pid) == os.getpid() or not _alive(int(pid)):
            study._storage.set_trial_user_attr(t._trial_id, "error", "interrupted (worker process ended)")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            claims_of(study).release(study._study_id, t._trial_id)
            reaped += 1
    return reaped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(study: optuna.Study, cfg: Mapping[str, int] | None, dists: Mapping[str, Any],
          taken: set[str] | None = None, budget: int | None = None,
          canonical: Canonical | None = None) -> optuna.Trial | None:
    """Start a trial for ``cfg`` (or for the study's sampler's proposal when ``cfg`` is None).

    The trial is created RUNNING with its params fixed (no WAITING trial another worker could pop), then its config
    is claimed by an atomic INSERT; a lost claim or a claim past ``budget`` yields the trial before anything runs.

    Args:
        taken: the keys already taken, if the caller just read them (saves a storage round trip).
        budget: total real evaluations wanted; a claim that other workers' claims pushed past it yields.
        canonical: maps ``cfg`` to its network's canonical config, which is claimed (and becomes the trial's
            params); default: the one :func:`open_study` left on ``study``. A sampler's proposal keeps its params
            (Optuna fixes them) and is claimed under its canonical key.

    Returns:
        The RUNNING trial to evaluate (its ``params`` are the config), or None when the config's network is already
        taken (or the budget is full).
    """
    canonical = canonical_of(study, canonical)
    if cfg is not None:
        if canonical is not None:
            cfg = canonical(cfg)
        key = config_key(cfg)
        if key in (taken if taken is not None else taken_keys(study)):
            return None
        trial = _running_trial(study, {k: cfg[k] for k in dists}, dists, key)
    else:
        trial = study.ask(dict(dists))
        key = config_key(canonical(trial.params) if canonical is not None else trial.params)
        trial.set_user_attr("config_key", key)
        trial.set_user_attr("worker", _worker())
    claims = claims_of(study)
    claim_id = claims.insert(study._study_id, key, trial._trial_id)
    if claim_id is None:
        owner = claims.owner(study._study_id, key)
        other = study._storage.get_trial(owner) if owner is not None else None
        if other is not None and other.state == TrialState.COMPLETE and cfg is None:
            return _duplicate_complete(study, trial, other)
        return _skip(study, trial, f"duplicate of trial {other.number if other is not None else '?'}")
    if budget is not None and claims.rank(study._study_id, claim_id) >= budget:
        claims.release(study._study_id, trial._trial_id)
        return _skip(study, trial, "over budget")
    return trial


def _running_trial(study: optuna.Study, params: Mapping[str, int], dists: Mapping[str, Any],
                   key: str) -> optuna.Trial:
    # created RUNNING with its params: unlike enqueue + ask, no other worker can pop it
    import datetime

    template = optuna.trial.FrozenTrial(
        number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.datetime.now(),
        datetime_complete=None, params=dict(params), distributions={k: dists[k] for k in params},
        user_attrs={"config_key": key, "worker": _worker()}, system_attrs={}, intermediate_values={}, trial_id=-1)
    if _fast.rdb_backend(study) is not None:
        return _fast.create(study, template)
    return optuna.Trial(study, study._storage.create_new_trial(study._study_id, template_trial=template))


def _skip(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr("skipped", reason)
    study.tell(trial, state=TrialState.PRUNED)
    return None


def _duplicate_complete(study: optuna.Study, trial: optuna.Trial, other: optuna.trial.FrozenTrial) -> None:
    # a sampler proposal that was already measured: tell the known values so the sampler's population stays whole
    trial.set_user_attr("skipped", f"duplicate of trial {other.number}")
    for name, value in other.constraints.items():
        trial.set_constraint(name, value)
    study.tell(trial, other.values)
    return None


def finish(study: optuna.Study, trial: optuna.Trial, measured: Mapping[str, float], objectives: Sequence[Objective],
           constraint_names: Sequence[str], constraint_values: Sequence[float], seconds: float) -> bool:
    """Record a real evaluation as a COMPLETE trial.

    Returns:
        False when another worker that popped the same waiting trial (a SQLite race) recorded it first; the study
        then holds that worker's identical measurement, once.
    """
    values = [float(measured[o.name]) for o in objectives]
    if _fast.created(trial):
        return _fast.complete(study, trial, {"measured": {k: float(v) for k, v in measured.items()},
                                             "eval_seconds": float(seconds)},
                              {f"constraints:{n}": float(v) for n, v in zip(constraint_names, constraint_values)},
                              values)
    try:
        trial.set_user_attr("measured", {k: float(v) for k, v in measured.items()})
        trial.set_user_attr("eval_seconds", float(seconds))
        set_constraints(trial, constraint_names, constraint_values)
        study.tell(trial, values)
    except UpdateFinishedTrialError:
        return False
    return True


def fail(study: optuna.Study, trial: optuna.Trial, err: BaseException) -> None:
    """Record a crashed evaluation as FAIL with its error; finished trials stay in the study."""
    try:
        trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
        study.tell(trial, state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        return  # another worker finished the same trial (see `finish`)
    claims_of(study).release(study._study_id, trial._trial_id)  # a failed config may be tried again
