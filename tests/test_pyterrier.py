"""PyTerrier integration on a Vaswani slice with the real components: a Lucene index built by
Pyserini, a candidate store of the bundled MiniLM, PyTerrier's own Experiment and RankCutoff."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

pt = pytest.importorskip("pyterrier")

from mixencoder import CandidateStore, Reranker  # noqa: E402
from mixencoder.data import read_corpus, read_qrels, read_topics  # noqa: E402
from mixencoder.evaluation import evaluate, evaluate_per_query  # noqa: E402
from mixencoder.first_stage import BM25Searcher, bm25_run, build_bm25_index  # noqa: E402
from mixencoder.fusion import Fusion  # noqa: E402
from mixencoder.pyterrier import (  # noqa: E402
    BM25Retriever,
    MixEncoderReranker,
    MixEncoderRetriever,
    frame_to_per_query,
    frame_to_qrels,
    frame_to_run,
    frame_to_topics,
    per_query_to_frame,
    qrels_to_frame,
    run_to_frame,
    topics_to_frame,
)

N_DOCS = 300
N_QUERIES = 8
DEPTH = 30
MEASURES = ["nDCG@10", "RR@10"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vaswani(shared_data, tmp_path_factory, minilm):
    """Index and store over the first N_DOCS documents; N_QUERIES queries with a relevant
    document among them, so that every figure below can move."""
    root = tmp_path_factory.mktemp("vaswani-pt")
    data = shared_data / "vaswani"
    docs = list(itertools.islice(read_corpus(data / "doc-text.trec"), N_DOCS))
    ids = {d.docid for d in docs}
    qrels_all = read_qrels(data / "qrels")
    topics_all = read_topics(data / "query-text.trec")
    qids = [q for q in topics_all if ids & set(qrels_all.get(q, {}))][:N_QUERIES]
    index = build_bm25_index(docs, root / "index")
    store = CandidateStore.build(root / "store", minilm, docs, batch_size=64)
    return dict(
        docs={d.docid: d.text for d in docs},
        index=index,
        store=store,
        searcher=BM25Searcher(index),
        topics={q: topics_all[q] for q in qids},
        qrels={q: qrels_all[q] for q in qids},
    )


@pytest.fixture(scope="module")
def bm25(vaswani):
    return BM25Retriever(vaswani["searcher"], num_results=DEPTH)


@pytest.fixture(scope="module")
def mix(vaswani, minilm):
    return MixEncoderReranker(minilm, vaswani["store"])


def test_experiment_gives_our_own_evaluation_of_the_same_runs(vaswani, bm25, mix, minilm):
    topics, qrels = vaswani["topics"], vaswani["qrels"]
    table = pt.Experiment(
        [bm25, bm25 >> mix], topics_to_frame(topics), qrels_to_frame(qrels),
        [pt.measures.nDCG @ 10, pt.measures.RR @ 10], names=["bm25", "bm25 >> mix"], baseline=0,
    )
    first = bm25_run(vaswani["searcher"], topics, DEPTH)
    ours = {
        "bm25": evaluate(first, qrels, MEASURES),
        "bm25 >> mix": evaluate(Reranker(minilm, vaswani["store"]).rerank_run(first, topics), qrels, MEASURES),
    }
    assert ours["bm25"] != ours["bm25 >> mix"], "the reranker changed nothing: the test could not fail"
    for _, row in table.iterrows():
        for m in MEASURES:
            assert row[m] == pytest.approx(ours[row["name"]][m], abs=1e-9), (row["name"], m)
    assert "nDCG@10 +" in table.columns  # baseline=0 adds the comparison columns

    # Per query too, through the long-frame conversions.
    per_query = pt.Experiment(
        [bm25 >> mix], topics_to_frame(topics), qrels_to_frame(qrels), [pt.measures.nDCG @ 10],
        names=["mix"], perquery=True,
    )
    reranked = frame_to_run((bm25 >> mix).transform(topics_to_frame(topics)))
    expected = evaluate_per_query(reranked, qrels, ["nDCG@10"])
    got = frame_to_per_query(per_query, name="mix")
    assert got.keys() == expected.keys()
    assert got["nDCG@10"] == pytest.approx(expected["nDCG@10"], abs=1e-9)


def test_reranked_frame_equals_the_reranker_and_cuts_off(vaswani, bm25, mix, minilm):
    topics = topics_to_frame(vaswani["topics"])
    out = (bm25 >> mix).transform(topics)
    assert list(out.columns) == ["qid", "query", "docno", "score", "rank"]
    reranker = Reranker(minilm, vaswani["store"])
    for qid, group in out.groupby("qid", sort=False):
        hits = vaswani["searcher"].search(vaswani["topics"][qid], DEPTH)
        first = [h.docid for h in hits]
        # the frame carries BM25's score column, so the default fusion applies, as in rerank()
        expected = reranker.rerank(vaswani["topics"][qid], first, first_stage_scores={h.docid: h.score for h in hits})
        assert group["docno"].tolist() == [r.docid for r in expected]
        np.testing.assert_allclose(group["score"], [r.score for r in expected], rtol=0, atol=0)
        assert group["rank"].tolist() == list(range(len(group)))
    assert out["qid"].drop_duplicates().tolist() == list(vaswani["topics"])

    top = (bm25 >> mix % 10).transform(topics)
    assert top.groupby("qid").size().eq(10).all()
    head = out[out["rank"] < 10].reset_index(drop=True)
    pd.testing.assert_frame_equal(top.reset_index(drop=True)[head.columns], head)


def test_texts_from_the_frame_serve_candidates_the_store_lacks(vaswani, minilm):
    bm25_text = BM25Retriever(vaswani["searcher"], num_results=10, fetch_text=True)
    frame = bm25_text.transform(topics_to_frame(vaswani["topics"]).head(2))
    assert frame["text"].tolist() == [vaswani["docs"][d] for d in frame["docno"]]
    storeless = MixEncoderReranker(minilm).transform(frame)
    for qid, group in storeless.groupby("qid", sort=False):
        docids = frame.loc[frame["qid"] == qid, "docno"].tolist()
        scores = dict(zip(docids, frame.loc[frame["qid"] == qid, "score"]))
        expected = Reranker(minilm).rerank(vaswani["topics"][qid], docids, vaswani["docs"], first_stage_scores=scores)
        assert group["docno"].tolist() == [r.docid for r in expected]
        np.testing.assert_allclose(group["score"], [r.score for r in expected], atol=1e-5)
    with pytest.raises(KeyError, match=re.escape("candidate(s) are not in a store (none given) and have no text")):
        MixEncoderReranker(minilm).transform(frame.drop(columns=["text"]))


def test_fusion_with_the_first_stage_score_column(vaswani, bm25, minilm):
    fusion = Fusion("interpolate", alpha=0.3)
    fused = MixEncoderReranker(minilm, vaswani["store"], fusion=fusion)
    first = bm25.transform(topics_to_frame(vaswani["topics"]).head(3))
    out = fused.transform(first)
    reranker = Reranker(minilm, vaswani["store"], fusion=fusion)
    plain = MixEncoderReranker(minilm, vaswani["store"]).transform(first)
    assert not plain["docno"].equals(out["docno"]) or not np.allclose(plain["score"], out["score"])
    for qid, group in first.groupby("qid", sort=False):
        expected = reranker.rerank(
            vaswani["topics"][qid], group["docno"].tolist(), first_stage_scores=dict(zip(group["docno"], group["score"]))
        )
        got = out[out["qid"] == qid]
        assert got["docno"].tolist() == [r.docid for r in expected]
        np.testing.assert_allclose(got["score"], [r.score for r in expected], atol=0)
    with pytest.raises(ValueError, match=re.escape("but the input frame has no 'score' column")):
        fused.transform(first.drop(columns=["score", "rank"]))


def test_dense_retriever_over_the_store(vaswani, minilm, mix):
    dense = MixEncoderRetriever(minilm, vaswani["store"], num_results=20)
    topics = topics_to_frame(vaswani["topics"])
    out = dense.transform(topics)
    assert list(out.columns) == ["qid", "query", "docno", "score", "rank"]
    hits = vaswani["store"].search(minilm.encode_queries_pooled(list(vaswani["topics"].values())), 20)
    for (qid, group), expected in zip(out.groupby("qid", sort=False), hits):
        expected = sorted(expected, key=lambda h: (-h[1], h[0]))
        assert group["docno"].tolist() == [d for d, _ in expected]
        np.testing.assert_allclose(group["score"], [s for _, s in expected])
    both = (dense >> mix % 5).transform(topics)
    assert both.groupby("qid").size().eq(5).all()


def test_empty_frames_and_bad_frames(vaswani, bm25, mix, minilm):
    dense = MixEncoderRetriever(minilm, vaswani["store"], num_results=5)
    result_cols = ["qid", "query", "docno", "score", "rank"]
    assert list(mix.transform(pd.DataFrame(columns=result_cols)).columns) == result_cols
    assert list(mix.transform(pd.DataFrame(columns=["qid", "query", "docno"])).columns) == result_cols
    for first in (bm25, dense):
        empty = first.transform(pd.DataFrame(columns=["qid", "query"]))
        assert list(empty.columns) == result_cols and len(empty) == 0
    assert pt.inspect.transformer_outputs(bm25 >> mix, ["qid", "query"]) == result_cols
    assert [sorted(c) for c in pt.inspect.transformer_inputs(mix)] == [["docno", "qid", "query"]]

    with pytest.raises(pt.validate.InputValidationError, match="query"):
        mix.transform(pd.DataFrame({"qid": ["1"], "docno": ["1"]}))
    with pytest.raises(ValueError, match=re.escape("qid '1' has an empty query ' '")):
        mix.transform(pd.DataFrame({"qid": ["1"], "query": [" "], "docno": ["1"]}))
    with pytest.raises(ValueError, match=re.escape("1 duplicate docids among the candidates: ['2']")):
        mix.transform(pd.DataFrame({"qid": ["1"] * 3, "query": ["radio"] * 3, "docno": ["2", "3", "2"]}))
    with pytest.raises(ValueError, match=re.escape("1 qids appear more than once in the query frame: ['1']")):
        bm25.transform(pd.DataFrame({"qid": ["1", "1"], "query": ["radio", "waves"]}))
    with pytest.raises(ValueError, match=re.escape("num_results must be a positive int, got 0")):
        MixEncoderRetriever(minilm, vaswani["store"], num_results=0)


def test_run_topics_qrels_and_per_query_frames_round_trip():
    run = {"q2": {"d1": 1.5, "d3": 2.0, "d2": 2.0}, "q1": {"d9": -1.0}}
    frame = run_to_frame(run, topics={"q1": "one", "q2": "two"})
    assert frame.to_dict("list") == {
        "qid": ["q2", "q2", "q2", "q1"], "query": ["two", "two", "two", "one"],
        "docno": ["d2", "d3", "d1", "d9"], "score": [2.0, 2.0, 1.5, -1.0], "rank": [0, 1, 2, 0],
    }
    assert frame_to_run(frame) == run
    assert frame_to_run(frame.rename(columns={"qid": "query_id", "docno": "doc_id"})) == run
    topics = {"1": "radio waves", "2": "dielectric"}
    assert frame_to_topics(topics_to_frame(topics)) == topics
    qrels = {"1": {"a": 1, "b": 0}, "2": {"c": 2}}
    assert frame_to_qrels(qrels_to_frame(qrels)) == qrels
    per_query = {"nDCG@10": {"1": 0.5, "2": 1.0}, "RR@10": {"1": 1.0, "2": 0.25}}
    long = per_query_to_frame(per_query, name="sys")
    assert list(long.columns) == ["name", "qid", "measure", "value"]
    assert frame_to_per_query(long) == per_query

    with pytest.raises(ValueError, match=re.escape("query 'q1' lists docno 'd9' twice")):
        frame_to_run(pd.concat([frame, frame.tail(1)]))
    with pytest.raises(KeyError, match=re.escape("missing ['score']")):
        frame_to_run(frame.drop(columns=["score"]))
    with pytest.raises(KeyError, match=re.escape("1 run queries have no topic text: ['q2']")):
        run_to_frame(run, topics={"q1": "one"})
    with pytest.raises(ValueError, match=re.escape("the frame holds the systems ['a', 'b']; pass name=")):
        frame_to_per_query(pd.concat([per_query_to_frame(per_query, "a"), per_query_to_frame(per_query, "b")]))


def test_importing_mixencoder_needs_none_of_the_optional_extras():
    code = (
        "import sys, mixencoder, mixencoder.models, mixencoder.rerank, mixencoder.cli, mixencoder.pyterrier.frames\n"
        "bad = sorted(m for m in ('pyterrier', 'fastapi', 'uvicorn', 'rerankers') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
