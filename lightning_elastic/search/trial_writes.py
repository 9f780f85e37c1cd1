"""Creating and completing a search's trials in one RDB transaction each.

Through Optuna's public API, a trial with 6 params and 2 user attributes takes one transaction of ~20 queries (each
param re-reads the trial and checks its distribution against the study's earlier trials), and completing it three
more transactions plus two re-reads (``set_user_attr`` twice, ``set_constraint``, ``tell``): 14-28 ms per
evaluation on SQLite, most of a near-free evaluation's cost. Here the trial, its params and attributes are inserted
together, and the measurements, constraints, values and state are written together. The rows are Optuna's own
(``optuna.storages._rdb.models``), written as its RDB storage writes them, so every reader (``load_study``,
``optuna-dashboard``) sees ordinary trials. Params skip Optuna's distribution check: the study's space signature
(:func:`~lightning_elastic.search.study.open_study`) already guarantees the same distributions.

Used for the trials the loop creates for its own configs, on RDB storages only; the study's sampler's trials
(evolution) and in-memory studies go through Optuna's API.
"""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import distribution_to_json
from optuna.trial import FrozenTrial, TrialState

#: attribute on the ``optuna.Trial`` objects this module created
_MARK = "_lightning_elastic_fast"


def rdb_backend(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The RDB storage under ``study`` (Optuna wraps it in a caching layer); None for in-memory and other storages,
    which this module does not write directly."""
    backend = getattr(study._storage, "_backend", study._storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def create(study: optuna.Study, template: FrozenTrial) -> optuna.Trial:
    """A RUNNING trial with ``template``'s params, distributions and user attrs, in one transaction."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    backend = rdb_backend(study)
    with _create_scoped_session(backend.scoped_session) as session:
        # the study row lock that Optuna takes too: trial numbers are counted, not a sequence
        models.StudyModel.find_or_raise_by_id(study._study_id, session, for_update=True)
        row = models.TrialModel(study_id=study._study_id, number=None, state=TrialState.RUNNING,
                                datetime_start=template.datetime_start)
        session.add(row)
        session.flush()
        trial_id = row.trial_id
        session.add_all([models.TrialParamModel(
            trial_id=trial_id, param_name=name, param_value=template.distributions[name].to_internal_repr(value),
            distribution_json=distribution_to_json(template.distributions[name])) for name, value in
            template.params.items()])
        session.add_all([models.TrialUserAttributeModel(trial_id=trial_id, key=k, value_json=json.dumps(v))
                         for k, v in template.user_attrs.items()])
        row.number = row.count_past_trials(session)
        number = row.number
    frozen = copy.deepcopy(template)
    frozen.number, frozen._trial_id = number, trial_id
    cache = study._storage
    if hasattr(cache, "_add_trials_to_cache"):  # Optuna's caching wrapper learns of the trial as create_new_trial does
        with cache._lock:
            if study._study_id not in cache._studies:
                from optuna.storages._cached_storage import _StudyInfo

                cache._studies[study._study_id] = _StudyInfo()
            cache._add_trials_to_cache(study._study_id, [frozen])
    trial = optuna.Trial.__new__(optuna.Trial)
    # what Trial.__init__ sets, without re-reading the trial just written
    trial.study, trial._trial_id, trial.storage = study, trial_id, study._storage
    trial._cached_frozen_trial = frozen
    study.sampler.before_trial(study, frozen)
    trial.relative_search_space, trial._relative_params, trial._fixed_params = None, None, {}
    trial.__dict__[_MARK] = True
    return trial


def created(trial: Any) -> bool:
    """Whether :func:`create` made ``trial``."""
    return bool(getattr(trial, "__dict__", {}).get(_MARK))


def complete(study: optuna.Study, trial: optuna.Trial, user_attrs: Mapping[str, Any],
             system_attrs: Mapping[str, float], values: Sequence[float]) -> bool:
    """Write attrs, values and COMPLETE in one transaction; False if the trial was already finished."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    frozen = copy.deepcopy(trial._cached_frozen_trial)
    frozen.user_attrs.update(user_attrs)
    frozen.system_attrs.update(system_attrs)
    study.sampler.after_trial(study, frozen, TrialState.COMPLETE, list(values))  # as study.tell does
    with _create_scoped_session(rdb_backend(study).scoped_session) as session:
        row = models.TrialModel.find_or_raise_by_id(trial._trial_id, session, for_update=True)
        if row.state.is_finished():
            return False
        session.add_all([models.TrialUserAttributeModel(trial_id=row.trial_id, key=k, value_json=json.dumps(v))
                         for k, v in user_attrs.items()])
        session.add_all([models.TrialSystemAttributeModel(trial_id=row.trial_id, key=k, value_json=json.dumps(v))
                         for k, v in system_attrs.items()])
        for objective, value in enumerate(values):
            stored, kind = models.TrialValueModel.value_to_stored_repr(float(value))
            session.add(models.TrialValueModel(trial_id=row.trial_id, objective=objective, value=stored,
                                               value_type=kind))
        row.state = TrialState.COMPLETE
        row.datetime_complete = datetime.datetime.now()
    return True
