"""A drop-in for Pyserini's ``LuceneSearcher``: first stage, then the MixEncoder stage.

An existing Pyserini script changes one line::

    searcher = LuceneSearcher("indexes/vaswani")
    searcher = RerankingSearcher(searcher, Reranker(model, store))   # the added line
    hits = searcher.search("measurement of dielectric constant", k=10)
    print(hits[0].docid, hits[0].score)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .rerank import Reranker


@dataclass(frozen=True)
class RerankedHit:
    """A hit as Pyserini scripts read it (``.docid``, ``.score``: the reranker's score, fused
    with the first stage's as the Reranker's ``fusion`` says), plus the first-stage score."""

    docid: str
    score: float
    first_stage_score: float


class RerankingSearcher:
    """Wraps any searcher with ``search``/``batch_search`` (Pyserini's ``LuceneSearcher``,
    ``FaissSearcher``, or :class:`~mixencoder.first_stage.BM25Searcher`) and reranks its top
    ``depth`` hits.

    Args:
        searcher: the first stage.
        reranker: the :class:`~mixencoder.Reranker` to apply.
        depth: first-stage hits reranked per query (the paper reranks 1000).
    """

    def __init__(self, searcher: Any, reranker: Reranker, depth: int = 1000):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.searcher = searcher
        self.reranker = reranker
        self.depth = depth

    def search(self, q: str, k: int = 10, **kwargs: Any) -> list[RerankedHit]:
        """The top ``k`` reranked hits of the first stage's top ``depth``."""
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"empty query: {q!r}")
        hits = self.searcher.search(q, k=max(k, self.depth), **kwargs)
        return self._rerank(q, hits)[:k]

    def batch_search(
        self,
        queries: Sequence[str],
        qids: Sequence[str],
        k: int = 10,
        threads: int = 1,
        **kwargs: Any,
    ) -> dict[str, list[RerankedHit]]:
        """As ``LuceneSearcher.batch_search``: ``{qid: hits}``. ``threads`` goes to the first
        stage; reranking runs query by query (torch uses the cores itself)."""
        if len(queries) != len(qids):
            raise ValueError(f"{len(queries)} queries but {len(qids)} qids")
        first = self.searcher.batch_search(list(queries), list(qids), k=max(k, self.depth), threads=threads, **kwargs)
        return {qid: self._rerank(q, first[qid])[:k] for q, qid in zip(queries, qids)}

    def _rerank(self, q: str, hits: Sequence[Any]) -> list[RerankedHit]:
        first_stage = {h.docid: float(h.score) for h in hits[: self.depth]}
        ranked = self.reranker.rerank(q, list(first_stage), first_stage_scores=first_stage)
        return [RerankedHit(r.docid, r.score, first_stage[r.docid]) for r in ranked]

    def __getattr__(self, name: str) -> Any:
        # Everything else (doc(), num_docs, set_bm25, ...) behaves as the wrapped searcher's.
        if name == "searcher":  # not yet set (e.g. during copy): no recursion
            raise AttributeError(name)
        return getattr(self.searcher, name)
