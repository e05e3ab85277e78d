"""The per-stage timings that Reranker and RerankingSearcher record (eval/bench_latency.py reads
them): present for every stage, summing to at most the call's wall time, and each charged to
the stage that spent it."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from mixencoder import CandidateStore, Reranker, RerankingSearcher

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOCS = {f"d{i}": f"document {i} about radio waves and {'bread ' * (i % 4)}" for i in range(30)}
RERANK_STAGES = {"gather", "encode_query", "score", "fusion"}
# Delays far above what the tiny model's stages take even on a loaded machine, so that a stage
# charged with its neighbour's delay shows whatever the load.
FIRST_STAGE_DELAY = 0.25
SCORE_DELAY = 0.5


class _SlowSearcher:
    """A first stage that takes FIRST_STAGE_DELAY seconds per call."""

    def search(self, q, k=10):
        time.sleep(FIRST_STAGE_DELAY)
        return [SimpleNamespace(docid=d, score=float(len(DOCS) - i)) for i, d in enumerate(list(DOCS)[:k])]

    def batch_search(self, queries, qids, k=10, threads=1):
        time.sleep(FIRST_STAGE_DELAY)
        return {qid: self.search(q, k) for q, qid in zip(queries, qids)}


def _slow_scoring(model):
    """The model with SCORE_DELAY seconds added to each ``score`` call."""
    score = model.score

    def slow(query_state, reps):
        time.sleep(SCORE_DELAY)
        return score(query_state, reps)

    model.score = slow
    return model


def test_search_records_each_stage(tiny_model_factory, tmp_path):
    model = _slow_scoring(tiny_model_factory())
    store = CandidateStore.build(tmp_path / "s", model, DOCS.items())
    searcher = RerankingSearcher(_SlowSearcher(), Reranker(model, store), depth=20)
    assert searcher.last_timings == {}
    start = time.perf_counter()
    searcher.search("radio waves", k=5)
    wall = time.perf_counter() - start
    t = searcher.last_timings
    assert set(t) == {"first_stage"} | RERANK_STAGES
    assert all(s >= 0 for s in t.values())
    assert sum(t.values()) <= wall
    # Each delay lands in its own stage, not in a neighbour.
    assert FIRST_STAGE_DELAY <= t["first_stage"] < SCORE_DELAY
    assert SCORE_DELAY <= t["score"]
    assert max(t["gather"], t["encode_query"], t["fusion"]) < FIRST_STAGE_DELAY
    assert searcher.reranker.last_timings == {s: t[s] for s in RERANK_STAGES}


def test_batch_search_sums_over_queries_and_timings_accumulate(tiny_model_factory, tmp_path):
    model = _slow_scoring(tiny_model_factory())
    store = CandidateStore.build(tmp_path / "s", model, DOCS.items())
    searcher = RerankingSearcher(_SlowSearcher(), Reranker(model, store), depth=20, queries_per_rerank=2)
    queries = ["radio", "waves", "bread"]
    searcher.batch_search(queries, ["a", "b", "c"], k=5)
    t = searcher.last_timings
    assert t["score"] >= len(queries) * SCORE_DELAY  # one score call per query, summed
    # the stub's batch_search sleeps once and then once per query
    assert (1 + len(queries)) * FIRST_STAGE_DELAY <= t["first_stage"] < t["score"]

    # A caller's timings dict accumulates across calls; last_timings holds the last call only.
    reranker = Reranker(model, store)
    totals: dict[str, float] = {}
    for _ in range(2):
        reranker.rerank_many(["radio", "waves"], [list(DOCS)[:10], list(DOCS)[5:15]], timings=totals)
    assert set(totals) == RERANK_STAGES
    assert totals["score"] >= 4 * SCORE_DELAY
    assert 2 * SCORE_DELAY <= reranker.last_timings["score"] < totals["score"]
