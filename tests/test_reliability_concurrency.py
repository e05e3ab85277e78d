"""Concurrency: shared objects from 8 threads equal serial calls; readers beside writers.

* One ``Reranker``, one ``RerankingSearcher`` (over the dense first stage of the same store) and
  one ``CandidateStore`` used from 8 threads at once give exactly the serial results, on a real
  store of DL20 passages encoded by the bundled all-MiniLM-L6-v2.
* Two processes open and read the same store at once and see the same bytes.
* A reader that keeps opening a store while another process runs ``add()`` (and a fresh
  ``build``, and ``build(mode='overwrite')``) sees either the old or the new committed state,
  never a mix: every opened store has one of the committed row counts, and every rep it returns
  is the one its docid was encoded with.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from mixencoder import CandidateStore, Reranker, RerankingSearcher
from mixencoder.data import read_corpus, read_topics
from mixencoder.first_stage.dense import DenseSearcher
from mixencoder.store import IncompleteStoreError, StoreCorruptError
from reliability_support import PYTHON, HashScorer, make_docs, subprocess_env

THREADS = 8
N_DOCS = 48


@pytest.fixture(scope="module")
def real(shared_data: Path, minilm, tmp_path_factory: pytest.TempPathFactory):
    docs = []
    for doc in read_corpus(shared_data / "msmarco/dl20/collection.tsv"):
        docs.append((doc.docid, doc.text))
        if len(docs) == N_DOCS:
            break
    path = tmp_path_factory.mktemp("conc") / "store"
    store = CandidateStore.build(path, minilm, docs, shard_size=20, batch_size=16)
    queries = list(read_topics(shared_data / "msmarco/dl20/queries.tsv").items())[:4]
    return store, docs, queries


def _in_threads(fn, items, repeats: int = 2):
    """Run fn over items (shuffled, repeated) from THREADS threads; results keyed by item."""
    work = [item for _ in range(repeats) for item in items]
    random.Random(0).shuffle(work)
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(fn, work))
    out: dict = {}
    for item, result in zip(work, results):
        out.setdefault(item, []).append(result)
    return out


def test_reranker_from_8_threads_equals_serial(real, minilm) -> None:
    store, docs, queries = real
    reranker = Reranker(minilm, store)
    docids = [d for d, _ in docs]
    serial = {q: reranker.rerank(q, docids) for _, q in queries}
    threaded = _in_threads(lambda q: reranker.rerank(q, docids), [q for _, q in queries])
    for q, runs in threaded.items():
        for run in runs:
            assert [r.docid for r in run] == [r.docid for r in serial[q]]
            np.testing.assert_allclose([r.score for r in run], [r.score for r in serial[q]],
                                       rtol=0, atol=1e-5)


def test_reranking_searcher_from_8_threads_equals_serial(real, minilm) -> None:
    store, _, queries = real
    searcher = RerankingSearcher(DenseSearcher(store, minilm), Reranker(minilm, store), depth=30)
    serial = {q: searcher.search(q, k=10) for _, q in queries}
    threaded = _in_threads(lambda q: searcher.search(q, k=10), [q for _, q in queries])
    for q, runs in threaded.items():
        for run in runs:
            assert [h.docid for h in run] == [h.docid for h in serial[q]]
            np.testing.assert_allclose([h.score for h in run], [h.score for h in serial[q]],
                                       rtol=0, atol=1e-5)
    qids, texts = [qid for qid, _ in queries], [q for _, q in queries]
    batch = searcher.batch_search(texts, qids, k=10, threads=THREADS)
    assert {qid: [h.docid for h in hits] for qid, hits in batch.items()} == {
        qid: [h.docid for h in serial[q]] for qid, q in queries
    }


def test_store_gather_and_search_from_8_threads_equal_serial(real, minilm) -> None:
    store, docs, queries = real
    rng = random.Random(1)
    requests = [tuple(rng.sample([d for d, _ in docs], 40)) for _ in range(16)]
    serial = {r: store.gather(list(r)) for r in requests}
    threaded = _in_threads(lambda r: store.gather(list(r)), requests)
    for r, results in threaded.items():
        for reps in results:
            assert (reps.vectors == serial[r].vectors).all()
            assert (reps.pooled == serial[r].pooled).all()
    vectors = minilm.encode_queries_pooled([q for _, q in queries])
    want = store.search(vectors, 20)
    fresh = CandidateStore.open(store.path)  # FAISS indexes opened lazily, by racing threads
    got = _in_threads(lambda i: fresh.search(vectors[i : i + 1], 20)[0], list(range(len(queries))))
    for i, results in got.items():
        for hits in results:
            assert [d for d, _ in hits] == [d for d, _ in want[i]]


_READER = textwrap.dedent(
    """
    import hashlib, json, sys
    from mixencoder import CandidateStore
    store = CandidateStore.open(sys.argv[1])
    docids = store.docids()
    h = hashlib.sha256()
    for _ in range(20):
        reps = store.gather(docids)
    h.update(reps.vectors.numpy().tobytes()); h.update(reps.pooled.numpy().tobytes())
    print(json.dumps({"n": len(docids), "sha": h.hexdigest()}))
    """
)


def test_two_processes_read_one_store_at_once(real) -> None:
    store = real[0]
    before = {p: p.read_bytes() for p in store.path.rglob("*") if p.is_file()}
    procs = [
        subprocess.Popen([PYTHON, "-c", _READER, str(store.path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=subprocess_env(), text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    results = [json.loads(o) for o, _ in outs]
    reps = store.gather(store.docids())
    import hashlib

    h = hashlib.sha256(reps.vectors.numpy().tobytes())
    h.update(reps.pooled.numpy().tobytes())
    assert results[0] == results[1] == {"n": N_DOCS, "sha": h.hexdigest()}
    assert {p: p.read_bytes() for p in store.path.rglob("*") if p.is_file()} == before


# --- a reader beside a writer ------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys, time
    from mixencoder import CandidateStore
    from reliability_support import HashScorer, make_docs
    path, what, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = HashScorer()
    if what == "add":
        store = CandidateStore.open(path)
        for r in range(rounds):
            store.add(model, make_docs(7, prefix=f"r{r}-"), batch_size=3)
    elif what == "overwrite":
        for r in range(rounds):
            CandidateStore.build(path, model, make_docs(20 + r), shard_size=8, batch_size=4,
                                 mode="overwrite")
    print("done", flush=True)
    """
)


