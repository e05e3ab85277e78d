"""Reranker.rerank_many and RerankingSearcher.batch_search: several queries' candidates
gathered in one store call give exactly the rankings of one query at a time."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace

import pytest

from mixencoder import CandidateStore, Reranker, RerankingSearcher
from mixencoder.data import read_corpus
from mixencoder.fusion import Fusion
from mixencoder.models.colbert import ColBERT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUERIES = ["measurement of dielectric constant", "electron density in the ionosphere", "radio waves", "magnetic field"]


@pytest.fixture(scope="module")
def vaswani_docs(shared_data):
    docs = itertools.islice(read_corpus(shared_data / "vaswani" / "doc-text.trec"), 60)
    return {d.docid: " ".join(d.text.split()[:30]) for d in docs}  # the tiny BERT has 128 positions


def _candidate_lists(docids: list[str], seed: int = 0) -> list[list[str]]:
    """Overlapping lists in different orders (and one query with the same set as another)."""
    rng = random.Random(seed)
    lists = [rng.sample(docids, 25) for _ in QUERIES[:-1]]
    return [*lists, list(reversed(lists[0]))]


def _first_stage(lists: list[list[str]]) -> list:
    """A mapping, an aligned list, a mapping missing a candidate, and no scores."""
    mapping = {d: float(len(lists[0]) - i) for i, d in enumerate(lists[0])}
    partial = {d: float(i % 7) for i, d in enumerate(lists[2][1:])}
    return [mapping, [float(i % 5) for i in range(len(lists[1]))], partial, None]


@pytest.mark.parametrize("architecture", ["mixencoder", "colbert"])
def test_rerank_many_equals_one_query_at_a_time(architecture, tiny_model_factory, tiny_backbone_dir, vaswani_docs, tmp_path):
    if architecture == "colbert":  # variable-length reps: each query's padding must not change
        model = ColBERT.from_pretrained(
            tiny_backbone_dir, dim=8, query_marker="a", document_marker="b", query_max_length=12, candidate_max_length=64
        )
    else:
        model = tiny_model_factory(k=2, candidate_max_length=64)
    docids = list(vaswani_docs)
    # Two thirds in the store; the rest encoded on the fly from the doc source.
    stored = {d: vaswani_docs[d] for d in docids[:40]}
    store = CandidateStore.build(tmp_path / "s", model, stored.items(), dtype="float32", with_pooled=architecture != "colbert")
    lists = _candidate_lists(docids)
    first = _first_stage(lists)
    for fusion in (None, Fusion("rrf")):
        reranker = Reranker(model, store, vaswani_docs, fusion=fusion)
        if fusion is not None:  # rrf needs every query's first-stage scores
            first = [f if f is not None else {d: 1.0 for d in lists[3]} for f in first]
        batched = reranker.rerank_many(QUERIES, lists, first_stage_scores=first)
        alone = [reranker.rerank(q, c, first_stage_scores=f) for q, c, f in zip(QUERIES, lists, first)]
        assert batched == alone  # exactly: same docids, same float scores, same order
        assert [len(r) for r in batched] == [len(c) for c in lists]
        assert len({tuple(r) for r in batched}) == len(QUERIES)  # the queries' rankings differ


def test_rerank_many_edges_and_errors(tiny_model_factory, vaswani_docs):
    reranker = Reranker(tiny_model_factory(candidate_max_length=64), doc_source=vaswani_docs)
    some = list(vaswani_docs)[:5]
    assert reranker.rerank_many([], []) == []
    assert reranker.rerank_many(["radio", "waves"], [[], some])[0] == []
    # The same candidates in another order: each query still scores its own list.
    flipped = some[::-1]
    assert reranker.rerank_many(["radio", "waves"], [some, flipped]) == [
        reranker.rerank("radio", some), reranker.rerank("waves", flipped)
    ]
    with pytest.raises(ValueError, match="2 queries but 1 candidate lists"):
        reranker.rerank_many(["radio", "waves"], [some])
    with pytest.raises(ValueError, match="2 queries but 1 first_stage_scores entries"):
        reranker.rerank_many(["radio", "waves"], [some, some], first_stage_scores=[None])
    with pytest.raises(ValueError, match="empty query"):
        reranker.rerank_many(["radio", " "], [some, some])
    with pytest.raises(ValueError, match="duplicate docids"):
        reranker.rerank_many(["radio", "waves"], [some, [some[0], some[0]]])


class _ListSearcher:
    """A first stage that ranks a fixed docid list differently per query (unit test only)."""

    def __init__(self, docids: list[str]):
        self.docids = docids

    def search(self, q: str, k: int = 10) -> list[SimpleNamespace]:
        order = random.Random(q).sample(self.docids, len(self.docids))
        return [SimpleNamespace(docid=d, score=float(len(order) - i)) for i, d in enumerate(order[:k])]

    def batch_search(self, queries, qids, k=10, threads=1):
        return {qid: self.search(q, k) for q, qid in zip(queries, qids)}


@pytest.mark.parametrize("queries_per_rerank", [1, 3, 8])
def test_batch_search_equals_search_query_by_query(queries_per_rerank, tiny_model_factory, vaswani_docs, tmp_path):
    model = tiny_model_factory(candidate_max_length=64)
    store = CandidateStore.build(tmp_path / "s", model, vaswani_docs.items(), dtype="float16")
    first = _ListSearcher(list(vaswani_docs))
    searcher = RerankingSearcher(first, Reranker(model, store), depth=30, queries_per_rerank=queries_per_rerank)
    qids = [f"q{i}" for i in range(len(QUERIES))]
    batch = searcher.batch_search(QUERIES, qids, k=12)
    assert list(batch) == qids
    for q, qid in zip(QUERIES, qids):
        assert batch[qid] == searcher.search(q, k=12)
        assert len(batch[qid]) == 12
    with pytest.raises(ValueError, match="queries_per_rerank must be >= 1"):
        RerankingSearcher(first, Reranker(model, store), queries_per_rerank=0)
