"""``model.rank`` / ``model.predict`` (sentence-transformers' CrossEncoder API) on every system of
the registry, on tiny random BERTs: the API must agree with the Scorer protocol it is built on."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from mixencoder.models import DualEncoder, MixEncoder
from mixencoder.models.registry import SYSTEMS, build_system

QUERY = "measurement of dielectric constant of liquids"
DOCS = [
    "the dielectric constant of water was measured",
    "a new amplifier circuit",
    "liquids at low temperature",
    "radio waves in the ionosphere",
    "constant current sources for measurement",
]

# What the tiny BERT needs (its vocabulary lacks ColBERT's [unused] markers; 128 positions).
TINY_OVERRIDES = {
    "colbert": {"query_marker": "a", "document_marker": "b"},
    "deformer": {"candidate_max_length": 64},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def systems(tiny_backbone_dir):
    """Every system of the registry, built on the tiny backbone and perturbed off its
    initialisation (zero-initialised heads would give constant scores)."""
    out = {}
    gen = torch.Generator().manual_seed(3)
    for name in SYSTEMS:
        model = build_system(name, tiny_backbone_dir, **TINY_OVERRIDES.get(name, {}))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        out[name] = model.eval()
    return out


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_rank_sorts_the_protocol_scores_best_first(systems, name):
    model = systems[name]
    expected = model.score_texts(QUERY, DOCS)
    assert max(expected) - min(expected) > 1e-5, "constant scores: the test could not fail"
    ranked = model.rank(QUERY, DOCS, batch_size=2)
    assert [r["corpus_id"] for r in ranked] == sorted(range(len(DOCS)), key=lambda i: -expected[i])
    np.testing.assert_allclose([r["score"] for r in ranked], sorted(expected, reverse=True), rtol=1e-5, atol=1e-5)
    assert all(set(r) == {"corpus_id", "score"} and isinstance(r["score"], float) for r in ranked)

    top = model.rank(QUERY, DOCS, top_k=2, return_documents=True)
    assert [r["corpus_id"] for r in top] == [r["corpus_id"] for r in ranked[:2]]
    assert [r["text"] for r in top] == [DOCS[r["corpus_id"]] for r in ranked[:2]]


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_predict_scores_pairs_of_several_queries_in_input_order(systems, name):
    model = systems[name]
    other = "radio propagation"
    pairs = [(QUERY, DOCS[0]), (other, DOCS[3]), (QUERY, DOCS[2]), (other, DOCS[1])]
    got = model.predict(pairs, batch_size=3)
    assert isinstance(got, np.ndarray) and got.shape == (4,) and got.dtype == np.float32
    a = model.score_texts(QUERY, [DOCS[0], DOCS[2]])
    b = model.score_texts(other, [DOCS[3], DOCS[1]])
    np.testing.assert_allclose(got, [a[0], b[0], a[1], b[1]], rtol=1e-5, atol=1e-5)
    single = model.predict((QUERY, DOCS[0]))
    assert np.ndim(single) == 0 and abs(float(single) - a[0]) < 1e-5


def test_ties_keep_the_input_order_and_empty_inputs_give_empty_outputs(systems):
    model = systems["mixencoder-a"]
    ranked = model.rank(QUERY, [DOCS[1], DOCS[0], DOCS[1]])
    ids = [r["corpus_id"] for r in ranked]
    assert ids.index(0) < ids.index(2)  # identical texts, identical scores: by index
    assert model.rank(QUERY, []) == []
    empty = model.predict([])
    assert empty.shape == (0,) and empty.dtype == np.float32


def test_the_dual_view_of_a_mixencoder_has_the_api_too(systems):
    dual = DualEncoder(systems["mixencoder-a"])
    ranked = dual.rank(QUERY, DOCS)
    expected = dual.score(dual.encode_query(QUERY), dual.encode_candidates(DOCS)).tolist()
    assert [r["corpus_id"] for r in ranked] == sorted(range(len(DOCS)), key=lambda i: -expected[i])
    np.testing.assert_allclose(dual.predict([(QUERY, d) for d in DOCS]), expected, rtol=1e-5, atol=1e-5)


def test_a_classifier_mixencoder_still_predicts_label_probabilities(tiny_backbone_dir):
    model = MixEncoder.from_pretrained(tiny_backbone_dir, num_labels=3)
    probs = model.predict([(QUERY, DOCS[0]), (QUERY, DOCS[1])])
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: m.rank("  ", DOCS), ValueError, "empty query: '  '; rank needs query text"),
        (lambda m: m.rank(3, DOCS), TypeError, "query must be a str, got int"),
        (lambda m: m.rank(QUERY, "one text"), TypeError, "documents must be a list of texts, got a single string"),
        (lambda m: m.rank(QUERY, DOCS, top_k=0), ValueError, "top_k must be a positive int or None, got 0"),
        (lambda m: m.rank(QUERY, [DOCS[0], ""]), ValueError, "candidate text 1 is empty"),
        (lambda m: m.predict([(QUERY, DOCS[0]), (QUERY,)]), ValueError, "pair 1 is ('measurement"),
        (lambda m: m.predict([(QUERY, 5)]), TypeError, "pair 0 holds ['str', 'int'], not two str"),
        (lambda m: m.predict([("", DOCS[0]), ("q", DOCS[1])]), ValueError, "pair 0 has an empty query"),
    ],
)
def test_bad_input_is_named(systems, call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call(systems["cross"])


def test_the_rerankers_adapter_is_built_by_the_rerankers_factory(systems, tiny_backbone_dir, tmp_path):
    pytest.importorskip("rerankers")
    import mixencoder.rerankers  # noqa: F401  (registers MixEncoderRanker)
    from rerankers import Reranker as RerankersFactory

    model = systems["cross"]
    model.save_pretrained(tmp_path / "cross")
    ranker = RerankersFactory(str(tmp_path / "cross"), model_type="MixEncoderRanker", verbose=0)
    results = ranker.rank(QUERY, DOCS, doc_ids=[f"d{i}" for i in range(len(DOCS))])
    expected = model.rank(QUERY, DOCS)
    assert [r.document.doc_id for r in results] == [f"d{h['corpus_id']}" for h in expected]
    assert [r.rank for r in results] == list(range(1, len(DOCS) + 1))
    np.testing.assert_allclose([r.score for r in results], [h["score"] for h in expected], atol=1e-5)
    assert results.top_k(1)[0].text == DOCS[expected[0]["corpus_id"]]
    assert ranker.score(QUERY, DOCS[0]) == pytest.approx(float(model.predict((QUERY, DOCS[0]))), abs=1e-5)
