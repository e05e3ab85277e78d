"""Reranker and RerankingSearcher on a tiny model (unit); the real-data path is in
test_integration.py."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from mixencoder import Reranker, RerankingSearcher
from mixencoder.fusion import Fusion
from mixencoder.rerank import rank_order

DOCS = {
    "d1": "a lobster roll is a sandwich of lobster on bread",
    "d2": "rain",
    "d3": "water is the city of bread and rain",
    "d4": "how to bake bread in the city",
}


def test_rank_order_breaks_ties_by_docid():
    assert rank_order(["b", "a", "c"], [1.0, 1.0, 2.0]) == [("c", 2.0), ("a", 1.0), ("b", 1.0)]


def test_rerank_from_texts_matches_direct_scores(tiny_model_factory):
    model = tiny_model_factory()
    reranker = Reranker(model, doc_source=DOCS)
    ranked = reranker.rerank("lobster roll", list(DOCS))
    direct = dict(zip(DOCS, model.score_texts("lobster roll", list(DOCS.values()))))
    assert [r.docid for r in ranked] == sorted(direct, key=lambda d: (-direct[d], d))
    assert all(abs(r.score - direct[r.docid]) < 1e-5 for r in ranked)
    # texts given as an aligned list work the same as a doc source
    aligned = Reranker(model).rerank("lobster roll", list(DOCS), texts=list(DOCS.values()))
    assert aligned == ranked


def test_rerank_errors_name_the_problem(tiny_model_factory):
    reranker = Reranker(tiny_model_factory(), doc_source=DOCS)
    with pytest.raises(ValueError, match="empty query"):
        reranker.rerank("  ", ["d1"])
    with pytest.raises(ValueError, match=re.escape("1 duplicate docids among the candidates: ['d1']")):
        reranker.rerank("rain", ["d1", "d2", "d1"])
    with pytest.raises(KeyError, match=re.escape("2 candidate(s) are not in a store (none given) and have no text")):
        reranker.rerank("rain", ["d1", "nope", "gone"])
    assert reranker.rerank("rain", []) == []


class _ListSearcher:
    """A first stage over a fixed ranking (unit test only; the integration test uses Lucene)."""

    def __init__(self, docids):
        self.docids = docids
        self.num_docs = len(docids)

    def search(self, q, k=10):
        return [SimpleNamespace(docid=d, score=float(len(self.docids) - i)) for i, d in enumerate(self.docids[:k])]

    def batch_search(self, queries, qids, k=10, threads=1):
        return {qid: self.search(q, k) for q, qid in zip(queries, qids)}


def test_reranking_searcher_keeps_the_pyserini_interface(tiny_model_factory):
    model = tiny_model_factory()
    first = _ListSearcher(list(DOCS))
    searcher = RerankingSearcher(first, Reranker(model, doc_source=DOCS), depth=3)
    hits = searcher.search("bake bread", k=2)
    assert len(hits) == 2 and all(h.docid in list(DOCS)[:3] for h in hits)
    assert hits[0].score >= hits[1].score
    # the searcher fuses with the first stage's scores (the default fusion), as rerank() does
    # when given them
    first_stage = {h.docid: h.score for h in first.search("bake bread", k=3)}
    expected = Reranker(model, doc_source=DOCS).rerank("bake bread", list(DOCS)[:3], first_stage_scores=first_stage)[:2]
    assert [(h.docid, h.score) for h in hits] == [tuple(r) for r in expected]
    unfused = RerankingSearcher(first, Reranker(model, doc_source=DOCS, fusion=Fusion("none")), depth=3)
    plain = Reranker(model, doc_source=DOCS).rerank("bake bread", list(DOCS)[:3])[:2]
    assert [(h.docid, h.score) for h in unfused.search("bake bread", k=2)] == [tuple(r) for r in plain]
    batch = searcher.batch_search(["bake bread", "rain"], ["q1", "q2"], k=2, threads=2)
    assert [(h.docid, h.score) for h in batch["q1"]] == [(h.docid, h.score) for h in hits]
    assert searcher.num_docs == 4  # other attributes pass through to the wrapped searcher
    with pytest.raises(ValueError, match="empty query"):
        searcher.search("")


def test_dense_first_stage_from_the_store_feeds_the_reranker(tiny_model_factory, tmp_path):
    import numpy as np

    from mixencoder import CandidateStore
    from mixencoder.first_stage import DenseSearcher

    model = tiny_model_factory()
    store = CandidateStore.build(tmp_path / "store", model, DOCS.items(), dtype="float32")
    dense = DenseSearcher(store, model)
    hits = dense.search("bake bread", k=3)
    q = model.encode_queries_pooled(["bake bread"])[0]
    def cosine(v: np.ndarray) -> float:
        return float(np.dot(q, v) / (np.linalg.norm(q) * np.linalg.norm(v)))

    # the model scores by cosine, so its store searches by cosine
    brute = {d: cosine(model.encode_candidates([t]).pooled[0].numpy()) for d, t in DOCS.items()}
    assert [h.docid for h in hits] == sorted(brute, key=lambda d: -brute[d])[:3]
    assert [h.score for h in hits] == pytest.approx(sorted(brute.values(), reverse=True)[:3], abs=1e-5)
    searcher = RerankingSearcher(dense, Reranker(model, store), depth=4)
    assert {h.docid for h in searcher.search("bake bread", k=4)} == set(DOCS)
    with pytest.raises(ValueError, match="empty query"):
        dense.search(" ")
