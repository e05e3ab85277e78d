"""Dense first stage: FAISS search over a store's pooled vectors, with Pyserini's hit interface.

The store built for reranking already holds one pooled vector per candidate (the backbone used
as a mean-pooled dual encoder), so the same directory serves as a dense index; the model's
``encode_queries_pooled`` is the matching query encoder. Scores follow the store's
``search_metric``: cosines for a store built from a cosine model (the default), inner products
for ``"ip"`` stores (and stores written before the metric was recorded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class DenseHit:
    """A hit with ``.docid`` and ``.score``, as Pyserini's searchers return."""

    docid: str
    score: float


class DenseSearcher:
    """``search``/``batch_search`` over a :class:`~mixencoder.CandidateStore`'s pooled vectors.

    Args:
        store: a store built with pooled vectors.
        model: the model that built it (its fingerprint is checked); encodes the queries.

    Example:
        >>> searcher = RerankingSearcher(DenseSearcher(store, model), Reranker(model, store))
    """

    def __init__(self, store: Any, model: Any):
        store.check_compatible(model)
        if store.pooled_dim is None:
            raise ValueError(f"store at {store.path} has no pooled vectors; build it with with_pooled=True")
        self.store = store
        self.model = model

    def search(self, q: str, k: int = 10) -> list[DenseHit]:
        return self.batch_search([q], ["q"], k=k)["q"]

    def batch_search(
        self, queries: Sequence[str], qids: Sequence[str], k: int = 10, threads: int = 1
    ) -> dict[str, list[DenseHit]]:
        """``{qid: hits}``, best first. ``threads`` is accepted for Pyserini compatibility."""
        if len(queries) != len(qids):
            raise ValueError(f"{len(queries)} queries but {len(qids)} qids")
        for qid, q in zip(qids, queries):
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"empty query for qid {qid!r}")
        vectors = self.model.encode_queries_pooled(list(queries))
        results = self.store.search(vectors, k)
        return {qid: [DenseHit(d, float(s)) for d, s in hits] for qid, hits in zip(qids, results)}
