"""Training the query side on a frozen store: the store stays valid, only the query side moves."""

from __future__ import annotations

import pytest
import torch

from mixencoder import CandidateStore, Reranker
from mixencoder.models.registry import load_model
from mixencoder.training import MatchingExample, TrainingConfig
from mixencoder.training.frozen_store import train_on_store

DOCS = {
    "d1": "a lobster roll is a sandwich of lobster on bread",
    "d2": "rain falls on the city",
    "d3": "water is the city of bread and rain",
    "d4": "how to bake bread in the city",
    "d5": "lobster fishing in maine",
    "d6": "the weather today is rain",
}
EXAMPLES = [
    MatchingExample("lobster roll", "d1", ("d4",), query_id="q1"),
    MatchingExample("rain today", "d6", ("d3",), query_id="q2"),
    MatchingExample("bake bread", "d4", ("d1",), query_id="q3"),
    MatchingExample("maine lobster", "d5", ("d2",), query_id="q4"),
]


@pytest.fixture
def setup(tiny_model_factory, tmp_path):
    model = tiny_model_factory(candidate_max_length=64)
    store = CandidateStore.build(tmp_path / "store", model, DOCS.items(), show_progress_bar=False)
    return model, store


def _config(steps: int = 3) -> TrainingConfig:
    return TrainingConfig(batch_size=4, hard_negatives_per_query=1, max_steps=steps, learning_rate=1e-2, seed=0)


def test_separate_query_encoder_scores_the_same_and_keeps_the_fingerprint(setup, tmp_path):
    model, store = setup
    split = model.with_separate_query_encoder()
    assert split.config.separate_query_encoder and not model.config.separate_query_encoder
    assert split.candidate_fingerprint() == model.candidate_fingerprint()
    a = Reranker(model, store).rerank("lobster roll", list(DOCS))
    b = Reranker(split, store).rerank("lobster roll", list(DOCS))
    assert [r.docid for r in a] == [r.docid for r in b]
    assert [r.score for r in a] == pytest.approx([r.score for r in b], abs=1e-6)
    split.save_pretrained(tmp_path / "split")
    loaded = load_model(tmp_path / "split")
    assert loaded.config.separate_query_encoder and loaded.query_backbone is not None
    assert loaded.candidate_fingerprint() == model.candidate_fingerprint()


def test_training_on_a_store_moves_only_the_query_side(setup, tmp_path):
    model, store = setup
    trainee = model.with_separate_query_encoder()
    candidate_before = {k: v.clone() for k, v in trainee.backbone.state_dict().items()}
    query_before = {k: v.clone() for k, v in trainee.query_backbone.state_dict().items()}
    result = train_on_store(trainee, store, EXAMPLES, _config(), output_dir=tmp_path / "run", show_progress_bar=False)
    assert result.global_step == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    for k, v in trainee.backbone.state_dict().items():
        assert torch.equal(v, candidate_before[k]), f"candidate side changed: {k}"
    assert any(not torch.equal(v, query_before[k]) for k, v in trainee.query_backbone.state_dict().items())
    assert trainee.mix_query.weight.abs().sum() > 0  # the interaction trained too
    # the saved model still serves the store it was trained against, and scores differently
    final = load_model(result.final_dir)
    store.check_compatible(final)
    CandidateStore.open(store.path, model=final)
    before = dict(Reranker(model, store).rerank("lobster roll", list(DOCS)))
    after = dict(Reranker(final, store).rerank("lobster roll", list(DOCS)))
    assert before != pytest.approx(after)


def test_dual_query_side_only_keeps_the_interaction_off(setup, tmp_path):
    model, store = setup
    trainee = model.with_separate_query_encoder()
    train_on_store(trainee, store, EXAMPLES, _config(2), output_dir=tmp_path / "run", interaction=False,
                   show_progress_bar=False)
    assert trainee.mix_query.weight.abs().sum() == 0 and trainee.mix_candidate.weight.abs().sum() == 0
    assert all(p.requires_grad for p in trainee.parameters())  # flags restored after training


def test_fusion_aware_training_learns_a_first_stage_weight(setup, tmp_path):
    model, store = setup
    first = {"q1": {"d1": 9.0, "d4": 1.0}, "q2": {"d6": 5.0}, "q3": {"d4": 3.0, "d1": 2.0}, "q4": {"d5": 7.0, "d2": 1.0}}
    from mixencoder.training.frozen_store import StoreBackedTrainee

    trainee = StoreBackedTrainee(model.with_separate_query_encoder(), store, list(DOCS), first_stage=first,
                                 query_ids={e.query: e.query_id for e in EXAMPLES})
    tokens = trainee.tokenize_queries(["lobster roll", "rain today"])
    rows = trainee.tokenize_candidates(["d1", "d4", "d6"])
    matrix = trainee._first_stage_matrix(tokens["query_ids"], rows["rows"])
    assert matrix.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # min-max per query; absent -> 0
    result = train_on_store(model.with_separate_query_encoder(), store, EXAMPLES, _config(),
                            output_dir=tmp_path / "run", first_stage=first, show_progress_bar=False)
    assert result.global_step == 3
    # the first-stage term changes what the model learns (same seed, same data, same steps)
    plain = model.with_separate_query_encoder()
    train_on_store(plain, store, EXAMPLES, _config(), output_dir=tmp_path / "plain", show_progress_bar=False)
    fused = load_model(result.final_dir)
    assert not torch.equal(plain.query_backbone.embeddings.word_embeddings.weight,
                           fused.query_backbone.embeddings.word_embeddings.weight)
    with pytest.raises(ValueError, match="query_id"):
        train_on_store(model.with_separate_query_encoder(), store, [MatchingExample("x", "d1", ("d2",))], _config(),
                       output_dir=tmp_path / "bad", first_stage=first)


def test_bad_frozen_store_input(setup, tmp_path):
    model, store = setup
    with pytest.raises(ValueError, match="own query encoder"):
        train_on_store(model, store, EXAMPLES, _config(), output_dir=tmp_path / "a")
    with pytest.raises(KeyError, match="not in the store"):
        train_on_store(model.with_separate_query_encoder(), store, [*EXAMPLES, MatchingExample("q", "nope", ("d1",))],
                       _config(), output_dir=tmp_path / "b")
