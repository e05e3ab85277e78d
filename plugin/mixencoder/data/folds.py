"""Query-level K-fold splits, so that no query is both trained and evaluated on."""

from __future__ import annotations

import logging
import random
from typing import Iterable

logger = logging.getLogger(__name__)


def kfold_split(qids: Iterable[str], k: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Splits queries into ``k`` folds; each fold is once the test set.

    The split depends only on the *set* of qids, ``k`` and ``seed`` (qids are sorted before a
    seeded shuffle), so it is reproducible whatever order the qids come in. Fold sizes differ by
    at most one, and every qid is in exactly one test fold.

    Args:
        qids: Query ids; must be unique.
        k: Number of folds, ``2 <= k <= len(qids)``.
        seed: Seed of the shuffle.

    Returns:
        ``k`` pairs ``(train_qids, test_qids)``, each list sorted.

    Raises:
        ValueError: On a repeated qid or an out-of-range ``k``.
    """
    ordered = sorted(qids)
    if len(set(ordered)) != len(ordered):
        seen: set[str] = set()
        repeated = sorted({q for q in ordered if q in seen or seen.add(q)})
        raise ValueError(f"kfold_split: repeated qid(s) {repeated[:5]}")
    if not 2 <= k <= len(ordered):
        raise ValueError(
            f"kfold_split: k must be in [2, {len(ordered)}] for {len(ordered)} qids, got {k}"
        )
    # A private Random keeps the global random state untouched.
    random.Random(seed).shuffle(ordered)
    test_folds = [sorted(ordered[i::k]) for i in range(k)]
    splits = []
    for i, test in enumerate(test_folds):
        train = sorted(q for j, fold in enumerate(test_folds) if j != i for q in fold)
        splits.append((train, test))
    logger.debug("Split %d qids into %d folds (seed %d)", len(ordered), k, seed)
    return splits
