"""Architecture search on Optuna: spaces, studies shared by many workers, and the search verb.

``lv.search(space, data, method=..., budget=..., storage=..., study=..., n_trials=...)`` checks
its arguments, opens (or resumes) an Optuna study and hands it to a registered search method
(``leanvision/methods/search/``). The samplers (TPE, NSGA-II, random), the storage (SQLite by
default, any RDB URL or a journal file for many machines) and the Pareto front are Optuna's.
"""

from leanvision.search.engine import Candidate, SearchResult, collect, run_study
from leanvision.search.registry import (
    SearchContext,
    get_search_method,
    list_search_methods,
    register_search_method,
)
from leanvision.search.space import Choice, ModelSpec, SearchSpace
from leanvision.search.spaces import get_space, list_spaces, register_space
from leanvision.search.study import (
    SAMPLERS,
    Objective,
    make_sampler,
    open_storage,
    open_study,
)
from leanvision.search.verb import search, smallest_macs, spec_macs

__all__ = [
    "SAMPLERS",
    "Candidate",
    "Choice",
    "ModelSpec",
    "Objective",
    "SearchContext",
    "SearchResult",
    "SearchSpace",
    "collect",
    "get_search_method",
    "get_space",
    "list_search_methods",
    "list_spaces",
    "make_sampler",
    "open_storage",
    "open_study",
    "register_search_method",
    "register_space",
    "run_study",
    "search",
    "smallest_macs",
    "spec_macs",
]
