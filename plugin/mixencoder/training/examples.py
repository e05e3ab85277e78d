"""The training examples the trainer consumes, as plain frozen dataclasses.

File parsing lives in :mod:`mixencoder.data`; loaders there produce these. This module imports
neither torch nor transformers so that loaders can build examples cheaply.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass


@dataclass(frozen=True)
class MatchingExample:
    """One query with one relevant candidate (and optional hard negatives).

    Attributes:
        query: the query (or dialogue context) text.
        positive: a relevant candidate text.
        negatives: hard-negative candidate texts (e.g. BM25 negatives, DSTC7 distractors); the
            trainer uses ``TrainingConfig.hard_negatives_per_query`` of them per step.
        query_id: identifies the query across examples. Several examples with the same id (one
            per relevant candidate, e.g. graded qrels) must not treat each other's positives as
            negatives; the loss masks them. Defaults to the query text when ``None``.
        positive_id: identifies the positive candidate; two examples sharing a positive are not
            each other's negatives either. Defaults to the positive text when ``None``.
    """

    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    query_id: str | None = None
    positive_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.query, str) or not self.query.strip():
            raise ValueError(
                f"MatchingExample.query must be a non-empty string, got {self.query!r}"
            )
        if not isinstance(self.positive, str) or not self.positive.strip():
            raise ValueError(
                f"MatchingExample.positive must be a non-empty string, got {self.positive!r}"
            )
        if not isinstance(self.negatives, tuple):
            # Lists would make the frozen example unhashable and mutable behind our back.
            object.__setattr__(self, "negatives", tuple(self.negatives))
        for i, neg in enumerate(self.negatives):
            if not isinstance(neg, str) or not neg.strip():
                raise ValueError(f"MatchingExample.negatives[{i}] must be a non-empty string")


@dataclass(frozen=True)
class PairExample:
    """One sentence pair with a class label (NLI: premise, hypothesis, label in 0..n-1).

    The premise plays the query role and the hypothesis the candidate role in
    :meth:`~mixencoder.MixEncoder.classify_torch`.
    """

    premise: str
    hypothesis: str
    label: int

    def __post_init__(self) -> None:
        for name in ("premise", "hypothesis"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"PairExample.{name} must be a non-empty string, got {value!r}")
        try:
            label = operator.index(self.label)  # accepts numpy integers, refuses floats
        except TypeError:
            label = -1
        if isinstance(self.label, bool) or label < 0:
            raise ValueError(f"PairExample.label must be a non-negative int, got {self.label!r}")
        object.__setattr__(self, "label", int(label))
