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

import importlib
from typing import Any

# Names load on first use, so a results-only user (eval/compare_runs.py) does not import torch.
_EXPORTS = {
    "Budget": "cache", "fingerprint": "cache", "plan_budget": "cache", "store_cached": "cache",
    "train_cached": "cache", "Results": "results", "compare_seeds": "results", "run_experiment": "runner",
    "Recipe": "cache", "SystemSpec": "systems", "system_spec": "systems", "Fold": "tasks",
    "RankingTask": "tasks", "TrainingData": "tasks",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
