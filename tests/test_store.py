"""Tests of mixencoder.store.CandidateStore with a small deterministic fake scorer."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pytest
import torch

from mixencoder.models.base import CandidateReps
from mixencoder.store import CandidateStore, IncompleteStoreError, StoreCorruptError
from mixencoder.store.build import BATCHES_PER_CALL

COLLECTION = Path("/work/shared/data/msmarco/dl20/collection.tsv")


class FakeScorer:
    """Implements the Scorer protocol; every rep is a pure function of (seed, text).

    Args:
        k: fixed number of vectors per candidate, or None for 1..max_vectors (varies by text).
        pooled: whether ``encode_candidates`` returns pooled vectors.
    """

    search_metric = "ip"

    def __init__(
        self,
        dim: int = 8,
        pooled_dim: int = 6,
        k: int | None = None,
        max_vectors: int = 5,
        seed: int = 0,
        pooled: bool = True,
    ) -> None:
        self.dim, self.pooled_dim, self.k, self.max_vectors = dim, pooled_dim, k, max_vectors
        self.seed, self.pooled = seed, pooled
        self.encoded: list[str] = []  # every text ever encoded, to check what resume re-encodes
        self.batch_sizes: list[int] = []

    def candidate_fingerprint(self) -> dict[str, Any]:
        return {
            "sha256": hashlib.sha256(f"fake-{self.seed}".encode()).hexdigest(),
            "dim": self.dim,
            "layout": "fixed" if self.k else "variable",
        }

    def _rng(self, text: str, salt: str = "") -> np.random.Generator:
        digest = hashlib.sha256(f"{self.seed}:{salt}:{text}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def expected(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The float32 (vectors (m, dim), pooled (pooled_dim,)) this model gives ``text``."""
        rng = self._rng(text)
        m = self.k if self.k else int(rng.integers(1, self.max_vectors + 1))
        vectors = rng.standard_normal((m, self.dim)).astype(np.float32)
        pooled = rng.standard_normal(self.pooled_dim).astype(np.float32)
        return vectors, pooled

    def encode_candidates(
        self, texts: Sequence[str], *, batch_size: int = 32, show_progress_bar: bool | None = None
    ) -> CandidateReps:
        self.encoded.extend(texts)
        self.batch_sizes.append(len(texts))
        outs = [self.expected(t) for t in texts]
        pooled = np.stack([p for _, p in outs]) if self.pooled else None
        return CandidateReps.from_list([v for v, _ in outs], pooled)

    def encode_query(self, query: str) -> Any:
        return self.encode_queries_pooled([query])[0]

    def score(self, query_state: Any, reps: CandidateReps) -> torch.Tensor:
        assert reps.pooled is not None
        return reps.pooled @ torch.as_tensor(query_state)

    def encode_queries_pooled(self, queries: Sequence[str]) -> np.ndarray:
        return np.stack(
            [self._rng(q, "query").standard_normal(self.pooled_dim) for q in queries]
        ).astype(np.float32)


def make_docs(n: int, prefix: str = "d", start: int = 0) -> list[tuple[str, str]]:
    return [(f"{prefix}{i}", f"text of passage {prefix}{i}") for i in range(start, start + n)]


def fp16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float32)


def assert_reps_match(
    reps: CandidateReps, model: FakeScorer, texts: list[str], dtype: str = "float16"
) -> None:
    """Gathered reps equal the model's output rounded to the store dtype, with zero padding."""
    rnd = fp16 if dtype == "float16" else (lambda a: a)
    assert reps.vectors.dtype == torch.float32
    assert len(reps) == len(texts)
    for i, text in enumerate(texts):
        vectors, pooled = model.expected(text)
        n = int(reps.lengths[i])
        assert n == len(vectors)
        np.testing.assert_array_equal(reps.vectors[i, :n].numpy(), rnd(vectors))
        assert not reps.vectors[i, n:].any(), "padding must be zeros"
        if model.pooled:
            assert reps.pooled is not None
            np.testing.assert_array_equal(reps.pooled[i].numpy(), rnd(pooled))


