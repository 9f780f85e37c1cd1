"""Search options have one source of truth: ``SearchSettings``' fields. ``SubnetSearch`` (and so LightningCLI's
``subnet_search:`` section) and ``SearchLoop`` take them without writing a default of their own."""

from __future__ import annotations

import inspect
from dataclasses import MISSING, fields

import pytest

from lightning_elastic import ConfigError, SubnetSearch
from lightning_elastic.search import study as st
from lightning_elastic.search.loop import SearchLoop
from lightning_elastic.search.objectives import parse_objectives
from lightning_elastic.search.settings import SearchSettings, option_help, option_names
from tests.search import _synthetic as syn


def _defaults() -> dict:
    return {f.name: f.default if f.default is not MISSING else f.default_factory()
            for f in fields(SearchSettings) if f.name != "parsed"}


def test_no_other_signature_writes_a_default_of_an_option():
    names = set(option_names())
    for fn in (SubnetSearch.__init__, SearchLoop.__init__):
        code = fn.__code__  # the real parameters, not the generated signature
        positional = code.co_varnames[:code.co_argcount]
        with_default = set(positional[len(positional) - len(fn.__defaults__ or ()):]) | set(fn.__kwdefaults__ or {})
        assert not with_default & names, (fn.__qualname__, sorted(with_default & names))


def test_subnet_search_signature_is_the_settings_fields_with_their_defaults():
    params = dict(inspect.signature(SubnetSearch).parameters)
    assert list(params) == option_names()
    assert {n: p.default for n, p in params.items()} == _defaults()
    assert all(option_help()[n] for n in params)  # every option has a one-line help


def test_defaults_reach_the_callback_and_the_loop():
    assert SubnetSearch().settings == SearchSettings()
    space, obj = syn.space(), parse_objectives(["val_acc:max", "macs:min"])
    loop = SearchLoop(space, obj, {}, syn.evaluate, syn.costs, st.open_study(None, "s", space, obj))
    defaults = SearchSettings()
    assert (loop.num_evals, loop.rounds, loop.predictor_trials, loop.population_size, loop.sampler) == (
        defaults.num_evals, defaults.rounds, defaults.predictor_trials, defaults.population_size, defaults.sampler)


def test_positional_settings_and_overrides_combine():
    base = SearchSettings(num_evals=7, seed=3)
    search = SubnetSearch(("val_acc:max",), settings=base, rounds=2)
    assert (search.settings.objectives, search.settings.num_evals, search.settings.seed, search.settings.rounds) == (
        ("val_acc:max",), 7, 3, 2)


def test_unknown_option_names_the_closest_field():
    with pytest.raises(ConfigError, match=r"unknown search option\(s\) \['num_evls'\].*HINT: `num_evls` -> `num_evals`"):
        SubnetSearch(num_evls=8)


def test_option_given_twice_is_an_error():
    with pytest.raises(ConfigError, match=r"\['objectives'\] given both by position and by name.*HINT"):
        SubnetSearch(("val_acc:max",), objectives=("val_acc:max",))


def test_settings_of_the_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match=r"`settings` got dict; allowed: a SearchSettings or None.*HINT"):
        SubnetSearch(settings={"num_evals": 3})


def test_loop_refuses_settings_and_options_together():
    space, obj = syn.space(), parse_objectives(["val_acc:max", "macs:min"])
    with pytest.raises(ConfigError, match=r"`settings` was given together with options \['num_evals'\].*HINT"):
        SearchLoop(space, obj, {}, syn.evaluate, syn.costs, st.open_study(None, "s", space, obj),
                   SearchSettings(), num_evals=3)
