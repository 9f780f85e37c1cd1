"""Subnet search: measure real subnets, fit predictors, run multi-objective samplers, write results."""

from lightning_elastic.search.callback import SubnetSearch
from lightning_elastic.search.costs import CostsFallbackWarning
from lightning_elastic.search.latency import MeasurementError
from lightning_elastic.search.results import SearchResult
from lightning_elastic.search.run import SearchSettings, run_search
from lightning_elastic.search.study import SearchError

__all__ = ["CostsFallbackWarning", "MeasurementError", "SearchError", "SearchResult", "SearchSettings", "SubnetSearch",
           "run_search"]
