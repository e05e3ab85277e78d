"""End-to-end retrieval over a whole collection: BM25, dense and hybrid first stages, each
reranked, in one table (Vaswani by default).

Usage (from the project root)::

    python eval/run_retrieval.py                                # Vaswani, every default
    python eval/run_retrieval.py --model work/my-mixencoder     # rerank with a trained model
    python eval/run_retrieval.py --limit-queries 10 --depth 100 --out runs/retrieval-quick

The collection is indexed twice, once per first stage: a Pyserini BM25 index (k1=0.9, b=0.4)
and a candidate store of the whole corpus built by the reranking model (its pooled vectors are
the dense index; FAISS, exact search, scored by the store's ``search_metric``). First stages,
each cut at ``--depth`` (default 1000) per query:

* ``bm25``: Pyserini BM25;
* ``dense``: :class:`mixencoder.first_stage.DenseSearcher` over the store;
* ``hybrid``: :class:`mixencoder.first_stage.HybridSearcher`, the two lists (``--depth`` each)
  min-max normalised and merged with the sparse side's weight ``--hybrid-alpha`` (default 0.5,
  fixed a priori, not tuned here), the top ``--depth`` kept.

Each first stage is then reranked by the model through the product's ``Reranker`` (row
``STAGE>>mixencoder``), and fused with the first stage's own score (row
``STAGE>>mixencoder+fusion``: interpolation, alpha cross-fitted over 5 query folds, so no
query informs its own weight). A fresh MixEncoder scores exactly like its backbone used as a
dual encoder, i.e. like the dense first stage, so ``dense>>mixencoder`` equals ``dense`` unless
``--model`` is a trained model.

Measures: ``R@DEPTH`` (recall of the candidate list: what reranking cannot exceed),
``nDCG@10``, ``AP``, ``RR@10``; ``ms_per_query`` of each first stage (batch search, 2 threads)
and of each reranking. Outputs as every eval script: ``OUT/metrics.json``,
``OUT/per_query.json``, ``OUT/notes.json`` (with paired differences) and ``OUT/runs/``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from mixencoder import MixEncoder, Reranker
from mixencoder.data import kfold_split, read_corpus, read_qrels, read_topics
from mixencoder.experiment import Results, fingerprint, store_cached
from mixencoder.first_stage import BM25Searcher, DenseSearcher, HybridSearcher, build_bm25_index

logger = logging.getLogger("eval.retrieval")
STAGES = ("bm25", "dense", "hybrid")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data/vaswani"))
    p.add_argument("--corpus", default="doc-text.trec")
    p.add_argument("--topics", default="query-text.trec")
    p.add_argument("--qrels", default="qrels")
    p.add_argument("--model", default=None, help="reranking model dir (default: a fresh MixEncoder on the bundled MiniLM)")
    p.add_argument("--depth", type=int, default=1000, help="candidates per query from each first stage")
    p.add_argument("--hybrid-alpha", type=float, default=0.5, help="the BM25 side's weight in the hybrid merge")
    p.add_argument("--limit-queries", type=int, default=None)
    p.add_argument("--seed", type=int, default=42, help="seed of the folds the fusion weight is fitted on")
    p.add_argument("--out", type=Path, default=Path("runs/retrieval-vaswani"))
    p.add_argument("--cache", type=Path, default=Path("work/cache"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    wall = time.perf_counter()
    corpus = args.data_dir / args.corpus
    docs = {d.docid: d.text for d in read_corpus(corpus)}
    queries = read_topics(args.data_dir / args.topics)
    qrels = read_qrels(args.data_dir / args.qrels)
    qids = [q for q, judged in qrels.items() if judged and q in queries][: args.limit_queries]
    queries = {q: queries[q] for q in qids}
    qrels = {q: qrels[q] for q in qids}

    stat = corpus.stat()
    index = args.cache / "indexes" / f"retrieval-{args.data_dir.name}-{fingerprint(str(corpus.resolve()), stat.st_size, stat.st_mtime_ns)}"
    if not index.is_dir():
        build_bm25_index(corpus, index, threads=2, overwrite=True)
    model = MixEncoder.from_pretrained(args.model)
    store = store_cached(model, docs, cache=args.cache, name=f"retrieval-{args.data_dir.name}")
    sparse = BM25Searcher(index)
    dense = DenseSearcher(store, model)
    searchers = {"bm25": sparse, "dense": dense, "hybrid": HybridSearcher(sparse, dense, alpha=args.hybrid_alpha)}

    results = Results(args.out, qrels, ["nDCG@10", "AP", "RR@10", f"R@{args.depth}"])
    results.notes.update(documents=len(docs), queries=len(qids), depth=args.depth, hybrid_alpha=args.hybrid_alpha,
                         model=args.model or "fresh MixEncoder (bundled all-MiniLM-L6-v2)",
                         store_search_metric=store.search_metric)
    folds = [t for _, t in kfold_split(qids, min(5, len(qids)), args.seed)]
    reranker = Reranker(model, store)
    comparisons = []
    for stage, searcher in searchers.items():
        start = time.perf_counter()
        hits = searcher.batch_search(list(queries.values()), list(queries), k=args.depth, threads=2)
        first = {q: {h.docid: float(h.score) for h in hits[q]} for q in queries}
        results.add(stage, first, ms_per_query=1000 * (time.perf_counter() - start) / len(queries))
        start = time.perf_counter()
        reranked = {q: {r.docid: r.score for r in reranker.rerank(queries[q], list(first[q]))} for q in queries}
        name = f"{stage}>>mixencoder"
        results.add(name, reranked, ms_per_query=1000 * (time.perf_counter() - start) / len(queries))
        # the reranker fused with this stage's own scores (fusion's cost: eval/bench_speed.py)
        fused, alphas = cross_fit_fusion(reranked, first, qrels, folds, measure="nDCG@10")
        results.add(f"{name}+fusion", fused)
        results.notes.setdefault("fusion_alpha_per_fold", {})[stage] = alphas
        comparisons += [(x, "bm25", m) for x in (stage, name, f"{name}+fusion") for m in ("nDCG@10", f"R@{args.depth}")]
    sparse.close()
    results.notes["wall_s"] = round(time.perf_counter() - wall, 1)
    results.write([c for c in comparisons if c[0] != c[1]])
    return results.metrics


if __name__ == "__main__":
    main()
