from __future__ import annotations

import numpy as np
import pytest

from lightning_elastic import ConfigError
from lightning_elastic.search.predictors import (
    PREDICTORS,
    Predictor,
    base_columns,
    features,
    kendall_tau,
    make_regressor,
)
from tests.search import _synthetic as syn


def _data(n, seed=0):
    space = syn.space(4, (1, 2, 3, 4, 5))
    cfgs = list(space.enumerate())
    idx = np.random.default_rng(seed).permutation(len(cfgs))[:n]
    X = [features(space, cfgs[i], syn.costs(cfgs[i])) for i in idx]
    y = [syn.evaluate(cfgs[i])["val_acc"] for i in idx]
    return np.array(X), np.array(y)


def test_cv_chooses_a_predictor_that_ranks_held_out_subnets():
    X, y = _data(120)
    p = Predictor("val_acc", ("ridge", "extra_trees"), seed=0).fit(X[:40], y[:40])
    q = p.quality
    assert q.model in ("ridge", "extra_trees") and set(q.candidates) == {"ridge", "extra_trees"}
    assert q.num_samples == 40 and q.kendall_tau > 0.8 and q.mae < 0.1
    # held-out subnets the predictor never saw
    assert kendall_tau(y[40:], p.predict(X[40:])) > 0.8
    assert q.to_dict()["cv_kendall_tau"]


def test_every_regressor_is_cross_validated():
    X, y = _data(16)
    p = Predictor("y", PREDICTORS, folds=3).fit(X, y)
    assert set(p.quality.candidates) == set(PREDICTORS) and p.predict(X[:5]).shape == (5,)


def test_too_little_data_predicts_the_mean():
    p = Predictor("y").fit([[0.0], [1.0]], [0.5, 0.7])
    assert p.quality.model == "mean" and np.allclose(p.predict([[0.3]]), [0.6])


def test_unknown_regressor_name():
    with pytest.raises(ConfigError, match=r"`predictors` has unknown name 'svm'; allowed: .*HINT"):
        make_regressor("svm")


def test_ordinal_and_monotone_read_the_ordinal_columns_and_rank_held_out_subnets():
    space = syn.space(4, (1, 2, 3, 4, 5))
    cfgs = list(space.enumerate())
    idx = np.random.default_rng(1).permutation(len(cfgs))
    X = np.array([features(space, cfgs[i], syn.costs(cfgs[i])) for i in idx])
    y = np.array([syn.evaluate(cfgs[i])["val_acc"] for i in idx])
    base = base_columns(space)
    # ranks + 2 log-costs, then 4 thermometer columns per 5-choice dim
    assert base == 6 and X.shape[1] == base + 4 * 4 and set(np.unique(X[:, base:])) == {0.0, 1.0}
    for name in ("ordinal", "monotone"):
        p = Predictor("val_acc", (name,), seed=0, base_columns=base).fit(X[:32], y[:32])
        assert p.quality.model == name
        assert kendall_tau(y[32:], p.predict(X[32:])) > 0.9, name


def test_monotone_follows_a_target_that_falls_with_size():
    space = syn.space(3, (1, 2, 3, 4))
    cfgs = list(space.enumerate())
    X = np.array([features(space, c, syn.costs(c)) for c in cfgs])
    loss = -np.array([syn.evaluate(c)["val_acc"] for c in cfgs])  # falls as the subnet grows
    model = make_regressor("monotone", base_columns=base_columns(space)).fit(X[::3], loss[::3])
    pred = model.predict(X)
    assert kendall_tau(loss, pred) > 0.9
    assert pred[cfgs.index(space.max_config())] == pred.min()  # the largest subnet: lowest predicted loss
