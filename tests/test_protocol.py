"""The model protocol every kind shares (mixencoder.models.RankingModel): one loader for every
saved kind, declared capabilities, the in-batch training methods, and length-bucketed encoding
that changes the padding but not the reps."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from mixencoder.models import (
    MODEL_TYPES,
    DualEncoder,
    MixEncoder,
    RankingModel,
    load_model,
    padding_fraction,
)
from mixencoder.models.text import batch_order, token_lengths

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOCS = [
    "a lobster roll is a sandwich of lobster on bread",
    "rain",
    "water is the city of bread and rain and the roll of the lobster, 42 times over and over",
    "how to bake bread in the city",
    "bread",
    "the roll of the city is rain and water and lobster",
]
QUERY = "lobster bread"

# Per kind, config fields that fit the tiny BERT (128 positions; ColBERT's markers in its vocab).
KINDS = {
    "mixencoder": {"k": 2, "interaction_layers": [2, 3]},
    "dual": {},
    "cross": {"score_batch_size": 4},
    "poly": {"num_codes": 5},
    "colbert": {"dim": 8, "query_marker": "a", "document_marker": "b", "query_max_length": 12},
    "deformer": {"candidate_max_length": 64, "score_batch_size": 4},
    "virt": {},
}


def test_every_registered_kind_is_covered():
    assert set(KINDS) == set(MODEL_TYPES)


@pytest.fixture(scope="module")
def _models(tiny_backbone_dir):
    models = {}
    for kind, config in KINDS.items():
        model = load_model(tiny_backbone_dir, model_type=kind, **config)
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():  # every weight off its initialisation (zero maps, identity fuse)
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        models[kind] = model.eval()
    return models


@pytest.fixture
def make(_models):
    return lambda kind: copy.deepcopy(_models[kind])


@pytest.mark.parametrize("kind", list(KINDS))
def test_save_then_load_model_gives_the_same_model(make, kind, tmp_path, caplog):
    model = make(kind)
    model.save_pretrained(tmp_path / kind)
    with caplog.at_level(logging.WARNING):
        loaded = load_model(tmp_path / kind)
    assert "model of type" not in caplog.text  # transformers reading our config.json as its own
    assert type(loaded) is type(model) and loaded.MODEL_TYPE == kind
    assert loaded.candidate_fingerprint() == model.candidate_fingerprint()
    scores = model.score_texts(QUERY, DOCS)
    assert loaded.score_texts(QUERY, DOCS) == scores
    assert float(max(scores) - min(scores)) > 1e-4  # the scores read the text
    # The class's own loader refuses another kind's directory instead of building a backbone.
    other = next(cls for name, cls in MODEL_TYPES.items() if name != kind)
    with pytest.raises(ValueError, match="load it with mixencoder.models.load_model"):
        other.from_pretrained(tmp_path / kind)


def test_a_dual_view_is_not_saved_on_its_own(make, tmp_path):
    dual = DualEncoder(make("mixencoder"))
    with pytest.raises(NotImplementedError, match="save the MixEncoder"):
        dual.save_pretrained(tmp_path / "dual")


@pytest.mark.parametrize("kind", list(KINDS))
def test_capabilities_are_declared_with_their_types(make, kind):
    model = make(kind)
    assert isinstance(model, RankingModel)
    assert model.search_metric in ("ip", "cosine")
    flags = (
        model.needs_pooled, model.encodes_pooled, model.supports_dense_search,
        model.supports_in_batch_negatives, model.supports_distillation,
    )
    for flag in flags:
        assert isinstance(flag, bool)
    assert model.supports_distillation == (kind == "virt")
    assert model.supports_in_batch_negatives == (kind not in ("cross", "deformer"))
    assert isinstance(model.num_labels, int) and model.num_labels == 0
    assert isinstance(model.mixing_summary(), dict)
    names = dict(model.named_parameters())
    assert set(model.new_parameter_names()) <= set(names)
    assert model.max_positions == 128
    assert (model.query_max_length, model.candidate_max_length) == (
        model.config.query_max_length, model.config.candidate_max_length
    )


@pytest.mark.parametrize("kind", list(KINDS))
def test_declared_pooled_and_dense_search_match_what_the_model_does(make, kind):
    model = make(kind)
    for scorer in (model, model.ablated()) if model.ablated() is not None else (model,):
        reps = scorer.encode_candidates(DOCS[:2])
        assert scorer.encodes_pooled == (reps.pooled is not None)
        assert not scorer.needs_pooled or scorer.encodes_pooled
        if scorer.supports_dense_search:
            queries = scorer.encode_queries_pooled(["lobster", "rain"])
            assert queries.shape == (2, reps.pooled.shape[1])
        else:
            with pytest.raises(NotImplementedError, match="dense first-stage search"):
                scorer.encode_queries_pooled(["lobster"])


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ("cross", "deformer")])
def test_in_batch_methods_give_forward_and_its_groups(make, kind):
    model = make(kind)
    q = model.tokenize_queries(["lobster", "rain in the city"])
    c = model.tokenize_candidates(DOCS[:4])
    scores = model(q, c)
    assert scores.shape == (2, 4)
    direct = model.score_matrix(model.encode_query_batch(q), model.encode_candidate_batch(c))
    torch.testing.assert_close(direct, scores)
    # Query i's own group is candidates 2i, 2i + 1: the diagonal blocks of the full matrix.
    grouped = model.forward_grouped(q, c, 2)
    torch.testing.assert_close(grouped, torch.stack([scores[0, :2], scores[1, 2:]]))
    # The training path scores as the stored path does.
    stored = torch.stack([model.score(model.encode_query(t), model.encode_candidates(DOCS[:4])) for t in ("lobster", "rain in the city")])
    torch.testing.assert_close(scores.detach(), stored, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", list(KINDS))
def test_length_bucketing_keeps_the_reps_and_their_order(make, kind):
    model = make(kind)
    bucketed = model.encode_candidates(DOCS, batch_size=2)
    plain = model.encode_candidates(DOCS, batch_size=2, bucket_by_length=False)
    assert torch.equal(bucketed.lengths, plain.lengths)
    for a, b in zip(bucketed.unpad(), plain.unpad()):  # the real vectors (padding rows are junk)
        torch.testing.assert_close(torch.from_numpy(a), torch.from_numpy(b), rtol=1e-5, atol=1e-5)
    if plain.pooled is not None:
        torch.testing.assert_close(bucketed.pooled, plain.pooled, rtol=1e-5, atol=1e-5)
    # Row i is text i's, as if it had been encoded alone.
    alone = model.encode_candidates([DOCS[2]])
    torch.testing.assert_close(bucketed.vectors[2, : int(alone.lengths[0])], alone.vectors[0], rtol=1e-5, atol=1e-5)
    query = model.encode_query(QUERY)
    torch.testing.assert_close(model.score(query, bucketed), model.score(query, plain), rtol=1e-5, atol=1e-5)


def test_bucketing_batches_similar_lengths_together(tiny_backbone_dir):
    model = MixEncoder.from_pretrained(tiny_backbone_dir)
    lengths = token_lengths(model.tokenizer, DOCS, 180)
    assert lengths[1] < lengths[0] < lengths[2]  # "rain" is short, the water text the longest
    order = batch_order(lengths, bucketed=True)
    assert sorted(order.tolist()) == list(range(len(DOCS)))
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
    assert batch_order(lengths, bucketed=False).tolist() == list(range(len(DOCS)))
    assert padding_fraction(lengths, 2, bucketed=True) < padding_fraction(lengths, 2, bucketed=False)


def test_padding_fraction_counts_padded_positions():
    # Input order: batches [1, 9] and [1, 9] pad 8 + 8 of 36 positions; bucketed, none.
    assert padding_fraction([1, 9, 1, 9], 2, bucketed=False) == pytest.approx(16 / 36)
    assert padding_fraction([1, 9, 1, 9], 2, bucketed=True) == 0.0
    # One batch holding everything pads the same either way; a ragged tail batch is counted.
    assert padding_fraction([3, 1, 2], 3, bucketed=True) == padding_fraction([3, 1, 2], 3, bucketed=False) == pytest.approx(3 / 9)
    assert padding_fraction([4, 4, 2], 2, bucketed=False) == 0.0
    assert padding_fraction([], 8, bucketed=True) == 0.0
    with pytest.raises(ValueError, match="batch_size"):
        padding_fraction([1], 0, bucketed=True)
