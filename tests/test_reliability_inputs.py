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
  float32 block, nothing per candidate in Python beyond the docid list), and
  ``Reranker(model, store).rerank`` returns every one exactly once, best first, with exactly the
  scores of the model's chunked ``score`` (``SCORE_CHUNK`` candidates at a time), its peak extra
  memory a small multiple of that block (the full size is ``-m slow``; 10,000 in the fast run).
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mixencoder import CandidateStore, Reranker, RerankingSearcher
from mixencoder.first_stage.dense import DenseSearcher
from mixencoder.models.base import CandidateReps
from mixencoder.models.mixencoder import SCORE_CHUNK
from reliability_support import HashScorer, PeakRSS, make_docs, store_from_reps

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


def _reps_like_the_models(model, n: int, seed: int = 0) -> CandidateReps:
    """``n`` distinct candidate reps where the model puts them: 1,000 real encodings, each
    repeated with a little noise (encoding 100,000 texts would take a minute on 2 cores)."""
    pool = model.encode_candidates([f"passage {i} about lobster {i % 97} rolls" for i in range(1000)],
                                   batch_size=500, show_progress_bar=False)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.arange(n) % len(pool)
    return CandidateReps(
        pool.vectors[idx] + 0.05 * torch.randn(pool.vectors[idx].shape, generator=gen),
        pool.lengths[idx],
        pool.pooled[idx] + 0.05 * torch.randn(pool.pooled[idx].shape, generator=gen),
    )


@pytest.mark.parametrize("n", [10_000, pytest.param(100_000, marks=pytest.mark.slow)])
def test_rerank_100k_candidates_through_a_real_store(tiny_model_factory, tmp_path, n) -> None:
    model = tiny_model_factory(candidate_max_length=64)
    docids = [f"d{i}" for i in range(n)]
    t0 = time.perf_counter()
    store_from_reps(tmp_path / "s", model, docids, _reps_like_the_models(model, n))
    build_s = time.perf_counter() - t0
    store = CandidateStore.open(tmp_path / "s")  # nothing mapped or read yet
    reranker = Reranker(model, store)
    query = "lobster rolls in the city"
    request = [docids[i] for i in np.random.default_rng(1).permutation(n)]
    gc.collect()
    with PeakRSS() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        ranked = reranker.rerank(query, request)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0

    # Every candidate exactly once, best first, ties by docid.
    assert len(ranked) == n and {r.docid for r in ranked} == set(docids)
    keys = [(-r.score, r.docid) for r in ranked]
    assert keys == sorted(keys)
    assert len({r.score for r in ranked}) > n // 2  # a real ordering, not a pile of ties
    # Exactly the model's own chunked scoring of the same stored reps.
    direct = model.score(model.encode_query(query), store.gather(request)).tolist()
    assert {r.docid: r.score for r in ranked} == dict(zip(request, direct))

    # Bounded memory: the gathered float32 block (vectors + pooled) twice over (the block and the
    # store's mapped float16 pages), a few hundred bytes of Python objects per candidate
    # (docid, score, RankedDoc) and a constant (one SCORE_CHUNK's activations, allocator slack).
    # Measured on 2 busy cores: 12 MB for 10,000 candidates, 40-61 MB for 100,000.
    block = n * (store.dim * int(store.gather(request[:1]).vectors.shape[1]) + store.pooled_dim) * 4
    bound = 2 * block + 300 * n + 48 * 2**20
    print(f"\nrerank of {n} candidates: {seconds:.1f} s ({cpu:.1f} s CPU), peak extra RSS {mem.extra / 2**20:.0f} MB "
          f"(block {block / 2**20:.1f} MB, bound {bound / 2**20:.0f} MB); store written in "
          f"{build_s:.1f} s; SCORE_CHUNK={SCORE_CHUNK}")
    assert mem.extra < bound, (mem.extra / 2**20, bound / 2**20)
