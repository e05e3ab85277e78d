"""First stage: Java set-up for Pyserini and BM25 over a Lucene index.

Importing this package neither imports Pyserini nor starts the JVM; that happens on first use.
"""

from __future__ import annotations

from mixencoder.first_stage.bm25 import BM25Searcher, LuceneDocSource, bm25_run, build_bm25_index
from mixencoder.first_stage.dense import DenseHit, DenseSearcher
from mixencoder.first_stage.hybrid import HybridHit, HybridSearcher
from mixencoder.first_stage.java import configure_java, find_java_home

__all__ = [
    "BM25Searcher",
    "DenseHit",
    "DenseSearcher",
    "HybridHit",
    "HybridSearcher",
    "LuceneDocSource",
    "bm25_run",
    "build_bm25_index",
    "configure_java",
    "find_java_home",
]
