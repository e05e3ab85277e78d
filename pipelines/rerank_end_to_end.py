"""The whole product on real data, end to end, with measured figures.

    python pipelines/rerank_end_to_end.py [--work work/e2e] [--model DIR] [--depth 1000]

1. Vaswani (a complete collection): a Pyserini BM25 index, a candidate store built with the
   model (build throughput and bytes per candidate reported), every query reranked through
   ``RerankingSearcher`` and, from the same index's BM25 run, through ``mixencoder rerank``; the
   two runs must be identical. Per-query reranking time for ``--depth`` candidates is measured.
   Both fuse the model's scores with BM25's by the package default
   (:data:`mixencoder.fusion.DEFAULT_FUSION`, interpolation with alpha 0.2).
2. MS MARCO DL20: its given BM25 top-100 run (made over the full collection) reranked by
   ``mixencoder rerank`` from a store of its passages.
Both are evaluated with ir-measures against BM25. Index and stores are reused when present.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from typing import Any

from mixencoder import CandidateStore, Reranker, RerankingSearcher
from mixencoder.cli import load_model_flag
from mixencoder.cli import main as mixencoder_command
from mixencoder.data import read_corpus, read_qrels, read_run, read_topics, write_run
from mixencoder.evaluation import evaluate
from mixencoder.first_stage import BM25Searcher, bm25_run, build_bm25_index

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
logger = logging.getLogger("end_to_end")


def open_or_build_store(path: Path, model: Any, corpus: Path) -> tuple[CandidateStore, dict]:
    if (path / "manifest.json").is_file():
        store = CandidateStore.open(path, model=model)
        return store, {"docs_per_s": store.manifest.get("build_docs_per_s"), "reused": True}
    mode = "resume" if path.exists() else "create"
    store = CandidateStore.build(path, model, read_corpus(corpus), batch_size=64, mode=mode, show_progress_bar=True)
    return store, dict(store.last_build_stats)


def vaswani(work: Path, model: Any, model_arg: str | None, depth: int) -> dict:
    data = DATA / "vaswani"
    index = work / "vaswani" / "index"
    if not index.is_dir():
        build_bm25_index(data / "doc-text.trec", index)
    store, build = open_or_build_store(work / "vaswani" / "store", model, data / "doc-text.trec")
    topics = read_topics(data / "query-text.trec")
    qrels = read_qrels(data / "qrels")
    searcher = BM25Searcher(index)

    # (a) the drop-in searcher, timed per query (first stage and reranking apart)
    reranker = Reranker(model, store)
    stage = RerankingSearcher(searcher, reranker, depth=depth)
    first_ms, rerank_ms, run = [], [], {}
    for qid, query in topics.items():
        t0 = time.perf_counter()
        hits = searcher.search(query, k=depth)
        t1 = time.perf_counter()
        # fused with the BM25 scores, as the searcher and the CLI do by default (DEFAULT_FUSION)
        ranked = reranker.rerank(query, [h.docid for h in hits], first_stage_scores={h.docid: h.score for h in hits})
        t2 = time.perf_counter()
        first_ms.append(1000 * (t1 - t0))
        rerank_ms.append(1000 * (t2 - t1))
        run[qid] = {r.docid: r.score for r in ranked}
    # the searcher's own batch interface must give the same ranking
    batch = stage.batch_search(list(topics.values()), list(topics), k=depth, threads=2)
    searcher_run = {q: {h.docid: h.score for h in hs} for q, hs in batch.items()}
    assert searcher_run == run, "RerankingSearcher.batch_search disagrees with Reranker.rerank"
    write_run(searcher_run, work / "vaswani" / "searcher.trec", tag="mixencoder")

    # (b) the same index's BM25 run through `mixencoder rerank`
    bm25 = bm25_run(searcher, topics, depth)
    write_run(bm25, work / "vaswani" / "bm25.trec", tag="bm25")
    topics_tsv = work / "vaswani" / "topics.tsv"
    topics_tsv.write_text("".join(f"{q}\t{t}\n" for q, t in topics.items()))
    cli_args = ["rerank", "--run", str(work / "vaswani" / "bm25.trec"), "--topics", str(topics_tsv),
                "--store", str(store.path), "--output", str(work / "vaswani" / "cli.trec"), "--depth", str(depth)]
    if model_arg:
        cli_args += ["--model", model_arg]
    _run_command(cli_args)
    identical = (work / "vaswani" / "cli.trec").read_bytes() == (work / "vaswani" / "searcher.trec").read_bytes()

    full = [q for q in topics if len(bm25[q]) == depth]
    measures = ["nDCG@10", "RR", "AP@1000"]
    return {
        "store": {**build, "count": len(store), "bytes_per_candidate": store.bytes_per_candidate(),
                  "bytes_per_candidate_without_search_index": store.bytes_per_candidate(include_search_index=False)},
        "rerank_ms_per_query": {"candidates": depth, "queries_with_full_depth": len(full),
                                "median": statistics.median(rerank_ms[i] for i, q in enumerate(topics) if q in full),
                                "p90": sorted(rerank_ms)[int(0.9 * len(rerank_ms))],
                                "first_stage_median": statistics.median(first_ms)},
        "cli_run_identical_to_searcher_run": identical,
        "fusion": str(reranker.fusion_in_use),
        "bm25": evaluate(bm25, qrels, measures),
        "mixencoder": evaluate(run, qrels, measures),
    }


def dl20(work: Path, model: Any, model_arg: str | None) -> dict:
    data = DATA / "msmarco" / "dl20"
    store, build = open_or_build_store(work / "dl20" / "store", model, data / "collection.tsv")
    out = work / "dl20" / "mixencoder.trec"
    args = ["rerank", "--run", str(data / "bm25.top100.trec"), "--topics", str(data / "queries.tsv"),
            "--store", str(store.path), "--output", str(out)]
    if model_arg:
        args += ["--model", model_arg]
    t0 = time.perf_counter()
    _run_command(args)
    seconds = time.perf_counter() - t0
    qrels = read_qrels(data / "qrels.txt")
    measures = ["nDCG@10", "RR(rel=2)@10", "R(rel=2)@100"]
    run = read_run(data / "bm25.top100.trec")
    return {
        "store": {**build, "count": len(store), "bytes_per_candidate": store.bytes_per_candidate()},
        "cli_seconds_incl_model_load": round(seconds, 1),
        "bm25": evaluate(run, qrels, measures),
        "mixencoder": evaluate(read_run(out), qrels, measures),
    }


def _run_command(argv: list[str]) -> None:
    """Run ``mixencoder ARGV`` in this process; a failed command stops the job."""
    code = mixencoder_command(argv)
    if code != 0:
        raise SystemExit(f"mixencoder {argv[0]} exited {code}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("work/e2e"))
    p.add_argument("--model", default=None, help="saved model of any kind (default: an untrained MixEncoder on the bundled MiniLM)")
    p.add_argument("--depth", type=int, default=1000)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    model = load_model_flag(args.model)
    report = {"vaswani": vaswani(args.work, model, args.model, args.depth), "dl20": dl20(args.work, model, args.model)}
    print(json.dumps(report, indent=2))
    (args.work / "report.json").write_text(json.dumps(report, indent=2))
    if not report["vaswani"]["cli_run_identical_to_searcher_run"]:
        logger.error("the CLI run differs from the RerankingSearcher run")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
