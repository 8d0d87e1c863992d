"""Hyperparameter search on Optuna (the optional extra ``deepstart[tune]``).

``tune(TuneConfig(base, parse_space("lr=log(1e-4,1e-1) epochs=3"), trials=20))`` runs a study
whose trials are ordinary run directories; see :mod:`deepstart.tune.study`. Optuna itself is
imported only when a study runs.
"""

from deepstart.tune.config import TuneConfig
from deepstart.tune.space import Param, SearchSpace, load_space, parse_space
from deepstart.tune.study import StudyResult, TrialPruning, tune

__all__ = [
    "Param",
    "SearchSpace",
    "StudyResult",
    "TrialPruning",
    "TuneConfig",
    "load_space",
    "parse_space",
    "tune",
]
