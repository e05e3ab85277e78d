"""End to end on slices of the real data, with the real components: a Lucene index built by
Pyserini, a FAISS-side store on disk, the bundled all-MiniLM-L6-v2 weights, ir-measures."""

from __future__ import annotations

import itertools
import re

import pytest

from mixencoder import CandidateStore, MixEncoder, Reranker, RerankingSearcher
from mixencoder.data import read_corpus, read_qrels, read_run, read_topics, write_run
from mixencoder.evaluation import evaluate
from mixencoder.fusion import DEFAULT_FUSION
from mixencoder.first_stage import BM25Searcher, bm25_run, build_bm25_index
from mixencoder.cli import main as mixencoder_command

N_DOCS = 600
N_QUERIES = 8
DEPTH = 50


@pytest.fixture(scope="module")
def vaswani(shared_data, tmp_path_factory, minilm):
    """Index, store and topics over the first N_DOCS Vaswani documents."""
    root = tmp_path_factory.mktemp("vaswani")
    data = shared_data / "vaswani"
    docs = list(itertools.islice(read_corpus(data / "doc-text.trec"), N_DOCS))
    index = build_bm25_index(docs, root / "index")
    store = CandidateStore.build(root / "store", minilm, docs, batch_size=64)
    topics = dict(itertools.islice(read_topics(data / "query-text.trec").items(), N_QUERIES))
    topics_file = root / "topics.tsv"
    topics_file.write_text("".join(f"{q}\t{t}\n" for q, t in topics.items()))
    return dict(root=root, docs=dict(docs), index=index, store=store, topics=topics, topics_file=topics_file)


def test_searcher_and_run_file_cli_give_identical_runs(vaswani, minilm):
    searcher = BM25Searcher(vaswani["index"])
    reranking = RerankingSearcher(searcher, Reranker(minilm, vaswani["store"]), depth=DEPTH)
    qids, queries = list(vaswani["topics"]), list(vaswani["topics"].values())
    hits = reranking.batch_search(queries, qids, k=DEPTH, threads=2)
    searcher_run = {q: {h.docid: h.score for h in hs} for q, hs in hits.items()}
    write_run(searcher_run, vaswani["root"] / "searcher.trec", tag="mixencoder")

    # The same index's BM25 run, reranked by the CLI, must give the same file byte for byte.
    write_run(bm25_run(searcher, vaswani["topics"], DEPTH), vaswani["root"] / "bm25.trec", tag="bm25")
    assert mixencoder_command([
        "rerank",
        "--run", str(vaswani["root"] / "bm25.trec"),
        "--topics", str(vaswani["topics_file"]),
        "--store", str(vaswani["root"] / "store"),
        "--output", str(vaswani["root"] / "cli.trec"),
        "--depth", str(DEPTH),
    ]) == 0
    cli = (vaswani["root"] / "cli.trec").read_text()
    assert cli == (vaswani["root"] / "searcher.trec").read_text()
    assert len(cli.splitlines()) == sum(len(h) for h in hits.values()) > N_QUERIES * 10

    # The reranked run is a real ranking: it is direct scoring of the texts, fused with BM25's
    # scores by the default fusion.
    qid = qids[0]
    candidates = hits[qid]
    direct = minilm.score_texts(vaswani["topics"][qid], [vaswani["docs"][h.docid] for h in candidates])
    expected = DEFAULT_FUSION.fuse(
        {h.docid: s for h, s in zip(candidates, direct)}, {h.docid: h.first_stage_score for h in candidates}
    )
    assert DEFAULT_FUSION.uses_first_stage
    assert [round(h.score, 3) for h in candidates[:10]] == [round(expected[h.docid], 3) for h in candidates[:10]]


def test_missing_candidates_come_from_the_lucene_index(vaswani, minilm, tmp_path):
    # A store holding half the docs: the rest are encoded on the fly from the index's raw text.
    half = dict(itertools.islice(vaswani["docs"].items(), N_DOCS // 2))
    store = CandidateStore.build(tmp_path / "half", minilm, half.items(), batch_size=64)
    searcher = BM25Searcher(vaswani["index"])
    query = next(iter(vaswani["topics"].values()))
    docids = [h.docid for h in searcher.search(query, k=DEPTH)]
    assert any(d not in store for d in docids) and any(d in store for d in docids)
    mixed = Reranker(minilm, store, doc_source=searcher).rerank(query, docids)
    full = Reranker(minilm, vaswani["store"]).rerank(query, docids)
    assert [r.docid for r in mixed] == [r.docid for r in full]
    assert all(abs(a.score - b.score) < 0.05 for a, b in zip(mixed, full))  # fp16 store vs fp32
    with pytest.raises(KeyError, match=r"candidate\(s\) are not in the store and have no text"):
        Reranker(minilm, store).rerank(query, docids)


def test_store_built_by_another_model_is_refused(vaswani, tiny_model_factory):
    with pytest.raises(ValueError, match="different model"):
        Reranker(tiny_model_factory(), vaswani["store"])


def test_dl20_bm25_run_reranked_by_the_cli_beats_bm25(shared_data, minilm, tmp_path):
    # Five DL20 queries: their BM25 top-100 (made over the full collection) reranked from a store.
    dl20 = shared_data / "msmarco" / "dl20"
    run = read_run(dl20 / "bm25.top100.trec")
    qids = sorted(run)[:5]
    sub_run = {q: run[q] for q in qids}
    write_run(sub_run, tmp_path / "bm25.trec", tag="bm25")
    needed = {d for q in qids for d in sub_run[q]}
    passages = [doc for doc in read_corpus(dl20 / "collection.tsv") if doc.docid in needed]
    CandidateStore.build(tmp_path / "store", minilm, passages, batch_size=64)
    assert mixencoder_command([
        "rerank", "--run", str(tmp_path / "bm25.trec"), "--topics", str(dl20 / "queries.tsv"),
        "--store", str(tmp_path / "store"), "--output", str(tmp_path / "out.tsv"), "--format", "msmarco",
    ]) == 0
    lines = (tmp_path / "out.tsv").read_text().splitlines()
    assert len(lines) == sum(len(v) for v in sub_run.values())
    assert re.fullmatch(r"\d+\t\d+\t1", lines[0])
    reranked = read_run(tmp_path / "out.tsv")
    qrels = read_qrels(dl20 / "qrels.txt")
    before = evaluate(sub_run, {q: qrels[q] for q in qids}, ["nDCG@10"])["nDCG@10"]
    after = evaluate(reranked, {q: qrels[q] for q in qids}, ["nDCG@10"])["nDCG@10"]
    assert after > before, (before, after)
