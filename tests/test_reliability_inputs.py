"""Inputs nobody wrote on purpose: empty and huge documents, odd queries, 100k candidates.

Documented behaviour, each tested here:

* an empty or whitespace-only document text: ``CandidateStore.build``/``add`` refuse it with a
  ``ValueError`` naming the docid and its position in ``docs`` (nothing to encode);
* an empty or whitespace-only query: ``Reranker.rerank`` and ``RerankingSearcher.search`` refuse
  it with a ``ValueError``; a query of control characters only is text and is scored;
* control characters, bidi overrides, a BOM or NUL inside a document: encoded like any text;
* a 1 MB document: truncated by the tokenizer to the model's ``candidate_max_length`` (so its
  reps cost what a short document's cost); build time and memory stay bounded;
* 100,000 candidates for one query: ``store.gather`` returns them in bounded memory (the padded
  float32 block, nothing per candidate in Python beyond the docid list).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from mixencoder import CandidateStore, Reranker, RerankingSearcher
from mixencoder.first_stage.dense import DenseSearcher
from reliability_support import HashScorer, make_docs

SMALL = dict(query_max_length=24, candidate_max_length=120)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.parametrize("text", ["", "   ", "\t\n", "\u3000"])
def test_empty_document_is_refused_naming_the_docid(tmp_path: Path, text: str) -> None:
    docs = make_docs(5) + [("blank-one", text)] + make_docs(3, prefix="z")
    with pytest.raises(ValueError, match=r"docs item 5 \(docid 'blank-one'\) has an empty"):
        CandidateStore.build(tmp_path / "s", HashScorer(), docs)
    store = CandidateStore.build(tmp_path / "t", HashScorer(), make_docs(5))
    with pytest.raises(ValueError, match=r"docid 'blank-one'"):
        store.add(HashScorer(), [("blank-one", text)])
    assert len(CandidateStore.open(tmp_path / "t")) == 5


def test_odd_queries_and_documents(tiny_model_factory, tmp_path: Path) -> None:
    model = tiny_model_factory(**SMALL)
    docs = [("ctrl", "a\x00b\x07c\x1b[31m red \u202e reversed \ufeff bom"),
            ("plain", "a plain passage about lobster rolls"),
            ("emoji", "\U0001F99E lobster \u0301\u0301 combining")]
    store = CandidateStore.build(tmp_path / "s", model, docs)
    reps = store.gather(["ctrl", "plain", "emoji"])
    assert np.isfinite(reps.vectors.numpy()).all()
    reranker = Reranker(model, store)
    for query in ["", "   ", "\n\t"]:
        with pytest.raises(ValueError, match="empty query"):
            reranker.rerank(query, ["plain"])
    searcher = RerankingSearcher(DenseSearcher(store, model), reranker, depth=3)
    with pytest.raises(ValueError, match="empty query"):
        searcher.search("  ")
    ranked = reranker.rerank("\x00\x07", ["ctrl", "plain", "emoji"])  # control chars are text
    assert sorted(r.docid for r in ranked) == ["ctrl", "emoji", "plain"]
    assert all(np.isfinite(r.score) for r in ranked)


def test_one_megabyte_document_is_truncated_with_bounded_cost(tiny_model_factory, tmp_path):
    model = tiny_model_factory(**SMALL)
    big = "lobster roll " * 80_000  # ~1 MB
    assert len(big) >= 1_000_000
    before = rss_mb()
    t0 = time.perf_counter()
    store = CandidateStore.build(tmp_path / "s", model, [("big", big), ("small", "lobster roll")])
    seconds = time.perf_counter() - t0
    assert seconds < 60 and rss_mb() - before < 500, (seconds, rss_mb() - before)
    reps = store.gather(["big", "small"])
    assert reps.vectors.shape[1] == 1 or reps.lengths.max() <= SMALL["candidate_max_length"]
    # Truncated: the 1 MB text and its first few thousand characters give the same reps.
    head = CandidateStore.build(tmp_path / "h", model, [("big", big[:5000])]).gather(["big"])
    assert (head.vectors == reps.vectors[:1]).all()


@pytest.mark.parametrize("n", [100_000])
def test_100k_candidates_for_one_query(tmp_path: Path, n: int) -> None:
    model = HashScorer(dim=8, pooled_dim=8, max_vectors=2)
    store = CandidateStore.build(tmp_path / "s", model, make_docs(n), shard_size=25_000,
                                 batch_size=4096)
    ids = [f"d{i}" for i in np.random.default_rng(0).permutation(n)]
    before = rss_mb()
    t0 = time.perf_counter()
    reps = store.gather(ids)
    seconds = time.perf_counter() - t0
    block_mb = reps.vectors.numel() * 4 / 2**20
    assert reps.vectors.shape == (n, 2, 8) and seconds < 30
    assert rss_mb() - before < 4 * block_mb + 100, (rss_mb() - before, block_mb)
    want_v, want_p = model.expected("text of passage " + ids[12345])
    np.testing.assert_array_equal(reps.pooled[12345].numpy(),
                                  want_p.astype(np.float16).astype(np.float32))
    assert store.missing(ids + ["nope"]) == ["nope"]
