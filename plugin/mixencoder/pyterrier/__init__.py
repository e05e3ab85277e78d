"""PyTerrier integration (``pip install 'mixencoder[pyterrier]'``): the reranker, a dense
retriever over a candidate store and our BM25 as PyTerrier transformers, and conversions between
this package's runs / topics / qrels / per-query metrics and PyTerrier's DataFrames.

Example (Vaswani; no Terrier and no Java beyond the Pyserini set-up the package already has):

    >>> import pyterrier as pt
    >>> from mixencoder.pyterrier import BM25Retriever, MixEncoderReranker
    >>> bm25 = BM25Retriever("work/vaswani/index", num_results=100)
    >>> mix = MixEncoderReranker(model, store)
    >>> pt.Experiment([bm25, bm25 >> mix % 10], topics, qrels, [pt.measures.nDCG @ 10])

The frame conversions (:mod:`mixencoder.pyterrier.frames`) need only pandas; the transformers
(:mod:`mixencoder.pyterrier.stages`) import PyTerrier on first use of one of their names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BM25Retriever": "mixencoder.pyterrier.stages",
    "MixEncoderReranker": "mixencoder.pyterrier.stages",
    "MixEncoderRetriever": "mixencoder.pyterrier.stages",
    "frame_to_per_query": "mixencoder.pyterrier.frames",
    "frame_to_qrels": "mixencoder.pyterrier.frames",
    "frame_to_run": "mixencoder.pyterrier.frames",
    "frame_to_topics": "mixencoder.pyterrier.frames",
    "per_query_to_frame": "mixencoder.pyterrier.frames",
    "qrels_to_frame": "mixencoder.pyterrier.frames",
    "run_to_frame": "mixencoder.pyterrier.frames",
    "topics_to_frame": "mixencoder.pyterrier.frames",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .frames import (
        frame_to_per_query,
        frame_to_qrels,
        frame_to_run,
        frame_to_topics,
        per_query_to_frame,
        qrels_to_frame,
        run_to_frame,
        topics_to_frame,
    )
    from .stages import BM25Retriever, MixEncoderReranker, MixEncoderRetriever


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mixencoder.pyterrier' has no attribute {name!r}")
