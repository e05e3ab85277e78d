"""candidate_layout="precomputed": the first interaction layer's candidate-only terms stored
offline give the plain layout's scores, and the fingerprint keeps the two layouts' stores apart."""

from __future__ import annotations

import pytest
import torch

from mixencoder import CandidateStore
from test_model import CONFIGS, DOCS, QUERIES, perturb, reference_score


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: str(c) or "default")
def test_precomputed_scores_equal_the_equations(tiny_model_factory, config):
    plain = perturb(tiny_model_factory(**config))
    pre = plain.with_inference_options(candidate_layout="precomputed")
    reps = pre.encode_candidates(DOCS, batch_size=3)
    k = plain.config.k
    assert reps.vectors.shape == (len(DOCS), 4 * k + 1, plain.hidden_size)
    assert bool((reps.lengths == 4 * k + 1).all())
    # The first k rows are E0 exactly as the plain layout stores it.
    torch.testing.assert_close(reps.vectors[:, :k], plain.encode_candidates(DOCS).vectors)
    for query in QUERIES:
        expected = torch.tensor([reference_score(plain, query, d) for d in DOCS])
        torch.testing.assert_close(pre.score(pre.encode_query(query), reps), expected, rtol=1e-4, atol=1e-4)


def test_fingerprint_records_the_layout_and_the_default_is_unchanged(tiny_model_factory):
    plain = tiny_model_factory()
    pre = plain.with_inference_options(candidate_layout="precomputed")
    assert "candidate_layout" not in plain.candidate_fingerprint()  # old stores keep serving
    assert pre.candidate_fingerprint()["candidate_layout"] == "precomputed"
    assert pre.candidate_fingerprint()["sha256"] != plain.candidate_fingerprint()["sha256"]
    # The precomputed rows come from the first interaction layer: its weights are in the digest.
    moved = pre.with_inference_options()
    with torch.no_grad():
        moved.interaction[0].key.weight.add_(0.01)
    assert moved.candidate_fingerprint() != pre.candidate_fingerprint()


def test_a_store_of_one_layout_refuses_a_model_of_the_other(tiny_model_factory, tmp_path):
    plain = perturb(tiny_model_factory())
    pre = plain.with_inference_options(candidate_layout="precomputed")
    docs = [(f"d{i}", t) for i, t in enumerate(DOCS)]
    plain_store = CandidateStore.build(tmp_path / "plain", plain, docs)
    pre_store = CandidateStore.build(tmp_path / "pre", pre, docs)
    with pytest.raises(ValueError, match="candidate_layout"):
        CandidateStore.open(tmp_path / "plain", model=pre)
    with pytest.raises(ValueError, match="candidate_layout"):
        CandidateStore.open(tmp_path / "pre", model=plain)
    # Reps of the other layout are refused by score() too, not misread.
    with pytest.raises(ValueError, match="rows per candidate"):
        plain.score(plain.encode_query(QUERIES[0]), pre_store.gather(["d0", "d1"]))
    # Through the float16 store both layouts give the same scores to float16 precision.
    ids = [d for d, _ in docs]
    for query in QUERIES:
        a = plain.score(plain.encode_query(query), plain_store.gather(ids))
        b = pre.score(pre.encode_query(query), pre_store.gather(ids))
        torch.testing.assert_close(b, a, rtol=0, atol=2e-2)
    assert pre_store.bytes_per_candidate(include_search_index=False) > plain_store.bytes_per_candidate(include_search_index=False)


def test_precompute_converts_embedding_reps_without_the_backbone(tiny_model_factory):
    plain = perturb(tiny_model_factory(k=2, interaction_layers=[2, 3]))
    pre = plain.with_inference_options(candidate_layout="precomputed")
    converted = pre.precompute(plain.encode_candidates(DOCS))
    encoded = pre.encode_candidates(DOCS)
    torch.testing.assert_close(converted.vectors, encoded.vectors, rtol=1e-5, atol=1e-5)
    assert torch.equal(converted.lengths, encoded.lengths)
    with pytest.raises(ValueError, match="candidate_layout"):
        plain.precompute(plain.encode_candidates(DOCS))
    with pytest.raises(ValueError, match="embedding-layout"):
        pre.precompute(encoded)
