"""Builds a BM25 (Lucene) index with Pyserini and optionally writes a BM25 run.

Examples::

    python pipelines/build_index.py --corpus ../shared/data/vaswani/doc-text.trec \\
        --index indexes/vaswani
    python pipelines/build_index.py --corpus ../shared/data/vaswani/doc-text.trec \\
        --index indexes/vaswani --overwrite \\
        --topics ../shared/data/vaswani/query-text.trec --run runs/vaswani.bm25.trec --k 1000

The corpus may be a Pyserini JsonCollection (file or directory), an MS MARCO ``collection.tsv``
or TREC ``<DOC>`` files. With ``--topics``/``--run`` the index is searched with BM25 and the run
written in TREC format (or MS MARCO format with ``--run-format msmarco``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

try:
    import mixencoder  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin"))

from mixencoder.data import read_topics, write_run
from mixencoder.first_stage import BM25Searcher, bm25_run, build_bm25_index

logger = logging.getLogger("build_index")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="corpus file or directory")
    parser.add_argument("--index", required=True, help="output index directory")
    parser.add_argument("--threads", type=int, default=2, help="indexing/search threads")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing index")
    parser.add_argument("--no-raw", action="store_true",
                        help="do not store raw documents (doc texts then unavailable)")
    parser.add_argument("--topics", help="topics to search (queries TSV or TREC topics)")
    parser.add_argument("--run", help="output run file (requires --topics)")
    parser.add_argument("--run-format", choices=("trec", "msmarco"), default="trec")
    parser.add_argument("--k", type=int, default=1000, help="hits per query")
    parser.add_argument("--k1", type=float, default=0.9, help="BM25 k1")
    parser.add_argument("--b", type=float, default=0.4, help="BM25 b")
    parser.add_argument("--tag", default="bm25", help="run tag (TREC format)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if bool(args.topics) != bool(args.run):
        parser.error("--topics and --run go together")
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs the pipeline; returns the process exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    index = build_bm25_index(args.corpus, args.index, threads=args.threads,
                             store_raw=not args.no_raw, overwrite=args.overwrite)
    logger.info("Index ready at %s (%.1fs)", index, time.perf_counter() - start)
    if args.topics:
        topics = read_topics(args.topics)
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
