"""core.checks: the one home of argument validation (numbers, counts, space specs) and of its messages."""

from __future__ import annotations

import pytest

from lightning_elastic import ConfigError
from lightning_elastic.core.checks import check_int, check_number, check_spec


@pytest.mark.parametrize("value", [True, 1.0, "3", -1, None])
def test_check_int_errors(value):
    with pytest.raises(ConfigError, match=rf"`rounds` got {value!r}; allowed: an integer >= 0\. HINT: rounds=10\."):
        check_int("rounds", value)
    with pytest.raises(ConfigError, match=r"allowed: an integer >= 2\. HINT: e\.g\. levels=2\."):
        check_int("levels", 1, minimum=2, hint="e.g. levels=2")


def test_check_int_accepts():
    assert check_int("n", 0) == 0 and check_int("n", 5, minimum=5) == 5


@pytest.mark.parametrize(("value", "low_open", "interval"), [(0, True, r"\(0, 1\]"), (1.5, False, r"\[0, 1\]"),
                                                             (False, False, r"\[0, 1\]"), ("0.5", False, r"\[0, 1\]")])
def test_check_number_errors(value, low_open, interval):
    with pytest.raises(ConfigError, match=rf"`kd_weight` got {value!r}; allowed: a number in {interval}\. HINT: "
                                          r"see the ElasticTraining docstring for typical values\."):
        check_number("kd_weight", value, 0, 1, low_open=low_open)


def test_check_number_accepts():
    assert check_number("t", 1, 0, 1) == 1.0 and isinstance(check_number("t", 1, 0, 1), float)


@pytest.mark.parametrize(("value", "message"), [
    ("big", r"`width` got 'big'; allowed: 'auto', None \(not elastic\), or a non-empty list of numbers\. HINT"),
    ((0.5, -1), r"`width` has invalid values \[-1\]; allowed: positive numbers .*HINT"),
    ((0.5, 1.5), r"`width` got \(0\.5, 1\.5\): floats are ratios .*HINT"),
    ((0.5, 1), r"`width` got \(0\.5, 1\), which mixes ratios \[0\.5\] \(floats\) and absolute sizes \[1\] .*HINT: "
               r"write the full ratio as 1\.0: width=\(0\.5, 1\.0\)\."),
])
def test_check_spec_errors(value, message):
    with pytest.raises(ConfigError, match=message):
        check_spec("width", value)


def test_check_spec_multipliers_may_exceed_one():
    check_spec("expand", (3, 4.5, 6), multiplier=True)
    with pytest.raises(ConfigError, match=r"`expand` got \(3, 4\.5\): floats are ratios"):
        check_spec("expand", (3, 4.5))
