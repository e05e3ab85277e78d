"""Score fusion: each method against a hand-computed example, the fit-on-training-queries-only
rule, bad input, and the Reranker / RerankingSearcher / CLI paths that apply it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from mixencoder import Reranker, RerankingSearcher
from mixencoder.fusion import (
    Fusion,
    cross_fit_fusion,
    fit_fusion,
    interpolate,
    minmax_normalise,
    reciprocal_rank_fusion,
)
from mixencoder.rerank import fusion_from_args

NEURAL = {"a": 0.9, "b": 0.5, "c": 0.1}
BM25 = {"a": 2.0, "b": 12.0, "c": 7.0}


def test_minmax_by_hand():
    assert minmax_normalise(BM25) == {"a": 0.0, "b": 1.0, "c": 0.5}
    # all equal: no order to keep, every candidate 0 (a constant changes no ranking)
    assert minmax_normalise({"a": 3.0, "b": 3.0}) == {"a": 0.0, "b": 0.0}
    assert minmax_normalise({}) == {}


def test_interpolation_by_hand():
    # norm(neural) = a 1, b 0.5, c 0; norm(bm25) = a 0, b 1, c 0.5
    fused = interpolate(NEURAL, BM25, alpha=0.25)
    assert fused == pytest.approx({"a": 0.75, "b": 0.25 + 0.375, "c": 0.125})
    assert interpolate(NEURAL, BM25, 0.0) == pytest.approx(minmax_normalise(NEURAL))
    assert interpolate(NEURAL, BM25, 1.0) == pytest.approx(minmax_normalise(BM25))


def test_interpolation_candidate_missing_from_a_list_takes_its_minimum():
    # "d" came from a dense first stage only: no BM25 score, so it gets BM25's minimum (0)
    fused = interpolate({**NEURAL, "d": 0.5}, BM25, alpha=0.5)
    assert fused["d"] == pytest.approx(0.5 * 0.0 + 0.5 * 0.5)
    assert set(fused) == {"a", "b", "c", "d"}


def test_rrf_by_hand():
    # neural ranks a1 b2 c3; bm25 ranks b1 c2 a3
    fused = reciprocal_rank_fusion([NEURAL, BM25], rrf_k=60)
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 63)
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 62)
    # ties broken by docid, and a list lacking a candidate contributes nothing
    only = reciprocal_rank_fusion([{"x": 1.0, "y": 1.0}, {"y": 5.0}], rrf_k=0)
    assert only == pytest.approx({"x": 1 / 1, "y": 1 / 2 + 1 / 1})


def test_fusion_object_dispatches_and_names_itself():
    assert Fusion().fuse(NEURAL, None) == NEURAL
    assert Fusion("interpolate", alpha=0.25).fuse(NEURAL, BM25) == pytest.approx(interpolate(NEURAL, BM25, 0.25))
    assert Fusion("rrf", rrf_k=10).fuse(NEURAL, BM25) == pytest.approx(reciprocal_rank_fusion([NEURAL, BM25], 10))
    assert str(Fusion("interpolate", alpha=0.2)) == "interpolate(alpha=0.2)"
    assert Fusion.from_dict(Fusion("rrf", rrf_k=5).to_dict()) == Fusion("rrf", rrf_k=5)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.2"])
def test_alpha_outside_the_unit_interval_is_refused(bad):
    with pytest.raises(ValueError, match="alpha must be in"):
        Fusion("interpolate", alpha=bad)


def test_bad_fusion_input_is_named():
    with pytest.raises(ValueError, match="unknown fusion method 'mean'"):
        Fusion("mean")
    with pytest.raises(ValueError, match=r"first-stage score\(s\) are NaN or infinite, e.g. \['b'\]"):
        Fusion("interpolate", alpha=0.5).fuse(NEURAL, {**BM25, "b": math.inf})
    with pytest.raises(ValueError, match=r"reranker score\(s\) are NaN"):
        Fusion("rrf").fuse({"a": math.nan}, BM25)
    with pytest.raises(ValueError, match="needs the first stage's scores"):
        Fusion("rrf").fuse(NEURAL, None)
    assert Fusion("interpolate", alpha=0.3).fuse({}, {}) == {}


def _qrels_where_alpha_matters():
    """Two query groups: on 'train' queries BM25 is right (alpha 1 best), on 'eval' queries
    the neural score is right (alpha 0 best)."""
    neural, first, qrels = {}, {}, {}
    for i in range(4):
        q = f"train{i}"
        neural[q] = {"good": 0.0, "bad": 1.0}
        first[q] = {"good": 10.0, "bad": 0.0}
        qrels[q] = {"good": 1}
        q = f"eval{i}"
        neural[q] = {"good": 1.0, "bad": 0.0}
        first[q] = {"good": 0.0, "bad": 10.0}
        qrels[q] = {"good": 1}
    return neural, first, qrels


# No 0.5: at alpha 0.5 the two candidates tie, and ir-measures breaks ties its own way.
GRID = (0.0, 0.25, 0.75, 1.0)


def test_fit_reads_training_queries_only():
    neural, first, qrels = _qrels_where_alpha_matters()
    train = [q for q in neural if q.startswith("train")]
    fusion, curve = fit_fusion(neural, first, qrels, train, measure="RR", alphas=GRID)
    assert fusion.alpha > 0.5 and curve[1.0] == 1.0 and curve[0.0] == 0.5
    # changing everything about the evaluation queries leaves the fitted weight unchanged
    for q in [q for q in neural if q.startswith("eval")]:
        neural[q], first[q], qrels[q] = {"x": 0.0}, {"x": 1.0}, {"y": 1}
    assert fit_fusion(neural, first, qrels, train, measure="RR", alphas=GRID)[0] == fusion
    # and fitting on the evaluation queries instead gives the opposite weight
    neural2, first2, qrels2 = _qrels_where_alpha_matters()
    evalq = [q for q in neural2 if q.startswith("eval")]
    assert fit_fusion(neural2, first2, qrels2, evalq, measure="RR", alphas=GRID)[0].alpha < 0.5
    with pytest.raises(ValueError, match="no training query"):
        fit_fusion(neural, first, qrels, ["nope"])


def test_cross_fit_never_uses_a_folds_own_queries():
    neural, first, qrels = _qrels_where_alpha_matters()
    folds = [[q for q in neural if q.startswith("train")], [q for q in neural if q.startswith("eval")]]
    fused, alphas = cross_fit_fusion(neural, first, qrels, folds, measure="RR", alphas=GRID)
    # each fold gets the weight that is best on the *other* fold: wrong for itself here
    assert alphas[0] < 0.5 < alphas[1]
    assert max(fused["train0"], key=fused["train0"].get) == "bad"
    assert max(fused["eval0"], key=fused["eval0"].get) == "bad"
    with pytest.raises(ValueError, match="at least 2 folds"):
        cross_fit_fusion(neural, first, qrels, [list(neural)])


DOCS = {
    "d1": "a lobster roll is a sandwich of lobster on bread",
    "d2": "rain",
    "d3": "water is the city of bread and rain",
    "d4": "how to bake bread in the city",
}


def test_reranker_fuses_with_first_stage_scores(tiny_model_factory):
    model = tiny_model_factory()
    plain = Reranker(model, doc_source=DOCS)
    neural = {r.docid: r.score for r in plain.rerank("lobster roll", list(DOCS))}
    first = {"d1": 1.0, "d2": 4.0, "d3": 3.0, "d4": 2.0}
    fused = Reranker(model, doc_source=DOCS, fusion=Fusion("interpolate", alpha=0.3))
    got = fused.rerank("lobster roll", list(DOCS), first_stage_scores=first)
    want = interpolate(neural, first, 0.3)
    assert [r.docid for r in got] == sorted(want, key=lambda d: (-want[d], d))
    assert {r.docid: r.score for r in got} == pytest.approx(want)
    # aligned list of scores == mapping
    aligned = fused.rerank("lobster roll", list(DOCS), first_stage_scores=[first[d] for d in DOCS])
    assert aligned == got
    # alpha 1: the first stage's order exactly
    bm25_only = Reranker(model, doc_source=DOCS, fusion=Fusion("interpolate", alpha=1.0))
    assert [r.docid for r in bm25_only.rerank("lobster roll", list(DOCS), first_stage_scores=first)] == [
        "d2", "d3", "d4", "d1"
    ]
    with pytest.raises(ValueError, match="got no first_stage_scores"):
        fused.rerank("lobster roll", list(DOCS))
    with pytest.raises(ValueError, match="first_stage_scores has 2 entries"):
        fused.rerank("lobster roll", list(DOCS), first_stage_scores=[1.0, 2.0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        fused.rerank("lobster roll", list(DOCS), first_stage_scores={**first, "d2": math.nan})
    with pytest.raises(TypeError, match="fusion must be"):
        Reranker(model, fusion="rrf")
    assert fused.rerank("lobster roll", [], first_stage_scores={}) == []


def test_searcher_and_run_path_fuse_the_same(tiny_model_factory):
    model = tiny_model_factory()
    reranker = Reranker(model, doc_source=DOCS, fusion=Fusion("rrf", rrf_k=1))
    first = {"d1": 1.5, "d2": 4.25, "d3": 3.0, "d4": 2.0}
    hits = [SimpleNamespace(docid=d, score=s) for d, s in sorted(first.items(), key=lambda x: -x[1])]
    searcher = SimpleNamespace(search=lambda q, k=10: hits[:k])
    stage = RerankingSearcher(searcher, reranker, depth=4)
    from_searcher = {h.docid: h.score for h in stage.search("lobster roll", k=4)}
    from_run = reranker.rerank_run({"q": first}, {"q": "lobster roll"}, depth=4)["q"]
    assert from_searcher == from_run
    assert all(h.first_stage_score == first[h.docid] for h in stage.search("lobster roll", k=4))


def test_cli_fusion_flags():
    assert fusion_from_args("default", None, 60) is None
    assert fusion_from_args("interpolate", 0.2, 60) == Fusion("interpolate", alpha=0.2)
    assert fusion_from_args("rrf", None, 10) == Fusion("rrf", rrf_k=10)
    with pytest.raises(SystemExit, match="needs --alpha"):
        fusion_from_args("interpolate", None, 60)
    with pytest.raises(SystemExit, match="alpha must be in"):
        fusion_from_args("interpolate", 2.0, 60)
    with pytest.raises(SystemExit, match="--alpha needs --fusion interpolate"):
        fusion_from_args("default", 0.3, 60)


def test_a_run_whose_scores_are_all_equal_leaves_the_reranker_order(tiny_model_factory):
    model = tiny_model_factory()
    plain = Reranker(model, doc_source=DOCS).rerank("lobster roll", list(DOCS))
    fused = Reranker(model, doc_source=DOCS, fusion=Fusion("interpolate", alpha=0.9)).rerank(
        "lobster roll", list(DOCS), first_stage_scores={d: 3.0 for d in DOCS}
    )
    assert [r.docid for r in fused] == [r.docid for r in plain]
