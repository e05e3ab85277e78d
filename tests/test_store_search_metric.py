"""CandidateStore.search_metric: cosine stores rank like the model; ip and old stores as before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from mixencoder import CandidateStore

DOCS = [(f"d{i}", f"passage number {i} about {w}") for i, w in enumerate(
    ["bread", "ovens", "rivers", "tax law", "cats", "baking bread at home", "mountains",
     "the history of flour", "python code", "sourdough starters", "birds", "civil records",
     "whole wheat", "yeast", "sailing", "kneading dough", "trains", "pasta", "gardens", "rye"]
)]
QUERIES = ["how to bake bread", "what is a civil record", "rivers and mountains"]


def crashing(docs: list[tuple[str, str]], after: int) -> Iterator[tuple[str, str]]:
    for i, doc in enumerate(docs):
        if i == after:
            raise RuntimeError("simulated crash")
        yield doc


def brute_force(store: CandidateStore, queries: np.ndarray, cosine: bool) -> tuple[list[str], np.ndarray]:
    ids = [d for d, _ in DOCS]
    pooled = store.gather(ids).pooled.numpy().astype(np.float64)
    q = np.asarray(queries, dtype=np.float64)
    if cosine:
        pooled = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return ids, q @ pooled.T


def assert_search_matches(store: CandidateStore, queries: np.ndarray, cosine: bool, k: int = 5,
                          **kwargs) -> None:
    ids, scores = brute_force(store, queries, cosine)
    for qi, hits in enumerate(store.search(queries, k, **kwargs)):
        top = np.argsort(-scores[qi], kind="stable")[:k]
        assert [d for d, _ in hits] == [ids[i] for i in top]
        np.testing.assert_allclose([s for _, s in hits], scores[qi][top], rtol=1e-4, atol=1e-5)


def test_models_declare_their_metric(tiny_model_factory) -> None:
    from mixencoder.models.dual import DualEncoder

    model = tiny_model_factory()
    assert model.config.similarity == "cosine" and model.search_metric == "cosine"
    assert tiny_model_factory(similarity="dot").search_metric == "ip"
    assert DualEncoder(model).search_metric == "cosine"
    assert DualEncoder(model, similarity="dot").search_metric == "ip"


def test_cosine_store_search_is_brute_force_cosine(tmp_path: Path, tiny_model_factory) -> None:
    model = tiny_model_factory()
    store = CandidateStore.build(tmp_path / "s", model, DOCS, shard_size=7, show_progress_bar=False)
    assert store.search_metric == "cosine" == store.manifest["search_metric"]
    assert all(e["search_metric"] == "cosine" for e in store.manifest["shards"])
    queries = model.encode_queries_pooled(QUERIES)
    assert_search_matches(store, queries, cosine=True)
    # Scores are cosines; the pooled vectors gather returns stay unnormalised.
    assert all(-1.0001 <= s <= 1.0001 for hits in store.search(queries, 20) for _, s in hits)
    norms = np.linalg.norm(store.gather([d for d, _ in DOCS]).pooled.numpy(), axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-2)
    # Scaling a query does not change cosine scores.
    np.testing.assert_allclose(
        [s for _, s in store.search(queries[:1] * 7.5, 5)[0]],
        [s for _, s in store.search(queries[:1], 5)[0]],
        rtol=1e-5,
    )
    # Reopened, and after add(): the new shard is normalised too.
    store.add(model, [("new", "fresh bread from the oven")], show_progress_bar=False)
    reopened = CandidateStore.open(tmp_path / "s", model=model)
    assert reopened.search_metric == "cosine"
    assert reopened.manifest["shards"][-1]["search_metric"] == "cosine"
    q = model.encode_queries_pooled(["fresh bread from the oven"])
    new_pooled = reopened.gather(["new"]).pooled.numpy()[0]
    expected = float(q[0] @ new_pooled / np.linalg.norm(q[0]) / np.linalg.norm(new_pooled))
    assert dict(reopened.search(q, 21)[0])["new"] == pytest.approx(expected, rel=1e-4)

    # The approximate index uses the same metric (one list, every vector scanned: exact).
    assert store.build_ann_index(nlist=1, nprobe=1).info["search_metric"] == "cosine"
    for exact, approx in zip(reopened.search(queries, 5), store.search(queries, 5, approximate=True)):
        assert [d for d, _ in approx] == [d for d, _ in exact]
        np.testing.assert_allclose([s for _, s in approx], [s for _, s in exact], rtol=1e-3)


def test_dense_searcher_on_cosine_store_ranks_like_the_model(tmp_path: Path, tiny_model_factory) -> None:
    from mixencoder.first_stage import DenseSearcher

    model = tiny_model_factory()
    store = CandidateStore.build(tmp_path / "s", model, DOCS, dtype="float32", show_progress_bar=False)
    hits = DenseSearcher(store, model).search(QUERIES[0], k=5)
    q = model.encode_queries_pooled(QUERIES[:1])[0]
    pooled = model.encode_candidates([t for _, t in DOCS]).pooled.numpy()
    cos = pooled @ q / np.linalg.norm(pooled, axis=1) / np.linalg.norm(q)
    assert [h.docid for h in hits] == [DOCS[i][0] for i in np.argsort(-cos)[:5]]
    np.testing.assert_allclose([h.score for h in hits], np.sort(cos)[::-1][:5], rtol=1e-4)


def test_explicit_ip_store_keeps_inner_product(tmp_path: Path, tiny_model_factory) -> None:
    model = tiny_model_factory()
    store = CandidateStore.build(
        tmp_path / "s", model, DOCS, shard_size=7, search_metric="ip", show_progress_bar=False
    )
    assert store.search_metric == "ip" == store.manifest["search_metric"]
    queries = model.encode_queries_pooled(QUERIES)
    assert_search_matches(store, queries, cosine=False)
    store.build_ann_index(nlist=1, nprobe=1)
    assert_search_matches(store, queries, cosine=False, approximate=True)
    with pytest.raises(ValueError, match="search_metric must be one of"):
        CandidateStore.build(tmp_path / "bad", model, DOCS, search_metric="l2")


def test_manifest_without_metric_opens_as_ip(tmp_path: Path, tiny_model_factory) -> None:
    model = tiny_model_factory()
    path = tmp_path / "s"
    CandidateStore.build(path, model, DOCS, shard_size=7, search_metric="ip", show_progress_bar=False)
    # Make it look like a store written before search_metric existed (no manifest checksum).
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["search_metric"]
    for entry in manifest["shards"]:
        del entry["search_metric"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    for shard_json in path.glob("shard-*/shard.json"):
        entry = json.loads(shard_json.read_text())
        del entry["search_metric"]
        shard_json.write_text(json.dumps(entry))

    old = CandidateStore.open(path, model=model)
    assert old.search_metric == "ip"
    assert_search_matches(old, model.encode_queries_pooled(QUERIES), cosine=False)
    # add() to an old store keeps writing ip shards and records the metric from now on.
    old.add(model, [("new", "fresh bread")], show_progress_bar=False)
    assert old.search_metric == "ip" and old.manifest["shards"][-1]["search_metric"] == "ip"


def test_resume_with_a_different_metric_is_refused(tmp_path: Path, tiny_model_factory) -> None:
    model = tiny_model_factory()
    path = tmp_path / "s"
    kwargs = {"shard_size": 5, "batch_size": 2, "show_progress_bar": False}
    with pytest.raises(RuntimeError, match="simulated crash"):
        CandidateStore.build(path, model, crashing(DOCS, after=12), **kwargs)  # model: cosine
    with pytest.raises(ValueError, match=r"search_metric='cosine'.*search_metric='ip'"):
        CandidateStore.build(path, model, DOCS, mode="resume", search_metric="ip", **kwargs)
    # A build state without the key (older versions) defers to what the shards record.
    state = json.loads((path / "build.json").read_text())
    del state["search_metric"]
    (path / "build.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"search_metric='cosine'.*search_metric='ip'"):
        CandidateStore.build(path, model, DOCS, mode="resume", search_metric="ip", **kwargs)
    # Without a build state (crash before it was written), the shards themselves are checked.
    (path / "build.json").unlink()
    with pytest.raises(ValueError, match=r"search_metric='cosine'.*search_metric='ip'"):
        CandidateStore.build(path, model, DOCS, mode="resume", search_metric="ip", **kwargs)
    resumed = CandidateStore.build(path, model, DOCS, mode="resume", **kwargs)
    assert resumed.search_metric == "cosine"
    assert_search_matches(resumed, model.encode_queries_pooled(QUERIES), cosine=True)
    # A finished store: resume with another metric is refused as well.
    with pytest.raises(ValueError, match="search_metric"):
        CandidateStore.build(path, model, DOCS, mode="resume", search_metric="ip", **kwargs)
