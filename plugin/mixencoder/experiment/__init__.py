"""Experiments: systems x folds x a task, trained, cached, reranked and evaluated in one place.

* :class:`SystemSpec` / :class:`Recipe` (:mod:`.systems`): what a system is and how it trains;
* :mod:`.cache`: one cache of trained models and stores keyed by everything that determines them;
* task adapters: :mod:`.ir` (judged queries), :mod:`.dialogue` (response selection),
  :mod:`.nli` (classification), all producing a :class:`RankingTask` and its :class:`Fold` s;
* :func:`run_experiment` (:mod:`.runner`): the cross-validation / train-dev runner over any task;
* :class:`Results` (:mod:`.results`): ir-measures metrics, fused rows, and ``frame(baseline=)``,
  a pandas DataFrame with paired differences against a named baseline;
* :mod:`.cli`: ``mixencoder eval TASK`` (``main(argv)``).
"""

from __future__ import annotations

from .cache import Budget, fingerprint, plan_budget, store_cached, train_cached
from .results import Results, compare_seeds
from .runner import run_experiment
from .systems import Recipe, SystemSpec, system_spec
from .tasks import Fold, RankingTask, TrainingData

__all__ = [
    "Budget", "Fold", "RankingTask", "Recipe", "Results", "SystemSpec", "TrainingData", "compare_seeds",
    "fingerprint", "plan_budget", "run_experiment", "store_cached", "system_spec", "train_cached",
]
