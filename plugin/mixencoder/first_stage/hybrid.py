"""Hybrid first stage: BM25 and dense search merged into one candidate list per query.

BM25 finds what shares the query's terms, dense search over the store's pooled vectors what
shares its meaning; their union at depth ``k`` recalls more than either at ``k``. The merge has
Pyserini's ``HybridSearcher`` semantics with per-query min-max normalisation (the
``interpolate`` of :mod:`mixencoder.fusion`): each list is normalised to [0, 1], a candidate
missing from one list takes that list's minimum (0), and the hybrid score is
``alpha * sparse + (1 - alpha) * dense``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..fusion import interpolate


@dataclass(frozen=True)
class HybridHit:
    """A merged hit: ``.docid``, ``.score`` (the hybrid score) and each side's raw score
    (``None`` where that side did not retrieve the candidate)."""

    docid: str
    score: float
    sparse_score: float | None
    dense_score: float | None


class HybridSearcher:
    """``search``/``batch_search`` over the merge of a sparse and a dense searcher.

    Args:
        sparse: e.g. :class:`~mixencoder.first_stage.BM25Searcher` or Pyserini's ``LuceneSearcher``.
        dense: e.g. :class:`~mixencoder.first_stage.DenseSearcher` over the candidate store.
        alpha: the sparse side's weight in [0, 1] (0.5: equal weights of the normalised scores).
        depth_each: hits taken from each side per query (default: the ``k`` asked for), so the
            union the top ``k`` is cut from holds up to ``2 * depth_each`` candidates.

    Example:
        >>> hybrid = HybridSearcher(BM25Searcher("index"), DenseSearcher(store, model))
        >>> searcher = RerankingSearcher(hybrid, Reranker(model, store), depth=1000)
    """

    def __init__(self, sparse: Any, dense: Any, *, alpha: float = 0.5, depth_each: int | None = None):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (the sparse side's weight), got {alpha}")
        if depth_each is not None and depth_each < 1:
            raise ValueError(f"depth_each must be >= 1, got {depth_each}")
        self.sparse = sparse
        self.dense = dense
        self.alpha = alpha
        self.depth_each = depth_each

    def search(self, q: str, k: int = 10) -> list[HybridHit]:
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"empty query: {q!r}")
        each = self.depth_each or k
        return self.merge(self.sparse.search(q, k=each), self.dense.search(q, k=each), k)

    def batch_search(
        self, queries: Sequence[str], qids: Sequence[str], k: int = 10, threads: int = 1
    ) -> dict[str, list[HybridHit]]:
        """``{qid: hits}``; ``threads`` goes to both sides."""
        if len(queries) != len(qids):
            raise ValueError(f"{len(queries)} queries but {len(qids)} qids")
        each = self.depth_each or k
        sparse = self.sparse.batch_search(list(queries), list(qids), k=each, threads=threads)
        dense = self.dense.batch_search(list(queries), list(qids), k=each, threads=threads)
        return {qid: self.merge(sparse.get(qid, []), dense.get(qid, []), k) for qid in qids}

    def merge(self, sparse_hits: Sequence[Any], dense_hits: Sequence[Any], k: int) -> list[HybridHit]:
        """The top ``k`` of the union of two hit lists, best first, ties by docid."""
        sparse = {h.docid: float(h.score) for h in sparse_hits}
        dense = {h.docid: float(h.score) for h in dense_hits}
        fused = interpolate(dense, sparse, self.alpha)
        order = sorted(fused.items(), key=lambda x: (-x[1], x[0]))[:k]
        return [HybridHit(d, s, sparse.get(d), dense.get(d)) for d, s in order]

    def __getattr__(self, name: str) -> Any:
        # doc(), num_docs, ... come from the sparse side, as for a LuceneSearcher.
        if name == "sparse":
            raise AttributeError(name)
        return getattr(self.sparse, name)