def _check_snapshot(store: CandidateStore, model: HashScorer, texts: dict[str, str]) -> None:
    docids = store.docids()
    reps = store.gather(docids)
    for i, d in enumerate(docids):
        vectors, pooled = model.expected(texts[d])
        n = int(reps.lengths[i])
        assert n == len(vectors), d
        np.testing.assert_array_equal(reps.vectors[i, :n].numpy(),
                                      vectors.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(reps.pooled[i].numpy(),
                                      pooled.astype(np.float16).astype(np.float32))


def _texts_after(rounds: int) -> dict[int, dict[str, str]]:
    """docid -> text of every committed state of the add writer (keyed by count)."""
    texts = dict(make_docs(20))
    states = {len(texts): dict(texts)}
    for r in range(rounds):
        texts.update(make_docs(7, prefix=f"r{r}-"))
        states[len(texts)] = dict(texts)
    return states


def _reader_loop(path: Path, proc: subprocess.Popen, check) -> dict[str, int]:
    seen: dict = {"opened": 0, "refused": 0, "why": []}
    while proc.poll() is None:
        try:
            store = CandidateStore.open(path)
        except (IncompleteStoreError, FileNotFoundError, StoreCorruptError) as e:
            seen["refused"] += 1
            seen["why"].append(f"open: {e!r}")
            continue
        try:
            check(store)
        except (StoreCorruptError, FileNotFoundError) as e:
            # Only overwrite deletes files an opened store maps lazily; counted, never garbage.
            seen["refused"] += 1
            seen["why"].append(f"read: {e!r}")
            continue
        seen["opened"] += 1
    return seen


@pytest.mark.parametrize("rounds", [12, pytest.param(60, marks=pytest.mark.slow)])
def test_reader_during_add_sees_old_or_new_state(tmp_path: Path, rounds: int) -> None:
    path = tmp_path / "store"
    model = HashScorer()
    CandidateStore.build(path, model, make_docs(20), shard_size=8, batch_size=4)
    states = _texts_after(rounds)

    def check(store: CandidateStore) -> None:
        n = len(store)
        assert n in states, f"opened a store with {n} rows: not a committed state"
        assert set(store.docids()) == set(states[n]), f"{n} docids that match no committed state"
        _check_snapshot(store, model, states[n])

    proc = subprocess.Popen([PYTHON, "-c", _WRITER, str(path), "add", str(rounds)],
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen = _reader_loop(path, proc, check)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert seen["opened"] >= 3 and seen["refused"] == 0, seen
    final = CandidateStore.open(path)
    assert len(final) == max(len(t) for t in states.values())
    check(final)
    assert final.path.is_dir() and not list(path.glob(".tmp-*"))


def test_reader_during_overwrite_sees_a_complete_store_or_a_clear_refusal(tmp_path: Path) -> None:
    path = tmp_path / "store"
    model = HashScorer()
    CandidateStore.build(path, model, make_docs(19), shard_size=8, batch_size=4)
    rounds = 6
    allowed = {19} | {20 + r for r in range(rounds)}

    def check(store: CandidateStore) -> None:
        assert len(store) in allowed
        _check_snapshot(store, model, dict(make_docs(len(store))))

    proc = subprocess.Popen([PYTHON, "-c", _WRITER, str(path), "overwrite", str(rounds)],
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen = _reader_loop(path, proc, check)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert seen["opened"] + seen["refused"] >= 3, seen
    assert len(CandidateStore.open(path)) == 20 + rounds - 1
