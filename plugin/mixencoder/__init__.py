"""mixencoder: MixEncoder reranking for Pyserini pipelines.

Public API (see README): MixEncoder, CandidateStore, Reranker, RerankingSearcher.
"""

from __future__ import annotations

from .models import CandidateReps, MixEncoder, MixEncoderConfig, Scorer

__all__ = ["CandidateReps", "MixEncoder", "MixEncoderConfig", "Scorer"]
__version__ = "0.1.0"
