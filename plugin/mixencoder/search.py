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

from .rerank import Reranker, StageClock


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
        queries_per_rerank: in :meth:`batch_search`, queries whose candidates are gathered from
            the store in one :meth:`~mixencoder.Reranker.rerank_many` call (candidates shared
            by several queries are read once); the rankings do not depend on it. The default, 1: on
            Vaswani at depth 1000, 8 was no faster (scoring dominates; the gather is ~3% of a
            query; ``eval/bench_latency.py``, ``throughput``).

    Attributes:
        last_timings: seconds per stage of the last finished :meth:`search` or
            :meth:`batch_search` (summed over its queries): ``first_stage``, then the
            reranker's ``gather``, ``encode_query``, ``score`` and ``fusion``.
    """

    def __init__(self, searcher: Any, reranker: Reranker, depth: int = 1000, *, queries_per_rerank: int = 1):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if queries_per_rerank < 1:
            raise ValueError(f"queries_per_rerank must be >= 1, got {queries_per_rerank}")
        self.searcher = searcher
        self.reranker = reranker
        self.depth = depth
        self.queries_per_rerank = queries_per_rerank
        self.last_timings: dict[str, float] = {}

    def search(self, q: str, k: int = 10, **kwargs: Any) -> list[RerankedHit]:
        """The top ``k`` reranked hits of the first stage's top ``depth``."""
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"empty query: {q!r}")
        clock = StageClock(["first_stage"])
        hits = self.searcher.search(q, k=max(k, self.depth), **kwargs)
        clock.lap("first_stage")
        timings = clock.spent
        ranked = self._rerank([q], [hits], timings)[0][:k]
        self.last_timings = timings
        return ranked

    def batch_search(
        self,
        queries: Sequence[str],
        qids: Sequence[str],
        k: int = 10,
        threads: int = 1,
        **kwargs: Any,
    ) -> dict[str, list[RerankedHit]]:
        """As ``LuceneSearcher.batch_search``: ``{qid: hits}``. ``threads`` goes to the first
        stage; reranking runs ``queries_per_rerank`` queries at a time (torch spreads each
        query's scoring over its own intra-op threads, ``torch.set_num_threads``)."""
        if len(queries) != len(qids):
            raise ValueError(f"{len(queries)} queries but {len(qids)} qids")
        clock = StageClock(["first_stage"])
        first = self.searcher.batch_search(list(queries), list(qids), k=max(k, self.depth), threads=threads, **kwargs)
        clock.lap("first_stage")
        timings = clock.spent
        out: dict[str, list[RerankedHit]] = {}
        step = self.queries_per_rerank
        for start in range(0, len(queries), step):
            chunk = list(qids[start : start + step])
            ranked = self._rerank(list(queries[start : start + step]), [first[qid] for qid in chunk], timings)
            out.update((qid, hits[:k]) for qid, hits in zip(chunk, ranked))
        self.last_timings = timings
        return out

    def _rerank(
        self, queries: list[str], hit_lists: list[Sequence[Any]], timings: dict[str, float]
    ) -> list[list[RerankedHit]]:
        firsts = [{h.docid: float(h.score) for h in hits[: self.depth]} for hits in hit_lists]
        ranked = self.reranker.rerank_many(
            queries, [list(f) for f in firsts], first_stage_scores=firsts, timings=timings
        )
        return [[RerankedHit(r.docid, r.score, f[r.docid]) for r in rs] for rs, f in zip(ranked, firsts)]

    def __getattr__(self, name: str) -> Any:
        # Everything else (doc(), num_docs, set_bm25, ...) behaves as the wrapped searcher's.
        if name == "searcher":  # not yet set (e.g. during copy): no recursion
            raise AttributeError(name)
        return getattr(self.searcher, name)