def store_files(path: Path) -> dict[str, str]:
    """sha256 of every shard file, keyed by relative path (metadata JSON excluded)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.glob("shard-*/*"))
        if p.suffix != ".json"
    }


def crashing(docs: list[tuple[str, str]], after: int) -> Iterator[tuple[str, str]]:
    for i, doc in enumerate(docs):
        if i == after:
            raise RuntimeError("simulated crash")
        yield doc


# --- roundtrip and lookup --------------------------------------------------------------------


def test_roundtrip_variable_lengths_fp16(tmp_path: Path) -> None:
    model = FakeScorer()
    docs = make_docs(50)
    store = CandidateStore.build(tmp_path / "s", model, iter(docs), batch_size=2)
    assert len(set(int(x) for x in store.gather([d for d, _ in docs]).lengths)) > 1

    reopened = CandidateStore.open(tmp_path / "s", model=model)
    assert len(reopened) == 50 and reopened.dim == 8 and reopened.pooled_dim == 6
    order = [d for d, _ in docs]
    random.Random(0).shuffle(order)
    texts = dict(docs)
    reps = reopened.gather(order)
    assert_reps_match(reps, model, [texts[d] for d in order])
    assert reps.vectors.shape == (50, int(reps.lengths.max()), 8)
    # streamed: each encode call gets at most BATCHES_PER_CALL batches, never the whole corpus
    assert max(model.batch_sizes) <= 2 * BATCHES_PER_CALL < 50


def test_roundtrip_fixed_k_float32_and_order(tmp_path: Path) -> None:
    model = FakeScorer(k=3)
    docs = make_docs(20)
    store = CandidateStore.build(tmp_path / "s", model, docs, dtype="float32")
    request = ["d7", "d0", "d7", "d19", "d3"]  # order and repeats are honoured
    reps = store.gather(request)
    assert reps.vectors.shape == (5, 3, 8)
    assert reps.lengths.tolist() == [3] * 5
    assert_reps_match(reps, model, [f"text of passage {d}" for d in request], dtype="float32")
    assert store.gather([]).vectors.shape == (0, 0, 8)


def test_open_is_memory_mapped_and_records_throughput(tmp_path: Path) -> None:
    model = FakeScorer()
    store = CandidateStore.build(tmp_path / "s", model, make_docs(10))
    stats = store.last_build_stats
    assert stats is not None and stats["docs"] == 10 and stats["docs_per_s"] > 0
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["build_docs_per_s"] == pytest.approx(stats["docs_per_s"])
    assert manifest["fingerprint"] == model.candidate_fingerprint()
    assert manifest["count"] == 10 and manifest["dtype"] == "float16"
    opened = CandidateStore.open(tmp_path / "s")
    assert opened.last_build_stats is None
    assert all(isinstance(s.vectors, np.memmap) for s in opened.rows.shards)
    assert isinstance(opened.rows.sorted_docids, np.memmap)
    listed = opened.manifest["shards"] + [opened.manifest["index"]]
    assert opened.nbytes == sum(f["bytes"] for part in listed for f in part["files"].values())
    assert opened.bytes_per_candidate() == pytest.approx(opened.nbytes / 10)
    assert opened.bytes_per_candidate(include_search_index=False) < opened.bytes_per_candidate()


def test_rows_view_maps_docids_rows_and_vectors(tmp_path: Path) -> None:
    model = FakeScorer()
    docs = make_docs(13)
    store = CandidateStore.build(tmp_path / "s", model, docs, shard_size=5, batch_size=2)
    view = store.rows
    assert [s.start for s in view.shards] == view.starts.tolist() == [0, 5, 10]
    assert view.num_rows == len(store) == 13 and view.generation == 0
    ids = ["d12", "d0", "d7", "nope"]
    rows = view.rows_of(ids)
    assert rows.tolist() == [12, 0, 7, -1]  # rows follow the build order, shard by shard
    assert view.docids_of(rows[:3]) == ids[:3]
    np.testing.assert_array_equal(view.pooled_of(rows[:3]), store.gather(ids[:3]).pooled.numpy())
    store.add(model, make_docs(2, prefix="n"))
    assert store.rows is not view and store.rows.generation == 1 and view.num_rows == 13
    assert store.rows.rows_of(["n1"]).tolist() == [14]


def test_missing_ids(tmp_path: Path) -> None:
    store = CandidateStore.build(tmp_path / "s", FakeScorer(), make_docs(10))
    assert "d3" in store and "nope" not in store and 3 not in store
    assert store.missing(["d1", "x1", "d2", "x2", "d1" * 40, "d1\x00"]) == [
        "x1",
        "x2",
        "d1" * 40,
        "d1\x00",
    ]
    with pytest.raises(KeyError) as err:
        store.gather(["d1", "x1", "x2", "d2"])
    assert "2 of 4" in str(err.value) and "x1" in str(err.value) and "x2" in str(err.value)
    with pytest.raises(TypeError, match="wrap it in a list"):
        store.gather("d1")


def test_multi_shard_is_transparent(tmp_path: Path) -> None:
    model = FakeScorer()
    docs = make_docs(23)
    one = CandidateStore.build(tmp_path / "one", model, docs)
    many = CandidateStore.build(tmp_path / "many", model, docs, shard_size=5, batch_size=3)
    assert len(many.manifest["shards"]) == 5
    assert [s["count"] for s in many.manifest["shards"]] == [5, 5, 5, 5, 3]
    order = [f"d{i}" for i in (22, 0, 5, 4, 17, 9, 10)]
    a, b = one.gather(order), many.gather(order)
    torch.testing.assert_close(a.vectors, b.vectors, rtol=0, atol=0)
    torch.testing.assert_close(a.pooled, b.pooled, rtol=0, atol=0)
    assert len(many) == 23 and many.missing(order) == []


def test_duplicate_docids_in_build(tmp_path: Path) -> None:
    docs = make_docs(10) + [("d4", "again")]
    with pytest.raises(ValueError, match="d4"):
        CandidateStore.build(tmp_path / "s", FakeScorer(), docs, shard_size=4)


def test_bad_inputs_have_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="pairs"):
        CandidateStore.build(tmp_path / "a", FakeScorer(), ["just a string"])
    with pytest.raises(ValueError, match="with_pooled=False"):
        CandidateStore.build(tmp_path / "b", FakeScorer(pooled=False), make_docs(3))
    with pytest.raises(ValueError, match="mode"):
        CandidateStore.build(tmp_path / "c", FakeScorer(), make_docs(3), mode="append")
    with pytest.raises(ValueError, match="nothing to store"):
        CandidateStore.build(tmp_path / "d", FakeScorer(), [])


# --- modes, crash safety and corruption ------------------------------------------------------


def test_create_refuses_existing_and_overwrite_replaces(tmp_path: Path) -> None:
    path = tmp_path / "s"
    CandidateStore.build(path, FakeScorer(), make_docs(5))
    with pytest.raises(FileExistsError, match="mode='overwrite'.*mode='resume'"):
        CandidateStore.build(path, FakeScorer(), make_docs(5))
    store = CandidateStore.build(path, FakeScorer(seed=1), make_docs(7, "e"), mode="overwrite")
    assert len(store) == 7 and "d0" not in store and "e6" in store
    assert CandidateStore.open(path).fingerprint == FakeScorer(seed=1).candidate_fingerprint()

    other = tmp_path / "unrelated"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a candidate store"):
        CandidateStore.build(other, FakeScorer(), make_docs(3), mode="overwrite")
    assert (other / "notes.txt").exists()


def test_resume_after_crash_equals_clean_build(tmp_path: Path) -> None:
    docs = make_docs(40)
    kwargs = dict(shard_size=7, batch_size=3)
    clean = CandidateStore.build(tmp_path / "clean", FakeScorer(), docs, **kwargs)

    path = tmp_path / "crashed"
    model = FakeScorer()
    with pytest.raises(RuntimeError, match="simulated crash"):
        CandidateStore.build(path, model, crashing(docs, after=24), **kwargs)
    # Shards 0..2 (21 docs) finished; the partial fourth was discarded, no manifest exists.
    assert sorted(p.name for p in path.glob("shard-*")) == [f"shard-0000{i}" for i in range(3)]
    assert not (path / "manifest.json").exists()
    assert not list(path.glob(".tmp-*"))
    with pytest.raises(IncompleteStoreError, match="did not finish.*mode='resume'"):
        CandidateStore.open(path)
    with pytest.raises(FileExistsError, match="unfinished"):
        CandidateStore.build(path, model, docs, **kwargs)

    resumer = FakeScorer()
    resumed = CandidateStore.build(path, resumer, iter(docs), mode="resume", **kwargs)
    assert resumer.encoded == [t for _, t in docs[21:]]  # finished shards were not re-encoded
    assert store_files(path) == store_files(tmp_path / "clean")
    strip = lambda m: {k: v for k, v in m.items() if k != "build_docs_per_s"}  # noqa: E731
    assert strip(resumed.manifest) == strip(clean.manifest)
    assert_reps_match(resumed.gather([d for d, _ in docs]), resumer, [t for _, t in docs])

    # Resuming a finished store is a no-op; a different corpus or arguments are refused.
    again = CandidateStore.build(path, FakeScorer(), docs, mode="resume", **kwargs)
    assert store_files(path) == store_files(tmp_path / "clean") and len(again) == 40
    with pytest.raises(ValueError, match="corpus"):
        CandidateStore.build(path, FakeScorer(), make_docs(40, "x"), mode="resume", **kwargs)
    with pytest.raises(ValueError, match="shard_size"):
        CandidateStore.build(path, FakeScorer(), docs, mode="resume", shard_size=8)


def test_resume_refuses_a_longer_corpus_after_a_partial_last_shard(tmp_path: Path) -> None:
    path = tmp_path / "s"
    CandidateStore.build(path, FakeScorer(), make_docs(10), shard_size=4)  # shards 4, 4, 2
    (path / "manifest.json").unlink()  # as if it crashed just before the manifest
    with pytest.raises(ValueError, match="partial.*corpus changed"):
        CandidateStore.build(path, FakeScorer(), make_docs(12), mode="resume", shard_size=4)
    resumed = CandidateStore.build(path, FakeScorer(), make_docs(10), mode="resume", shard_size=4)
    assert len(resumed) == 10


def test_resume_refuses_different_model(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with pytest.raises(RuntimeError):
        CandidateStore.build(path, FakeScorer(), crashing(make_docs(10), 6), shard_size=3)
    with pytest.raises(ValueError, match="different model"):
        CandidateStore.build(path, FakeScorer(seed=5), make_docs(10), mode="resume", shard_size=3)


def test_store_without_manifest_refuses_to_open(tmp_path: Path) -> None:
    path = tmp_path / "s"
    CandidateStore.build(path, FakeScorer(), make_docs(5))
    (path / "manifest.json").unlink()
    with pytest.raises(IncompleteStoreError, match="mode='resume'"):
        CandidateStore.open(path)
    with pytest.raises(FileNotFoundError):
        CandidateStore.open(tmp_path / "nowhere")


def test_truncated_vectors_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "s"
    CandidateStore.build(path, FakeScorer(), make_docs(12), shard_size=5)
    victim = path / "shard-00001" / "vectors.npy"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 10])
    with pytest.raises(StoreCorruptError, match=r"shard-00001[/\\]vectors\.npy.*truncated"):
        CandidateStore.open(path)
    (path / "shard-00001" / "offsets.npy").unlink()
    victim.write_bytes(data)
    with pytest.raises(StoreCorruptError, match=r"offsets\.npy is missing"):
        CandidateStore.open(path)


def test_verify_detects_changed_content(tmp_path: Path) -> None:
    path = tmp_path / "s"
    store = CandidateStore.build(path, FakeScorer(), make_docs(12))
    store.verify()
    victim = path / "shard-00000" / "pooled.npy"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF  # same size: only the checksum can notice
    victim.write_bytes(bytes(data))
    reopened = CandidateStore.open(path)
    with pytest.raises(StoreCorruptError, match=r"pooled\.npy has a different sha256"):
        reopened.verify()


def test_fingerprint_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "s"
    store = CandidateStore.build(path, FakeScorer(), make_docs(5))
    store.check_compatible(FakeScorer())
    with pytest.raises(ValueError, match=r"different model.*\['sha256'\]"):
        store.check_compatible(FakeScorer(seed=3))
    with pytest.raises(ValueError, match=r"\['layout'\]"):
        CandidateStore.open(path, model=FakeScorer(k=2))


# --- add ---------------------------------------------------------------------------------------


def test_add_appends_and_rejects_duplicates(tmp_path: Path) -> None:
    model = FakeScorer()
    path = tmp_path / "s"
    store = CandidateStore.build(path, model, make_docs(10), shard_size=4)
    store.add(model, make_docs(6, start=10), batch_size=4)
    assert len(store) == 16 and store.last_build_stats["docs"] == 6
    reopened = CandidateStore.open(path)
    assert len(reopened) == 16
    texts = ["text of passage d15", "text of passage d0"]
    assert_reps_match(reopened.gather(["d15", "d0"]), model, texts)

    before = store_files(path)
    with pytest.raises(ValueError, match=r"already in the store.*d3"):
        store.add(model, [("new1", "a"), ("d3", "b")])
    with pytest.raises(ValueError, match="duplicate docids.*n1"):
        store.add(model, [("n1", "a"), ("n2", "b"), ("n1", "c")])
    with pytest.raises(ValueError, match="different model"):
        store.add(FakeScorer(seed=9), [("n9", "a")])
    # A failure after a new shard was finished (shard_size=4) still leaves no trace.
    with pytest.raises(ValueError, match="d0"):
        store.add(model, make_docs(5, "late") + [("d0", "x")])
    assert store_files(path) == before
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["manifest.json", store.manifest["index"]["name"]] + [f"shard-0000{i}" for i in range(5)]
    )
    assert len(CandidateStore.open(path)) == 16 and "new1" not in store and "n2" not in store


def test_add_interrupted_after_its_commit_keeps_the_new_state(tmp_path: Path, monkeypatch) -> None:
    """A failure in the clean-up after the manifest was replaced (e.g. Ctrl-C) must not delete
    the shards that the committed manifest lists."""
    from mixencoder.store import layout

    model = FakeScorer()
    path = tmp_path / "s"
    store = CandidateStore.build(path, model, make_docs(6), shard_size=4)

    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(layout, "remove_unreferenced", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.add(model, make_docs(3, prefix="n"))
    monkeypatch.undo()
    reopened = CandidateStore.open(path)
    assert len(reopened) == 9
    assert_reps_match(reopened.gather(["n2", "d5"]), model, ["text of passage n2", "text of passage d5"])
    reopened.verify()


# --- dense search ------------------------------------------------------------------------------


def test_search_matches_brute_force(tmp_path: Path) -> None:
    model = FakeScorer(pooled_dim=16)
    docs = make_docs(60)
    store = CandidateStore.build(tmp_path / "s", model, docs, shard_size=17)
    pooled = np.stack([fp16(model.expected(t)[1]) for _, t in docs])
    queries = model.encode_queries_pooled([f"query {i}" for i in range(4)])
    results = store.search(queries, k=10)
    for q, hits in zip(queries, results):
        scores = pooled @ q
        top = np.argsort(-scores)[:10]
        assert [d for d, _ in hits] == [docs[i][0] for i in top]
        np.testing.assert_allclose([s for _, s in hits], scores[top], rtol=1e-5)
    assert len(store.search(queries[:1], k=1000)[0]) == 60

    with pytest.raises(ValueError, match=r"shape \(nq, 16\).*q\[None, :\]"):
        store.search(queries[0], k=5)
    with pytest.raises(ValueError, match="positive"):
        store.search(queries, k=0)
    no_pooled = CandidateStore.build(tmp_path / "np", model, docs, with_pooled=False)
    assert no_pooled.pooled_dim is None and no_pooled.gather(["d1"]).pooled is None
    with pytest.raises(ValueError, match="no pooled vectors"):
        no_pooled.search(queries, k=5)


# --- real passages -----------------------------------------------------------------------------


def read_collection(n: int) -> Iterator[tuple[str, str]]:
    with open(COLLECTION, encoding="utf-8") as f:
        for line, _ in zip(f, range(n)):
            docid, text = line.rstrip("\n").split("\t", 1)
            yield docid, text


@pytest.mark.skipif(not COLLECTION.exists(), reason="MS MARCO DL20 sample not available")
def test_real_passages(tmp_path: Path) -> None:
    model = FakeScorer(dim=16, pooled_dim=12)
    store = CandidateStore.build(tmp_path / "s", model, read_collection(300), shard_size=128)
    docs = dict(read_collection(300))
    assert len(store) == len(docs) == 300
    ids = random.Random(1).sample(sorted(docs), 50)
    assert_reps_match(store.gather(ids), model, [docs[d] for d in ids])
    hits = store.search(model.encode_queries_pooled(["what is a civil record"]), k=5)[0]
    assert len(hits) == 5 and all(d in docs for d, _ in hits)
    assert 0 < store.bytes_per_candidate() == store.nbytes / 300


def test_docids_lists_every_live_candidate_once(tmp_path, tiny_model_factory):
    model = tiny_model_factory()
    docs = [(f"d{i}", f"text number {i}") for i in range(7)]
    store = CandidateStore.build(tmp_path / "s", model, docs, shard_size=3, show_progress_bar=False)
    assert sorted(store.docids()) == sorted(d for d, _ in docs) and len(store.docids()) == len(store)
