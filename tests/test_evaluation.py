"""ir-measures wrapper and paired differences; the dual baseline's scores."""

from __future__ import annotations

import math

import pytest
import torch

from mixencoder import DualEncoder
from mixencoder.evaluation import evaluate, evaluate_per_query, paired_difference

QRELS = {"q1": {"a": 2, "b": 0}, "q2": {"c": 1}, "q3": {"d": 3}}


def test_evaluate_counts_queries_missing_from_the_run_as_zero():
    run = {"q1": {"a": 2.0, "b": 1.0}, "q2": {"x": 1.0, "c": 0.5}}  # q3 absent
    values = evaluate(run, QRELS, ["RR", "R(rel=2)@1", "nDCG@10"])
    assert set(values) == {"RR", "R(rel=2)@1", "nDCG@10"}
    assert values["RR"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    # rel=2 makes q2's grade-1 passage non-relevant; q2 then has no relevant doc
    per_query = evaluate_per_query(run, QRELS, ["R(rel=2)@1"])["R(rel=2)@1"]
    assert per_query["q1"] == 1.0 and per_query["q3"] == 0.0


def test_paired_difference_mean_and_standard_error():
    mean, se, n = paired_difference({"a": 1.0, "b": 0.5, "c": 0.0}, {"a": 0.5, "b": 0.5, "c": 0.5})
    assert n == 3 and mean == pytest.approx(0.0)
    assert se == pytest.approx(math.sqrt(0.25 / 3))
    with pytest.raises(ValueError, match="no common queries"):
        paired_difference({"a": 1.0}, {"b": 1.0})


def test_dual_encoder_equals_untrained_mixencoder(tiny_model_factory):
    model = tiny_model_factory()
    dual = DualEncoder(model)
    docs = ["a lobster roll", "rain in the city", "bread"]
    dual_scores = dual.score(dual.encode_query("lobster"), dual.encode_candidates(docs))
    torch.testing.assert_close(dual_scores, torch.tensor(model.score_texts("lobster", docs)), rtol=1e-5, atol=1e-5)
