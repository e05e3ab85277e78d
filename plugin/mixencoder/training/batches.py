"""The tokenised batches the trainer collates and the losses (single-process and
data-parallel) read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch


@dataclass
class MatchingBatch:
    """A tokenised matching batch (or one rank's slice of a global batch).

    Attributes:
        queries: :meth:`~mixencoder.models.RankingModel.tokenize_queries` output for this batch's b queries.
        candidates: the tokenised candidates. In-batch layout (``group_size == 0``): the b
            positives, then each query's h hard negatives in query order (``b + b*h``).
            Grouped layout (``group_size == 1 + h``): query i's positive then its h negatives,
            at rows ``i*group_size .. (i+1)*group_size - 1``.
        query_ids: per query of the *global* batch, its id (or its text) for same-query
            masking.
        positive_ids: per query of the global batch, its positive's id (or text).
        hard_negatives: h, hard negatives per query.
        group_size: 0 for the in-batch layout, else ``1 + h`` (grouped layout).
        first_row: index of this batch's first query in the global batch (0 unless the batch is
            a data-parallel rank's slice).
    """

    queries: dict[str, torch.Tensor]
    candidates: dict[str, torch.Tensor]
    query_ids: list[str]
    positive_ids: list[str]
    hard_negatives: int = 0
    group_size: int = 0
    first_row: int = 0


@dataclass
class PairBatch:
    """A tokenised pair-classification batch (premises as queries, hypotheses as candidates)."""

    queries: dict[str, torch.Tensor]
    candidates: dict[str, torch.Tensor]
    labels: torch.Tensor


Batch = Union[MatchingBatch, PairBatch]
