"""The hybrid first stage on a real Lucene index of Vaswani documents and a real FAISS store."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from mixencoder import CandidateStore, Reranker, RerankingSearcher
from mixencoder.data import read_corpus, read_topics
from mixencoder.first_stage import BM25Searcher, DenseSearcher, HybridSearcher, build_bm25_index
from mixencoder.fusion import Fusion, minmax_normalise

N_DOCS = 300


@pytest.fixture(scope="module")
def vaswani_slice(shared_data: Path, tmp_path_factory: pytest.TempPathFactory, tiny_backbone_dir: Path):
    from mixencoder import MixEncoder

    docs = {d.docid: d.text for d in itertools.islice(read_corpus(shared_data / "vaswani" / "doc-text.trec"), N_DOCS)}
    root = tmp_path_factory.mktemp("hybrid")
    build_bm25_index(docs.items(), root / "index", threads=2)
    model = MixEncoder.from_pretrained(tiny_backbone_dir, candidate_max_length=64)
    store = CandidateStore.build(root / "store", model, docs.items(), show_progress_bar=False)
    topics = read_topics(shared_data / "vaswani" / "query-text.trec")
    with BM25Searcher(root / "index") as sparse:
        yield sparse, DenseSearcher(store, model), model, store, topics


def test_merge_has_hybrid_searcher_semantics(vaswani_slice):
    sparse, dense, *_ , topics = vaswani_slice
    query = topics["1"]
    hybrid = HybridSearcher(sparse, dense, alpha=0.3, depth_each=20)
    s_hits = {h.docid: h.score for h in sparse.search(query, k=20)}
    d_hits = {h.docid: h.score for h in dense.search(query, k=20)}
    hits = hybrid.search(query, k=40)
    union = set(s_hits) | set(d_hits)
    assert {h.docid for h in hits} == union  # k >= the union: nothing cut
    assert set(s_hits) != set(d_hits)  # both sides contribute something of their own
    ns, nd = minmax_normalise(s_hits), minmax_normalise(d_hits)
    for h in hits:
        # a side that missed the candidate gives it its minimum: 0 after normalisation
        assert h.score == pytest.approx(0.3 * ns.get(h.docid, 0.0) + 0.7 * nd.get(h.docid, 0.0))
        assert h.sparse_score == s_hits.get(h.docid) and h.dense_score == d_hits.get(h.docid)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    top = hybrid.search(query, k=5)
    assert top == hits[:5]
    # alpha 1 is BM25's order for what BM25 found (its last hit normalises to 0 and ties with
    # every dense-only candidate, so compare the ones above it)
    bm25_only = HybridSearcher(sparse, dense, alpha=1.0, depth_each=20).search(query, k=len(s_hits) - 1)
    assert [h.docid for h in bm25_only] == [d for d, _ in sorted(s_hits.items(), key=lambda x: (-x[1], x[0]))][:-1]


def test_batch_search_and_reranking_over_hybrid(vaswani_slice):
    sparse, dense, model, store, topics = vaswani_slice
    hybrid = HybridSearcher(sparse, dense, alpha=0.5)
    qids = ["1", "2", "3"]
    batch = hybrid.batch_search([topics[q] for q in qids], qids, k=15)
    for q in qids:
        assert batch[q] == hybrid.search(topics[q], k=15)
    stage = RerankingSearcher(hybrid, Reranker(model, store, fusion=Fusion("interpolate", alpha=0.5)), depth=15)
    reranked = stage.search(topics["1"], k=15)
    first = {h.docid: h.score for h in batch["1"]}
    assert {h.docid for h in reranked} == set(first)
    assert all(h.first_stage_score == first[h.docid] for h in reranked)
    docid = batch["1"][0].docid
    assert hybrid.doc_text(docid) == sparse.doc_text(docid)  # everything else is the sparse side's


def test_bad_hybrid_arguments(vaswani_slice):
    sparse, dense, *_ = vaswani_slice
    with pytest.raises(ValueError, match="alpha must be in"):
        HybridSearcher(sparse, dense, alpha=1.5)
    with pytest.raises(ValueError, match="depth_each"):
        HybridSearcher(sparse, dense, depth_each=0)
    with pytest.raises(ValueError, match="empty query"):
        HybridSearcher(sparse, dense).search("  ")
