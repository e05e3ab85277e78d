"""mixencoder: MixEncoder reranking for Pyserini pipelines.

Public API: :class:`MixEncoder` (the model), :class:`CandidateStore` (precomputed candidate
reps on disk), :class:`Reranker` (the stage) and :class:`RerankingSearcher` (the drop-in for a
Pyserini searcher). Names load on first use, so ``import mixencoder.data`` pulls in neither
torch nor FAISS, and Pyserini/Java are only touched by :mod:`mixencoder.first_stage`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "CandidateReps": "mixencoder.models",
    "MixEncoder": "mixencoder.models",
    "MixEncoderConfig": "mixencoder.models",
    "Scorer": "mixencoder.models",
    "RankingModel": "mixencoder.models",
    "load_model": "mixencoder.models",
    "CandidateStore": "mixencoder.store",
    "DualEncoder": "mixencoder.models",
    "RankedDoc": "mixencoder.rerank",
    "Reranker": "mixencoder.rerank",
    "RerankedHit": "mixencoder.search",
    "RerankingSearcher": "mixencoder.search",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .models import CandidateReps, DualEncoder, MixEncoder, MixEncoderConfig, RankingModel, Scorer, load_model
    from .rerank import RankedDoc, Reranker
    from .search import RerankedHit, RerankingSearcher
    from .store import CandidateStore


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mixencoder' has no attribute {name!r}")
