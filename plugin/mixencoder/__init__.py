"""mixencoder: MixEncoder reranking for Pyserini pipelines.

Public API: :class:`MixEncoder` (the model), :class:`CandidateStore` (precomputed candidate
reps on disk), :class:`Reranker` (the stage) and :class:`RerankingSearcher` (the drop-in for a
Pyserini searcher). Pyserini and Java are only touched when a first-stage class is used.
"""

from __future__ import annotations

from .models import CandidateReps, MixEncoder, MixEncoderConfig, Scorer
from .rerank import RankedDoc, Reranker
from .search import RerankedHit, RerankingSearcher

__all__ = [
    "CandidateReps",
    "CandidateStore",
    "MixEncoder",
    "MixEncoderConfig",
    "RankedDoc",
    "RerankedHit",
    "Reranker",
    "RerankingSearcher",
    "Scorer",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # The store imports FAISS; load it on first use so `import mixencoder` stays light.
    if name == "CandidateStore":
        from .store import CandidateStore

        return CandidateStore
    raise AttributeError(f"module 'mixencoder' has no attribute {name!r}")
