"""TREC-style ad-hoc reranking (Vaswani by default): BM25, dual encoder, MixEncoder.

Usage (from the project root)::

    python eval/run_trec.py                                    # Vaswani, 5-fold CV, every default
    python eval/run_trec.py --depth 1000 --budget 20m          # deeper candidates, more training
    python eval/run_trec.py --model work/my-mixencoder         # evaluate a saved MixEncoder
    python eval/run_trec.py --limit-queries 6 --depth 20 --folds 2 --budget 3steps \\
        --out runs/vaswani-quick                               # a quick look

Data (``--data-dir``, default ``../shared/data/vaswani``): a corpus in any format
:func:`mixencoder.data.read_corpus` reads (TREC ``<DOC>`` SGML, JsonCollection, ``docid<TAB>text``;
``--corpus``, default ``doc-text.trec``), TREC topics (``--topics``, default
``query-text.trec``; ``--topic-field`` picks title/desc/narr) and TREC qrels (``--qrels``,
default ``qrels``).

First stage: BM25 over a Pyserini (Anserini/Lucene) index of the whole corpus, built with
:func:`mixencoder.first_stage.build_bm25_index` and cached under ``--cache``; Pyserini's default
parameters k1=0.9, b=0.4 (``--k1``/``--b``); the top ``--depth`` (default 100, so that the
default run fits 30 minutes on 2 CPU cores) documents of each query are the candidates.

Systems (``--systems``), CV, budget, caching and outputs are those of ``eval/run_msmarco.py``
(this script reuses its evaluation code): ``bm25``, ``dual-zeroshot``, ``mixencoder-zeroshot``
(equal to the dual by construction) and ``mixencoder`` (query-level ``--folds K`` CV, default
5 over Vaswani's 93 queries, or ``--model``). ``--train-dir`` is not supported here: there is
no standard training set for these collections; train elsewhere and pass ``--model``.

CV training pairs: every judged-relevant (grade >= 1) document of the training queries.
Vaswani's qrels list relevant documents only, so hard negatives (``--negatives``, default
``unjudged``) are the training queries' best-ranked BM25 candidates that are not judged
relevant ("judged" negatives do not exist there and fall back to ``both``).

Measures (binary qrels; ir-measures keys): ``nDCG@10``, ``RR@10``, ``AP`` (over the reranked
candidates, i.e. AP@depth: documents outside the candidates count as not retrieved) and
``R@<depth>`` (recall of the candidate set: the first stage's, the same for every reranker;
``R@100`` by default). Also ``ms_per_query`` (BM25: batch retrieval time per query; neural
systems: online reranking through the product's Reranker) and ``store_bytes``. The paired
per-query differences (with standard errors) of ``mixencoder`` against ``dual-zeroshot`` and
``bm25`` on nDCG@10 and AP are printed.

Lengths in the bundled MiniLM's tokens: Vaswani queries are 14 / 21 / 28 at the 50th / 90th /
99th percentile (none is cut at ``query_max_length`` 32), documents 45 / 89 / 147 (0.3% are cut
at ``candidate_max_length`` 180).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import setup_logging  # noqa: E402
from run_msmarco import IRTask, add_ir_args, bm25_first_stage, evaluate, select_queries, truncate_run  # noqa: E402

from mixencoder.data import read_corpus, read_qrels, read_topics  # noqa: E402

logger = logging.getLogger("eval.trec")


def _resolve(folder: Path, name: str, patterns: list[str], what: str) -> Path:
    """``folder / name`` if it exists, else the single file of ``folder`` matching ``patterns``."""
    path = Path(name)
    if path.is_absolute() or path.exists():
        return path
    if (folder / name).exists():
        return folder / name
    found = sorted({p for pat in patterns for p in folder.glob(pat) if p.is_file()})
    if len(found) != 1:
        raise SystemExit(
            f"{folder}: no {name}; {len(found)} candidate {what} files {[p.name for p in found]}; "
            f"pass --{what}"
        )
    return found[0]


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = common.parser(
        __doc__.split("\n\n")[0], data_dir="../shared/data/vaswani", out="runs/vaswani", budget="10m", folds=5,
        new_params_lr_scale=20.0,  # as eval/run_msmarco.py
    )
    add_ir_args(p, depth=100, negatives="unjudged", lr=2e-5, hard_negatives=1, est_step_seconds=2.0, min_grade=1)
    p.add_argument("--corpus", default="doc-text.trec", help="corpus file/folder in --data-dir")
    p.add_argument("--topics", default="query-text.trec", help="topics file in --data-dir")
    p.add_argument("--topic-field", default="title", choices=("title", "desc", "narr"))
    p.add_argument("--qrels", default="qrels", help="qrels file in --data-dir")
    p.epilog = __doc__.split("\n\n", 1)[1]
    args = p.parse_args(argv)
    setup_logging()
    if args.train_dir is not None:
        raise SystemExit("run_trec.py has no --train-dir path: train elsewhere and pass --model")
    start = time.perf_counter()

    data = args.data_dir
    corpus = _resolve(data, args.corpus, ["doc*", "*corpus*", "*collection*"], "corpus")
    topics_path = _resolve(data, args.topics, ["*quer*", "*topic*"], "topics")
    qrels_path = _resolve(data, args.qrels, ["qrels*", "*qrels*"], "qrels")
    queries = read_topics(topics_path, field=args.topic_field)
    qrels = read_qrels(qrels_path)
    judged = [q for q, docs in qrels.items() if docs and q in queries]
    wanted = judged[: args.limit_queries] if args.limit_queries else judged
    k1 = 0.9 if args.k1 is None else args.k1
    b = 0.4 if args.b is None else args.b
    run, ms = bm25_first_stage(
        corpus, {q: queries[q] for q in wanted}, args.depth, cache=args.cache, k1=k1, b=b, name=f"trec-{data.name}"
    )
    qids = select_queries(queries, qrels, run, args.limit_queries)
    run = truncate_run(run, qids, args.depth)
    texts = {doc.docid: doc.text for doc in read_corpus(corpus)}
    empty = sorted(d for hits in run.values() for d in hits if not texts.get(d, "").strip())
    if empty:
        raise SystemExit(f"{len(empty)} candidates have no text in {corpus}: {empty[:5]}")
    notes: dict[str, Any] = {
        "corpus": str(corpus),
        "documents": len(texts),
        "topics_file": str(topics_path),
        "qrels_file": str(qrels_path),
        "first_stage": f"Pyserini BM25 k1={k1} b={b}, top {args.depth}",
        "judged_relevant": sum(1 for q in qids for g in qrels[q].values() if g >= 1),
    }
    task = IRTask(
        name=f"trec-{data.name}",
        queries={q: queries[q] for q in qids},
        qrels={q: qrels[q] for q in qids},
        run=run,
        texts=texts,
        measures=["nDCG@10", "RR@10", "AP", f"R@{args.depth}"],
        min_grade=args.min_grade,
        notes=notes,
    )
    metrics = evaluate(args, task, first_stage_extra={"ms_per_query": ms}, comparisons_on=("nDCG@10", "AP"))
    print(f"total wall time {(time.perf_counter() - start) / 60:.1f} min")
    return metrics


if __name__ == "__main__":
    main()
