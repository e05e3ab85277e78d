"""``mixencoder index``: a BM25 (Lucene) index built with Pyserini, and optionally a BM25 run.

    mixencoder index --corpus ../shared/data/vaswani/doc-text.trec --index indexes/vaswani
    mixencoder index --corpus ../shared/data/vaswani/doc-text.trec --index indexes/vaswani \\
        --overwrite --topics ../shared/data/vaswani/query-text.trec --run runs/vaswani.bm25.trec

The corpus may be a Pyserini JsonCollection (file or directory), an MS MARCO ``collection.tsv``
or TREC ``<DOC>`` files. With ``--topics``/``--run`` the index is searched with BM25 and the run
written in TREC format (or MS MARCO format with ``--run-format msmarco``).
"""

from __future__ import annotations

import argparse
import logging
import time

from mixencoder.cli import INPUT_ERRORS, report_input_error

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mixencoder index", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--corpus", required=True, help="corpus file or directory")
    p.add_argument("--index", required=True, help="output index directory")
    p.add_argument("--threads", type=int, default=2, help="indexing/search threads")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index")
    p.add_argument("--no-raw", action="store_true", help="do not store raw documents (doc texts then unavailable)")
    p.add_argument("--topics", help="topics to search (queries TSV or TREC topics)")
    p.add_argument("--run", help="output run file (requires --topics)")
    p.add_argument("--run-format", choices=("trec", "msmarco"), default="trec")
    p.add_argument("--k", type=int, default=1000, help="hits per query")
    p.add_argument("--k1", type=float, default=0.9, help="BM25 k1")
    p.add_argument("--b", type=float, default=0.4, help="BM25 b")
    p.add_argument("--tag", default="bm25", help="run tag (TREC format)")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``mixencoder index ARGS``; returns the exit code (2 for a corpus or topics it cannot read)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.topics) != bool(args.run):
        parser.error("--topics and --run go together")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from mixencoder.data import read_topics, write_run
    from mixencoder.first_stage import BM25Searcher, bm25_run, build_bm25_index

    start = time.perf_counter()
    try:
        topics = read_topics(args.topics) if args.topics else None
        index = build_bm25_index(
            args.corpus, args.index, threads=args.threads, store_raw=not args.no_raw, overwrite=args.overwrite
        )
    except INPUT_ERRORS as e:
        return report_input_error("mixencoder index", e)
    logger.info("Index ready at %s (%.1fs)", index, time.perf_counter() - start)
    if topics is not None:
        searcher = BM25Searcher(index, k1=args.k1, b=args.b)
        try:
            run = bm25_run(searcher, topics, args.k, threads=args.threads)
        finally:
            searcher.close()
        write_run(run, args.run, fmt=args.run_format, tag=args.tag)
        logger.info("Wrote %s run for %d queries to %s", args.run_format, len(run), args.run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
